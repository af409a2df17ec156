"""Export the shipped R and G checkpoints to the ONNX files shipped beside them.

    python scripts/export_shipped_onnx.py            # writes avatarsdk/data/weights/{regressor,generator_ws}.onnx

Prints each file's sha256 and size for :data:`avatarsdk.pretrained.REGISTRY`. The
graphs are opset 17 (:mod:`avatarsdk.nn.onnx`): ``regressor.onnx`` maps the
dlib embedding [B, 128] to W+ [B, L, w_dim]; ``generator_ws.onnx`` maps W+ to
the 6-channel UV maps (synthesis only, no truncation: R predicts W+ directly).
The registry pins the digests, so the ``.sha256`` sidecars the exporter writes
are removed here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from avatarsdk import pretrained
from avatarsdk.nn.checkpoint import load
from avatarsdk.nn.onnx import export_generator, export_regressor

OUT = Path(__file__).resolve().parents[1] / "avatarsdk" / "data" / "weights"


def main() -> int:
    G = load(pretrained.locate("generator"), kind="generator").model
    R = load(pretrained.locate("regressor"), kind="regressor").model
    paths = (export_regressor(R, OUT / "regressor.onnx"), export_generator(G, OUT / "generator_ws.onnx", input="ws"))
    for path in paths:
        Path(str(path) + pretrained.SIDECAR_SUFFIX).unlink(missing_ok=True)
        data = path.read_bytes()
        print(f"{path.name}: sha256={hashlib.sha256(data).hexdigest()} size={len(data)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

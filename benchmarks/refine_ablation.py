"""The four photo modes side by side on one photo: fit, infer, infer + refine, mean + refine (paper Fig. 11).

For each mode: wall time, per-stage timings, the identity similarity of the
avatar (cosine of the dlib embeddings of a frontal render of the avatar and of
the photo; :func:`avatarsdk.bench.fidelity.identity_similarity`), and a
frontal render. Writes ``ablation.png`` (photo, then the four renders) and
``ablation.json`` to the output folder.

    python benchmarks/refine_ablation.py examples/astronaut.png -o out/ablation
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def frontal_render(avatar, size: int = 384) -> np.ndarray:
    """[size, size, 3] uint8 frontal render of an avatar under the benchmark's soft light."""
    import torch

    from avatarsdk.scene import light_sh, portrait_camera, render_photo
    from avatarsdk.colour import linear_to_srgb

    cam = portrait_camera(size)
    lin, _ = render_photo(np.asarray(avatar.vertices), avatar.textures, cam, light_sh("soft", cam.rotation),
                          background=np.full((size, size, 3), 0.2, np.float32), supersample=2)
    return (linear_to_srgb(torch.from_numpy(lin)).numpy() * 255 + 0.5).astype(np.uint8)


def main(argv=None) -> int:
    from PIL import Image

    from avatarsdk.bench.fidelity import Reconstruction, identity_similarity, photo_embedding
    from avatarsdk.files import atomic_write_bytes, png_bytes
    from avatarsdk.photo import load_photo
    from avatarsdk.pipeline import create

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo")
    ap.add_argument("-o", "--output", default="out/ablation")
    ap.add_argument("--texture-size", type=int, default=1024)
    args = ap.parse_args(argv)
    photo = load_photo(args.photo)
    emb = photo_embedding(photo.image)
    runs = {"fit": {"mode": "fit"}, "infer": {"mode": "infer"},
            "infer + refine": {"mode": "refine", "init": "regressor"},
            "mean + refine": {"mode": "refine", "init": "mean"}}
    report, renders = {}, []
    for name, kwargs in runs.items():
        t0 = time.perf_counter()
        avatar = create(photo, texture_size=args.texture_size, **kwargs)
        seconds = time.perf_counter() - t0
        report[name] = {"seconds": round(seconds, 2), "timings_s": avatar.meta.get("timings_s"),
                        "identity_cos": round(identity_similarity(emb, Reconstruction.from_avatar(avatar)), 4),
                        "refine": avatar.meta.get("refine")}
        renders.append(frontal_render(avatar))
        print(f"{name:16s} {seconds:6.1f} s  identity cos {report[name]['identity_cos']:.3f}", flush=True)
    h = renders[0].shape[0]
    ph = Image.fromarray(photo.image)
    ph = np.asarray(ph.resize((round(ph.width * h / ph.height), h), Image.LANCZOS))
    out = Path(args.output)
    atomic_write_bytes(out / "ablation.png", png_bytes(np.concatenate([ph, *renders], 1)))
    summary = {"photo": str(args.photo), "modes": report}
    atomic_write_bytes(out / "ablation.json", json.dumps(summary, indent=1).encode())
    print(f"wrote {out}/ablation.png, ablation.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time the inference path R + G (embedding -> ws -> 6-channel UV map): onnxruntime vs PyTorch.

Usage::

    python benchmarks/bench_onnx.py [--resolution 64 --w-dim 256 ...] [--weights G.pt R.pt]
        [--batch 1] [--runs 20] [--warmup 3] [--threads 2] [--json out.json]

Without ``--weights`` R and G are built with random weights at the given
config (timing does not depend on the values); with it they are loaded from
checkpoints written by :func:`avatarsdk.nn.checkpoint.save`. Both are exported
to ONNX (opset 17) in a temporary folder, then R + G is run through two
onnxruntime sessions (``--threads`` intra-op threads, CUDA when the build has
it) and through PyTorch (``torch.set_num_threads(--threads)``, inference
mode). The two are timed alternately run by run; reports the median (and min)
over ``--runs`` runs after ``--warmup`` runs, in ms, and the max relative
difference of the two outputs, as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avatarsdk.nn import Generator, GeneratorConfig, Regressor, RegressorConfig, checkpoint
from avatarsdk.nn.onnx import OnnxModel, export_generator, export_regressor


def _time_interleaved(fns: dict, runs: int, warmup: int) -> dict[str, list[float]]:
    """Time each function ``runs`` times, alternating between them run by run, after ``warmup`` calls each.

    Interleaving keeps a change in background load (shared CI machines) from biasing one side.

    Returns:
        name -> run times in ms.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(1000.0 * (time.perf_counter() - t0))
    return times


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print (and return) the JSON record."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--z-dim", type=int, default=None, help="default: --w-dim")
    ap.add_argument("--w-dim", type=int, default=256)
    ap.add_argument("--mapping-layers", type=int, default=8)
    ap.add_argument("--channel-base", type=int, default=32768)
    ap.add_argument("--channel-max", type=int, default=256)
    ap.add_argument("--in-dim", type=int, default=128, help="embedding size (128 dlib, 512 FaceNet)")
    ap.add_argument("--hidden-dim", type=int, default=512, help="regressor hidden width")
    ap.add_argument("--weights", nargs=2, metavar=("G.pt", "R.pt"), type=Path, default=None,
                    help="generator and regressor checkpoints (instead of random weights)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--spin", action="store_true",
                    help="let onnxruntime's idle threads spin (its default); off here because spinning "
                         "threads starve PyTorch's OpenMP threads when the two are timed alternately")
    ap.add_argument("--json", type=Path, default=None, help="also write the record here")
    args = ap.parse_args(argv)

    if args.weights:
        g = checkpoint.load(args.weights[0], kind="generator").model
        r = checkpoint.load(args.weights[1], kind="regressor").model
        if (r.cfg.num_ws, r.cfg.w_dim) != (g.cfg.num_ws, g.cfg.w_dim):
            raise SystemExit(f"regressor output {r.cfg.num_ws}x{r.cfg.w_dim} does not match G's "
                             f"{g.cfg.num_ws}x{g.cfg.w_dim}")
    else:
        gcfg = GeneratorConfig(resolution=args.resolution, z_dim=args.z_dim or args.w_dim, w_dim=args.w_dim,
                               mapping_layers=args.mapping_layers, channel_base=args.channel_base,
                               channel_max=args.channel_max)
        g = Generator(gcfg, seed=0)
        r = Regressor(RegressorConfig.for_generator(gcfg, in_dim=args.in_dim, hidden_dim=args.hidden_dim), seed=0)
    g.eval()
    r.eval()
    torch.set_num_threads(args.threads)
    emb = torch.randn(args.batch, r.cfg.in_dim, generator=torch.Generator().manual_seed(0))

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_regressor(r, Path(tmp) / "r.onnx")
        export_generator(g, Path(tmp) / "g_ws.onnx", input="ws")
        export_s = time.perf_counter() - t0
        sizes_mb = {p.stem: round(p.stat().st_size / 2**20, 2) for p in Path(tmp).glob("*.onnx")}
        sess = dict(intra_op_num_threads=args.threads, inter_op_num_threads=1,
                    session_config={"session.intra_op.allow_spinning": "1" if args.spin else "0"})
        r_sess = OnnxModel(Path(tmp) / "r.onnx", **sess)
        g_sess = OnnxModel(Path(tmp) / "g_ws.onnx", **sess)
        emb_np = emb.numpy()

        def run_onnx() -> np.ndarray:
            return g_sess(r_sess(emb_np))

        def run_torch() -> torch.Tensor:
            with torch.inference_mode():
                return g.synthesis(r(emb))

        times = _time_interleaved({"onnx": run_onnx, "torch": run_torch}, args.runs, args.warmup)
        onnx_ms, torch_ms = statistics.median(times["onnx"]), statistics.median(times["torch"])
        ref = run_torch().numpy()
        rel = float(np.abs(run_onnx() - ref).max() / np.abs(ref).max())
        providers = g_sess.providers

    import onnx
    import onnxruntime

    record = {
        "bench": "onnx_r_plus_g",
        "resolution": g.cfg.resolution,
        "z_dim": g.cfg.z_dim,
        "w_dim": g.cfg.w_dim,
        "num_ws": g.cfg.num_ws,
        "channel_base": g.cfg.channel_base,
        "channel_max": g.cfg.channel_max,
        "mapping_layers": g.cfg.mapping_layers,
        "in_dim": r.cfg.in_dim,
        "g_params_m": round(sum(p.numel() for p in g.synthesis.parameters()) / 1e6, 3),
        "r_params_m": round(sum(p.numel() for p in r.parameters()) / 1e6, 3),
        "weights": [str(p) for p in args.weights] if args.weights else "random",
        "batch": args.batch,
        "threads": args.threads,
        "ort_spinning": args.spin,
        "runs": args.runs,
        "onnx_ms": round(onnx_ms, 3),
        "torch_ms": round(torch_ms, 3),
        "onnx_min_ms": round(min(times["onnx"]), 3),
        "torch_min_ms": round(min(times["torch"]), 3),
        "speedup": round(torch_ms / onnx_ms, 3),
        "max_rel_diff": rel,
        "export_s": round(export_s, 3),
        "onnx_mb": sizes_mb,
        "providers": providers,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    line = json.dumps(record)
    print(line)
    if args.json:
        args.json.write_text(line + "\n")
    return record


if __name__ == "__main__":
    main()

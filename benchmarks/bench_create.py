"""End-to-end time of ``avatarsdk create`` per mode, with the per-stage breakdown from fit.json.

Each run is a fresh process (``avatarsdk create PHOTO -o DIR --mode M``), as a
user runs it: the wall time includes Python start-up, imports and weight
loading; the stages come from the ``timings_s`` that ``create`` writes to
fit.json. Prints the median over the runs and writes
``benchmarks/results/create_timings.json`` (or ``--json``).

    python benchmarks/bench_create.py --runs 5 --modes fit,refine,infer
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", default=str(ROOT / "examples" / "astronaut.png"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--modes", default="fit,refine,infer")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "create_timings.json"))
    args = ap.parse_args(argv)
    exe = str(Path(sys.executable).with_name("avatarsdk"))
    result = {"photo": Path(args.photo).name, "runs": args.runs, "cpu_count": os.cpu_count(),
              "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"), "machine": platform.machine(),
              "modes": {}}
    for mode in args.modes.split(","):
        walls, stages = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                subprocess.run([exe, "create", args.photo, "-o", tmp, "--mode", mode], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                walls.append(time.perf_counter() - t0)
                stages.append(json.loads((Path(tmp) / "fit.json").read_text())["timings_s"])
        keys = [k for k in stages[0] if all(k in s for s in stages)]
        med = {k: round(statistics.median(s[k] for s in stages), 3) for k in keys}
        result["modes"][mode] = {"wall_s_median": round(statistics.median(walls), 2),
                                 "wall_s": [round(w, 2) for w in walls], "stages_s_median": med}
        print(f"{mode:7s} wall median {statistics.median(walls):6.1f} s  runs {[round(w, 1) for w in walls]}")
        print("        " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""End-to-end time of ``avatarsdk create`` per mode, with the per-stage breakdown from fit.json.

Each run is a fresh process (``avatarsdk create PHOTO -o DIR --mode M``), as a
user runs it: the wall time includes Python start-up, imports and weight
loading; the stages come from the ``timings_s`` that ``create`` writes to
fit.json. Also reported: the run's CPU time (user + system of the process and
its threads, from ``os.wait4``), which a loaded machine inflates far less than
the wall time, and its peak RSS (``ru_maxrss``). Prints the median over the
runs and writes ``benchmarks/results/create_timings.json`` (or ``--json``).

The first run after installing (or after the ICT data or the code changed)
also fills the disk cache of derived tables (:mod:`avatarsdk.cache`: the UV
raster, skin atlas and mirror map); ``--cold`` runs each in an empty cache
folder instead, to measure that first run.

    python benchmarks/bench_create.py --runs 3 --modes fit,refine,infer
    python benchmarks/bench_create.py --runs 1 --modes fit --cold
    python benchmarks/bench_create.py --runs 3 --modes fit --hair none,auto   # what --hair auto adds
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
    ap.add_argument("--cold", action="store_true", help="each run with an empty AVATARSDK_CACHE_DIR")
    ap.add_argument("--hair", default="none", help="create's --hair; several, comma-separated ('none,auto': "
                    "what hair from the photo adds), are alternated run by run and reported each")
    args = ap.parse_args(argv)
    exe = str(Path(sys.executable).with_name("avatarsdk"))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"photo": Path(args.photo).name, "runs": args.runs, "cpu_count": os.cpu_count(),
              "torch_threads": os.environ.get("OMP_NUM_THREADS", "default"), "machine": platform.machine(),
              "cold_cache": args.cold, "load_average_before": load, "modes": {}}
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    hairs = args.hair.split(",")
    for mode in args.modes.split(","):
        runs = {h: {"walls": [], "cpus": [], "rss": [], "stages": []} for h in hairs}
        for _ in range(args.runs):
            for hair in hairs:  # alternated run by run: each --hair value sees the same machine
                r = runs[hair]
                with tempfile.TemporaryDirectory() as tmp:
                    env = dict(os.environ)
                    if args.cold:
                        env["AVATARSDK_CACHE_DIR"] = str(Path(tmp) / "cache")
                    t0 = time.perf_counter()
                    proc = subprocess.Popen([exe, "create", args.photo, "-o", str(Path(tmp) / "out"), "--mode", mode,
                                             "--hair", hair],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                    _, status, usage = os.wait4(proc.pid, 0)
                    r["walls"].append(time.perf_counter() - t0)
                    if os.waitstatus_to_exitcode(status) != 0:
                        raise SystemExit(f"create --mode {mode} --hair {hair} failed "
                                         f"(exit {os.waitstatus_to_exitcode(status)})")
                    r["cpus"].append(usage.ru_utime + usage.ru_stime)
                    r["rss"].append(usage.ru_maxrss * scale)
                    r["stages"].append(json.loads((Path(tmp) / "out" / "fit.json").read_text())["timings_s"])
        for hair in hairs:
            walls, cpus, rss, stages = (runs[hair][k] for k in ("walls", "cpus", "rss", "stages"))
            keys = [k for k in stages[0] if all(k in s for s in stages)]
            med = {k: round(statistics.median(s[k] for s in stages), 3) for k in keys}
            name = mode if hair == "none" else f"{mode}+hair_{hair}"
            result["modes"][name] = {"wall_s_median": round(statistics.median(walls), 2),
                                     "wall_s": [round(w, 2) for w in walls],
                                     "cpu_s_median": round(statistics.median(cpus), 2),
                                     "cpu_s": [round(c, 2) for c in cpus],
                                     "peak_rss_mib_max": round(max(rss)), "stages_s_median": med}
            print(f"{name:14s} wall median {statistics.median(walls):6.1f} s  runs {[round(w, 1) for w in walls]}  "
                  f"CPU median {statistics.median(cpus):6.1f} s  peak RSS {max(rss):.0f} MiB")
            print("        " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

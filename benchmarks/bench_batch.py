"""Throughput of ``avatarsdk batch --random N --workers W``: heads per minute, CPU per head, worker peak RSS.

Each configuration runs the installed CLI in a fresh process, as a user runs
it (worker start-up and warm-up included), into a temporary folder::

    python benchmarks/bench_batch.py                       # 100 heads, 2 workers, previews on and off
    python benchmarks/bench_batch.py --heads 20 --configs previews

Reported per configuration:

* ``heads/min``: N / wall time of the whole command x 60 (the figure the
  target is stated in; only meaningful on quiet cores).
* ``CPU s/head``: user + system CPU of the batch process and all its workers
  (``os.wait4`` of the command: its own and its reaped children's rusage) / N.
  Unlike wall time it hardly moves when other work shares the machine.
* ``CPU-bound heads/min``: W x 60 / (CPU s/head), what W idle cores would give
  when the workers never wait (an upper bound; compare it with heads/min on a
  quiet machine).
* peak RSS: of every worker process (``VmHWM`` sampled from ``/proc`` while it
  runs) and of the whole tree's largest process (``ru_maxrss``).
* the per-step means from OUT/summary.json (``mean_timings_s``, wall seconds
  inside a worker).

Prints a table and writes ``benchmarks/results/batch_throughput.json`` (or ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"previews": [], "no-previews": ["--preview-size", "0"]}


def _exe() -> list[str]:
    exe = shutil.which("avatarsdk", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return [exe] if exe else [sys.executable, "-m", "avatarsdk"]


def _workers(pid: int) -> list[int]:
    """The batch's worker processes (spawned by multiprocessing; not its resource tracker)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(x) for x in f.read().split()]
    except OSError:
        return []
    out = []
    for child in children:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.append(child)
        except OSError:
            pass
    return out


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_one(heads: int, workers: int, seed: int, extra: list[str]) -> dict:
    """Run one batch command; return its wall time, CPU time, peak RSS figures and summary means."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [*_exe(), "batch", "--random", str(heads), "--seed", str(seed), "--workers", str(workers),
               "-o", str(out), *extra]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        workers_hwm: dict[int, float] = {}
        while True:  # sample each worker's high-water mark until the batch exits
            for child in _workers(proc.pid):
                hwm = _vm_hwm_mib(child)
                if hwm is not None:
                    workers_hwm[child] = max(workers_hwm.get(child, 0.0), hwm)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        wall = time.perf_counter() - t0
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {}
    cpu = usage.ru_utime + usage.ru_stime
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return {
        "command": cmd, "returncode": code, "stderr_tail": err[-400:], "wall_s": round(wall, 2),
        "heads_per_min": round(heads / wall * 60, 1), "cpu_s": round(cpu, 1), "cpu_s_per_head": round(cpu / heads, 3),
        "cpu_bound_heads_per_min": round(workers * 60 / (cpu / heads), 1),
        "worker_peak_rss_mib": sorted(round(v) for v in workers_hwm.values()),
        "tree_max_rss_mib": round(usage.ru_maxrss * scale),
        "counts": summary.get("counts"), "mean_timings_s": summary.get("mean_timings_s"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", default="previews,no-previews", help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "batch_throughput.json"))
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result = {"heads": args.heads, "workers": args.workers, "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "load_average_before": load, "configs": {}}
    print(f"avatarsdk batch --random {args.heads} --workers {args.workers}  (load average before: {load})")
    print(f"{'config':12s} {'heads/min':>9s} {'wall s':>7s} {'CPU s/head':>10s} {'CPU-bound/min':>13s} "
          f"{'worker RSS MiB':>16s}  per-step means (s)")
    ok = True
    for name in args.configs.split(","):
        r = run_one(args.heads, args.workers, args.seed, CONFIGS[name])
        result["configs"][name] = r
        ok &= r["returncode"] == 0
        steps = ", ".join(f"{k} {v:.2f}" for k, v in (r["mean_timings_s"] or {}).items())
        print(f"{name:12s} {r['heads_per_min']:9.1f} {r['wall_s']:7.1f} {r['cpu_s_per_head']:10.3f} "
              f"{r['cpu_bound_heads_per_min']:13.1f} {str(r['worker_peak_rss_mib']):>16s}  {steps}", flush=True)
        if r["returncode"] != 0:
            print(r["stderr_tail"], file=sys.stderr)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

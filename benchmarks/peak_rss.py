"""Peak resident memory of `avatarsdk create` on a photo (not a pytest test).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/peak_rss.py [PHOTO] [--runs 1] [--json out.json] [-- EXTRA CREATE ARGS]

Runs ``avatarsdk create PHOTO -o <temp folder>`` as a child process (the
installed console script, or ``python -c 'avatarsdk.cli.main()'`` when it is
not on PATH) and reports its peak RSS: ``ru_maxrss`` of that child, from ``os.wait4`` (the
figure ``getrusage(RUSAGE_CHILDREN)`` and ``/usr/bin/time -v``'s "Maximum
resident set size" report, but per run). While it runs, the child's ``VmHWM``
in ``/proc/<pid>/status`` is sampled as a cross-check where ``/proc`` exists.
Prints one line per run and the maximum; exits 1 if a run fails or the peak
exceeds ``--limit-gb`` (default 4).
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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(photo: Path, out: Path, extra: list[str]) -> list[str]:
    exe = shutil.which("avatarsdk", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    head = [exe] if exe else [sys.executable, "-c", "import sys; from avatarsdk.cli import main; "
                                                    "sys.argv[0] = 'avatarsdk'; main()"]
    return [*head, "create", str(photo), "-o", str(out), *extra]


def _vm_hwm_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def measure(photo: Path, extra: list[str]) -> dict:
    """Run one `create` in a child process and return its peak RSS and wall time.

    Returns:
        {"peak_rss_mib": float (the child's ru_maxrss from wait4), "vm_hwm_mib":
        float or None (/proc sample), "seconds": float, "returncode": int,
        "stderr_tail": str, "command": list[str]}
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = _command(photo, Path(tmp) / "out", extra)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        hwm, err = [0], []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
        while True:  # sample VmHWM until the child exits, then reap it with its own rusage
            v = _vm_hwm_kib(proc.pid)
            if v:
                hwm[0] = max(hwm[0], v)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join()
        proc.stderr.close()
        produced = sorted(p.name for p in (Path(tmp) / "out").glob("*")) if (Path(tmp) / "out").is_dir() else []
    # ru_maxrss: KiB on Linux, bytes on macOS.
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024
    return {
        "peak_rss_mib": round(usage.ru_maxrss * scale, 1),
        "vm_hwm_mib": round(hwm[0] / 1024, 1) if hwm[0] else None,
        "seconds": round(seconds, 2),
        "returncode": proc.returncode,
        "outputs": produced,
        "stderr_tail": (err[0] if err else b"").decode(errors="replace")[-500:],
        "command": cmd,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure, print, optionally write JSON; exit 1 on a failed run or a peak over the limit."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photo", nargs="?", type=Path, default=ROOT / "examples" / "astronaut.png")
    ap.add_argument("--runs", type=int, default=1, help="runs, each in a fresh child process")
    ap.add_argument("--limit-gb", type=float, default=4.0, help="fail above this peak (GiB)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # after --: more arguments for `create`
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    runs = []
    for i in range(args.runs):
        r = measure(args.photo, extra)
        runs.append(r)
        print(f"run {i + 1}: peak RSS {r['peak_rss_mib']:.0f} MiB (wait4 ru_maxrss), VmHWM "
              f"{r['vm_hwm_mib'] if r['vm_hwm_mib'] is not None else '-'} MiB, {r['seconds']:.1f} s, "
              f"exit {r['returncode']}")
        if r["returncode"] != 0:
            print(r["stderr_tail"], file=sys.stderr)
    peak = max(r["peak_rss_mib"] for r in runs)
    limit_mib = args.limit_gb * 1024
    print(f"peak RSS of `avatarsdk create {args.photo.name}`: {peak:.0f} MiB = {peak / 1024:.2f} GiB "
          f"(limit {args.limit_gb:g} GiB) over {len(runs)} run(s)")
    if args.json:
        args.json.write_text(json.dumps({
            "bench": "peak_rss_create", "photo": str(args.photo), "extra_args": extra, "runs": runs,
            "peak_rss_mib": peak, "limit_gib": args.limit_gb, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        }, indent=2) + "\n")
    return 0 if all(r["returncode"] == 0 for r in runs) and peak <= limit_mib else 1


if __name__ == "__main__":
    sys.exit(main())

"""CPU profile of one batch worker's heads: where each head's CPU time goes (cProfile).

Warms up like a batch worker (one torch thread; ICT model and G loaded once),
builds two heads outside the profile (a worker's first head also loads or
prepares the blendshape transfer), then profiles
``--heads`` more with :func:`avatarsdk.batch.build_job` and prints
the CPU seconds per head (``time.process_time``, which a loaded machine
inflates far less than wall time) and the profile's top lines, timed in CPU
seconds too (the profiler's clock is ``time.process_time``)::

    python benchmarks/profile_batch.py --heads 8            # previews on (256 px)
    python benchmarks/profile_batch.py --heads 8 --preview-size 0 --top 40
    python benchmarks/profile_batch.py --heads 8 --no-profile   # the CPU per head alone

``--stats FILE`` keeps the raw profile (``python -m pstats FILE``).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preview-size", type=int, default=256)
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--stats", default=None, help="write the raw cProfile stats here")
    ap.add_argument("--no-profile", action="store_true", help="only the CPU per head, without cProfile's overhead")
    args = ap.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # as batch workers run (before numpy/torch load their BLAS)
    from avatarsdk import batch

    options = batch.BatchOptions(preview_size=args.preview_size, texture_size=args.texture_size)
    t0 = time.process_time()
    batch._warm_up(options, photos=False)
    warm = time.process_time() - t0
    jobs = batch.random_jobs(args.heads + 2, args.seed)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.process_time()
        first = [batch.build_job(j, out, options) for j in jobs[:2]]
        first_cpu = time.process_time() - t0
        prof = cProfile.Profile(time.process_time)  # CPU time: what other jobs on the machine do not inflate much
        t0 = time.process_time()
        if not args.no_profile:
            prof.enable()
        results = [batch.build_job(j, out, options) for j in jobs[2:]]
        prof.disable()
        cpu = (time.process_time() - t0) / args.heads
    bad = [r for r in [*first, *results] if r.status != "ok"]
    if bad:
        print(f"{len(bad)} heads failed: {bad[0].error_type}: {bad[0].error}", file=sys.stderr)
        return 1
    how = "without cProfile" if args.no_profile else "under cProfile, which adds to Python-heavy code"
    print(f"warm-up {warm:.2f} CPU-s; first two heads {first_cpu:.2f} CPU-s; then {cpu:.3f} CPU-s per head "
          f"({how}) over {args.heads} heads, preview {args.preview_size}, texture {args.texture_size}")
    if args.no_profile:
        return 0
    stats = pstats.Stats(prof)
    if args.stats:
        stats.dump_stats(args.stats)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

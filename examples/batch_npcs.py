"""Batch NPC heads: a folder of photos, or random identities, to engine packages.

    python examples/batch_npcs.py --random 20 -o out/npcs            # 20 random heads, glTF packages
    python examples/batch_npcs.py photos/ -o out/cast --preset unity  # one package per photo

Re-running the same command resumes: finished heads are skipped. The CLI does
the same with a progress bar: ``avatarsdk batch``.
"""

from __future__ import annotations

import argparse
import logging

from avatarsdk.batch import BatchOptions, photo_jobs, random_jobs, run_batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photos", nargs="?", help="folder of photos (omit with --random)")
    ap.add_argument("-o", "--output", required=True, help="output folder")
    ap.add_argument("--random", type=int, help="number of random heads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source", default="gan", choices=["gan", "ict"])
    ap.add_argument("--preset", default="gltf", choices=["gltf", "unity", "unreal", "fbx"])
    ap.add_argument("--mode", default="fit", choices=["fit", "infer", "refine"])
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--preview-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if (args.photos is None) == (args.random is None):
        ap.error("give a photo folder or --random COUNT")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    jobs = random_jobs(args.random, args.seed, args.source) if args.random else photo_jobs(args.photos)
    options = BatchOptions(preset=args.preset, mode=args.mode, source=args.source,
                           texture_size=args.texture_size, preview_size=args.preview_size)

    def report(result, done, total):
        extra = f" ({result.error_type}: {result.error})" if result.error else ""
        print(f"[{done}/{total}] {result.input}: {result.status}{extra}")

    summary = run_batch(jobs, args.output, options, workers=args.workers, progress=report)
    print(f"{summary.counts} in {summary.seconds:.1f} s; packages and summary.json in {summary.out_dir}")
    return 0 if summary.all_ok else 1


if __name__ == "__main__":  # worker processes are spawned: keep the script importable
    raise SystemExit(main())

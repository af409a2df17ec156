"""What ``--hair random`` adds to ``avatarsdk random``, as a new process pays it.

    python benchmarks/bench_random_hair.py [--seeds 1 2 3]

Per seed: the head without hair is exported as ``random`` does (glb and .avatar);
then, with the in-process caches of the hair module cleared (the strand atlas and
the skin's UV raster; the disk cache of :mod:`avatarsdk.cache` kept, as every run
after the first has it), the hair is drawn, the scalp tinted, the cards grown and
the head exported again with them. Reports the extra CPU and wall seconds, the
minimum of three repetitions (a loaded machine inflates, never deflates them).
"""

from __future__ import annotations

import argparse
import time

import torch

from avatarsdk.avatarfile import save_avatar
from avatarsdk.cli import _apply_hair, _hair_glb
from avatarsdk.exporters.gltf import to_glb
from avatarsdk import uvmap
from avatarsdk.hair.cards import _atlas_layers
from avatarsdk.pipeline import generated_avatar


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        av = generated_avatar(seed, truncation_psi=0.7, names="arkit", texture_size=1024)
        to_glb(av)
        extra = []
        for _ in range(3):
            t, w = time.process_time(), time.perf_counter()
            to_glb(av)
            save_avatar(av)
            bald = (time.process_time() - t, time.perf_counter() - w)
            uvmap._TEXEL_MEMO.clear()
            _atlas_layers.cache_clear()
            t, w = time.process_time(), time.perf_counter()
            with_hair, grown = _apply_hair(av, "random", seed)
            to_glb(with_hair, **_hair_glb(grown))
            save_avatar(with_hair)
            extra.append((time.process_time() - t - bald[0], time.perf_counter() - w - bald[1]))
        print(f"seed {seed} {grown.style.name:18s} extra CPU {min(e[0] for e in extra):.3f} s, "
              f"wall {min(e[1] for e in extra):.3f} s (min of 3)", flush=True)


if __name__ == "__main__":
    main()

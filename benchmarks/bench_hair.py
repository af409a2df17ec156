"""CPU seconds hair adds to a random NPC head, per style (process time, so a loaded machine counts less).

    OMP_NUM_THREADS=2 python benchmarks/bench_hair.py [--seeds 3]

For each style: with_hair (scalp tint) + hair_for (grow strands, cards for 3 LODs, atlas)
+ the extra cost of to_glb with the hair mesh over the bald to_glb.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from avatarsdk.exporters.gltf import to_glb
from avatarsdk.hair import STYLES, get_style, hair_for, named_colour, with_hair
from avatarsdk.pipeline import random_avatar


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = {}
    heads = [random_avatar(s) for s in range(args.seeds)]
    with_hair(heads[0], get_style("bob"), named_colour("brown"), 0)  # warm caches (atlas layers, UV raster)
    bald = []
    for av in heads:
        t = time.process_time()
        to_glb(av)
        bald.append(time.process_time() - t)
    for name in STYLES:
        costs, tris = [], None
        for i, av in enumerate(heads):
            t = time.process_time()
            a = with_hair(av, get_style(name), named_colour("brown"), i)
            h = hair_for(a)
            to_glb(a, hair=h.lods[0], hair_texture=h.texture)
            costs.append(time.process_time() - t - bald[i])
            tris = [c.num_triangles for c in h.lods]
        rows[name] = {"cpu_s_median": round(float(np.median(costs)), 3), "triangles_per_lod": tris}
        print(f"{name:18s} {rows[name]['cpu_s_median']:.3f} s  triangles {tris}")
    print(json.dumps({"bald_to_glb_cpu_s": round(float(np.median(bald)), 3)}))


if __name__ == "__main__":
    main()

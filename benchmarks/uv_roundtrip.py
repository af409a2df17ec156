"""Mesh -> UV position map -> mesh round trip error (mm) on random ICT identities.

Usage: python benchmarks/uv_roundtrip.py [--size 256] [--n 10] [--scale 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse

import numpy as np

from avatarsdk.rigs import PARTS, load_ict
from avatarsdk.uvmap import mesh_to_offset_map, offset_map_to_mesh


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    m = load_ict()
    rng = np.random.default_rng(a.seed)
    verts = np.stack([m.morph(rng.standard_normal(100) * a.scale) for _ in range(a.n)])
    off, _ = mesh_to_offset_map(verts, m.topology, m.neutral, size=a.size)
    back = offset_map_to_mesh(off, m.topology, m.neutral, m.identity_basis).numpy()
    err = np.linalg.norm(back - verts, axis=-1) * 1000
    print(f"{a.n} identities x N(0, {a.scale}^2), map {a.size}x{a.size}; error in mm")
    print("| region | mean | p99 | max |\n|---|---|---|---|")
    for name in ("face", "head_neck"):
        e = err[:, slice(*PARTS[name])]
        print(f"| {name} | {e.mean():.3f} | {np.percentile(e, 99):.3f} | {e.max():.3f} |")
    print(f"| all vertices | {err.mean():.3f} | {np.percentile(err, 99):.3f} | {err.max():.3f} |")


if __name__ == "__main__":
    main()

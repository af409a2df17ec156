"""Look at a trained UV generator: contact sheet of random heads and coverage against its training set.

Usage::

    python benchmarks/gan_report.py [--generator G.pt] [--data DATASET_DIR] [--n 16] [--psi 0.7]
        [--coverage-n 256] [--out out/gan_report]

Writes ``contact_sheet.png`` (``--n`` heads sampled with seeds 0..n-1 at
truncation ``--psi``, each rendered front and three-quarter by
:func:`avatarsdk.preview.render_views` from the exported .glb, so what is seen is
what an engine gets), ``training_sheet.png`` (the same number of training heads
rendered the same way, for comparison) and ``report.json`` (the coverage and
diversity figures of :func:`avatarsdk.train.gan.coverage_stats`, untruncated
and truncated). Default generator: the shipped weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from avatarsdk import pretrained
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import load_glb
from avatarsdk.files import atomic_write_bytes, png_bytes
from avatarsdk.nn.checkpoint import load
from avatarsdk.nn.stylegan import decode_maps
from avatarsdk.pipeline import generated_avatar, maps_to_avatar
from avatarsdk.preview import render_views

VIEWS = ((0.0, 0.0), (35.0, 0.0))


def _tile(images: list[np.ndarray], cols: int) -> np.ndarray:
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    sheet = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = img
    return sheet


def _render(avatar, size: int) -> np.ndarray:
    return render_views(load_glb(to_glb(avatar)), views=VIEWS, size=size)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None, help="training set folder (for coverage and its sheet)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--psi", type=float, default=0.7)
    ap.add_argument("--coverage-n", type=int, default=256)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--out", type=Path, default=Path("out/gan_report"))
    args = ap.parse_args(argv)

    path = args.generator or pretrained.locate("generator")
    G = load(path, kind="generator").model
    report: dict = {"generator": str(path), "config": G.cfg.__dict__, "n": args.n, "psi": args.psi}
    t0 = time.perf_counter()
    tiles = [_render(generated_avatar(seed, truncation_psi=args.psi, texture_size=256, generator=path), args.size)
             for seed in range(args.n)]
    report["sheet_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_bytes(args.out / "contact_sheet.png", png_bytes(_tile(tiles, 4)))
    if args.data is not None:
        from avatarsdk.train.data import UVDataset
        from avatarsdk.train.gan import coverage_stats

        ds = UVDataset(args.data, G.cfg)
        rng = np.random.default_rng(0)
        train_tiles = []
        for i in rng.choice(len(ds), size=min(args.n, len(ds)), replace=False):
            item = ds[int(i)]
            maps = item[0] if isinstance(item, (tuple, list)) else item
            albedo, offsets = decode_maps(torch.as_tensor(maps)[None], G.cfg)
            av = maps_to_avatar(albedo[0].permute(1, 2, 0).numpy(), offsets[0].permute(1, 2, 0).numpy(),
                                texture_size=256)
            train_tiles.append(_render(av, args.size))
        atomic_write_bytes(args.out / "training_sheet.png", png_bytes(_tile(train_tiles, 4)))
        for psi in (1.0, args.psi):
            cov = coverage_stats(G, ds, n=args.coverage_n, truncation_psi=psi)
            report[f"coverage_psi_{psi:g}"] = cov.to_json()
    atomic_write_bytes(args.out / "report.json", json.dumps(report, indent=1, default=str).encode())
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

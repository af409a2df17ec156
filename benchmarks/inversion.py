"""Inversion error of a generator on held-out synthetic heads (paper eq. 1; issue figure).

Usage::

    python benchmarks/inversion.py [--generator G.pt] [--n 4] [--steps 100] [--seed 1] [--json out.json]
    python benchmarks/inversion.py --fitted FIT.npz [FIT.npz ...] [--generator G.pt] ...

Targets are synthetic training-style heads made with a data seed the shipped
training set did not use (``DataConfig(seed=--seed)``; the shipped G was trained
on seed 0), so they are held out. Each is inverted from G's average latent with
:func:`avatarsdk.invert.invert` (map L1 + ST-LPIPS on three fixed views; no
adversarial term: the discriminators are not shipped). Prints, per target and on
average, the face-region vertex error (mm) and the chart albedo L1, before
(the average latent) and after inversion, as one JSON line.

With ``--fitted`` the targets are fitted heads instead (``fitted/*.npz`` of
``avatarsdk train invert``, or anything ``avatarsdk.train.data.load_fitted``
reads): how well G covers fits of real photos, the bootstrap's G0 -> G1 figure.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from avatarsdk import pretrained
from avatarsdk.invert import InvertConfig, invert
from avatarsdk.nn.checkpoint import load
from avatarsdk.colour import srgb_to_linear
from avatarsdk.train.data import DataConfig, fitted_sample, load_fitted, synthetic_sample


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default=None)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--fitted", nargs="+", default=None, help="fitted heads to invert instead of synthetic ones")
    args = ap.parse_args(argv)
    G = load(args.generator or pretrained.locate("generator"), kind="generator").model
    data_cfg = DataConfig(resolution=G.cfg.resolution, count=args.n, seed=args.seed)
    cfg = InvertConfig(steps=args.steps)
    rows = []
    targets = args.fitted if args.fitted else range(args.n)
    for i in targets:
        if args.fitted:
            vertices, albedo_srgb, _ = load_fitted(i)
            s = fitted_sample(vertices, albedo_srgb, G.cfg.resolution)
            albedo = srgb_to_linear(s.albedo.astype(np.float32) / 255.0).astype(np.float32)
            offsets = np.array(s.offsets, np.float32)
        else:
            t = synthetic_sample(i, data_cfg)
            albedo, offsets = np.array(t.albedo), np.array(t.offsets, np.float32)
        t0 = time.perf_counter()
        inv = invert(G, torch.from_numpy(albedo).permute(2, 0, 1), torch.from_numpy(offsets).permute(2, 0, 1), cfg)
        rows.append({"target": str(i) if args.fitted else i, "start": inv.initial_errors, "inverted": inv.errors,
                     "seconds": round(time.perf_counter() - t0, 1)})
    mean = {k: float(np.mean([r["inverted"][k] for r in rows])) for k in rows[0]["inverted"]}
    start = {k: float(np.mean([r["start"][k] for r in rows])) for k in rows[0]["start"]}
    out = {"bench": "inversion", "n": len(rows), "targets_kind": "fitted" if args.fitted else "synthetic",
           "generator": args.generator or "shipped", "steps": args.steps, "data_seed": args.seed,
           "mean_start": start, "mean_inverted": mean, "targets": rows}
    line = json.dumps(out, default=float)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Lip-region albedo error of the fit mode on the fidelity benchmark's neutral and expressive inputs.

For each case seed, the same synthetic person is photographed neutral, smiling and with the jaw
open (:func:`avatarsdk.bench.fidelity.make_case`); each photo goes through the fit mode's fit and
albedo stages, and the mean sRGB L1 against the ground-truth albedo is taken over the lip texels
(:func:`avatarsdk.albedo.lip_region` at the benchmark's 256 texels) and over the benchmark's face
region. Prints one JSON line per input and writes them all to --out.

    python scripts/lip_region_error.py --seeds 0 1 --out lips.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from avatarsdk.albedo import lip_region
from avatarsdk.bench import fidelity
from avatarsdk.pipeline import albedo_stage, fit_stage
from avatarsdk.rigs import load_ict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--texture-size", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    lips = lip_region(load_ict(), fidelity.EVAL_SIZE).numpy()
    face = fidelity._eval_mask()
    rows = []
    for seed in args.seeds:
        for expression in (None, "smile", "jaw_open"):
            case = fidelity.make_case(seed, expression=expression)
            albedo, _ = albedo_stage(fit_stage(case.photo), texture_size=args.texture_size)
            d = np.abs(fidelity._to_eval(case.albedo) - fidelity._to_eval(albedo))
            row = {"seed": seed, "expression": expression, "lip_l1": round(float(d[lips].mean()), 4),
                   "face_l1": round(float(d[face].mean()), 4)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Fit every development-set photo once and keep what the hair benchmark needs (out/hair_cache/ID.pkl).

    AVATARSDK_ICT_DIR=... python benchmarks/_devset_fits.py [--devset out/devset] [--cache out/hair_cache]

The PhotoFit is pickled without its ICT model (reloaded on read). The fit is
``create``'s except for a shorter photometric stage (:data:`FIT_OPTIONS`: one
30-step stage at 128 px instead of 60 at 128 and 30 at 256, about a sixth of the
fit's CPU time), so that the 15 photos fit on a shared 2-core machine; pose and
shape come mostly from the landmark stages, the SH light from this stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
from pathlib import Path

import torch

from avatarsdk.errors import AvatarError

from avatarsdk.fit import FitOptions
from avatarsdk.pipeline import PhotoFit, fit_stage
from avatarsdk.rigs import load_ict


FIT_OPTIONS = FitOptions(photo_steps=((128, 30),))


def photos(devset: Path) -> list[tuple[str, Path]]:
    """(id, path) of the development set's photos, in manifest order."""
    m = json.loads((devset / "manifest.json").read_text())
    return [(p["id"], devset / p["file"]) for p in m["photos"]]


def cached_fit(pid: str, path: Path, cache: Path) -> PhotoFit:
    """The photo's PhotoFit, from the cache or fitted now (and cached)."""
    f = cache / f"{pid}.pkl"
    if f.exists():
        pf = pickle.loads(f.read_bytes())
        return dataclasses.replace(pf, model=load_ict())
    pf = fit_stage(path, fit_options=FIT_OPTIONS)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(dataclasses.replace(pf, model=None)))
    tmp.rename(f)
    return pf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devset", type=Path, default=Path("out/devset"))
    ap.add_argument("--cache", type=Path, default=Path("out/hair_cache"))
    ap.add_argument("--reverse", action="store_true", help="last photo first (a second worker)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    todo = photos(a.devset)
    for pid, path in (todo[::-1] if a.reverse else todo):
        if (a.cache / f"{pid}.pkl").exists():
            continue
        try:
            cached_fit(pid, path, a.cache)
        except AvatarError as e:  # create refuses this photo too; the benchmark reports it
            print(pid, "failed:", e, flush=True)
            continue
        print(pid, flush=True)


if __name__ == "__main__":
    main()

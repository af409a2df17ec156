"""Fit every development-set photo once and keep what the hair benchmark needs (out/hair_cache/ID.pkl).

    AVATARSDK_ICT_DIR=... python benchmarks/_devset_fits.py [--devset out/devset] [--cache out/hair_cache]

The PhotoFit is pickled without its ICT model (reloaded on read).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
from pathlib import Path

import torch

from avatarsdk.errors import AvatarError

from avatarsdk.pipeline import PhotoFit, fit_stage
from avatarsdk.rigs import load_ict


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
    pf = fit_stage(path)
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

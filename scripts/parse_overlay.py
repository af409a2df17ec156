"""Render photos' face parses as overlays: photo | classes tinted, cropped around the face.

    python scripts/parse_overlay.py examples/astronaut.png -o benchmarks/results/parse_astronaut.png
    python scripts/parse_overlay.py $(ls out/devset/*.jpg out/devset/*.png | grep -v sheet) -o out/devset_parse.png --height 256
    python scripts/parse_overlay.py examples/astronaut.png -o out.png --repeat 5 --threads 1   # time it

One photo gives one (photo | overlay) pair; several give a sheet, three pairs a row, each captioned
with its file name and its hair / glasses / hat / skin pixel counts. A photo that fails (no face,
unreadable) is listed on stdout and left out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from avatarsdk.detect import detect
from avatarsdk.errors import AvatarError
from avatarsdk.parse import overlay, parse_face
from avatarsdk.photo import load_photo


def _pair(photo, lm, parsing, height: int) -> Image.Image:
    """(photo | overlay) of the square around the face, shifted to stay inside the photo."""
    x0, y0, x1, y1 = lm.box
    h, w = photo.size
    side = min(2.2 * max(x1 - x0, y1 - y0), h, w)
    cx = min(max((x0 + x1) / 2, side / 2), w - side / 2)
    cy = min(max((y0 + y1) / 2 - 0.1 * side, side / 2), h - side / 2)
    box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    size = (height, height)
    left = Image.fromarray(photo.image).crop(box).resize(size, Image.Resampling.LANCZOS)
    right = Image.fromarray(overlay(photo, parsing)).crop(box).resize(size, Image.Resampling.NEAREST)
    pair = Image.new("RGB", (2 * height, height))
    pair.paste(left, (0, 0))
    pair.paste(right, (height, 0))
    return pair


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photos", nargs="+")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--parser", default="bisenet", choices=("bisenet", "mesh"))
    ap.add_argument("--height", type=int, default=480, help="height of each pair in pixels")
    ap.add_argument("--repeat", type=int, default=0, help="also time this many parses of the first photo")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the parser")
    a = ap.parse_args()
    import avatarsdk.parse

    avatarsdk.parse.PARSE_THREADS = a.threads
    tiles = []
    for path in a.photos:
        try:
            photo = load_photo(path)
            lm = detect(photo)
            parsing = parse_face(photo, lm, method=a.parser)
        except AvatarError as exc:
            print(f"{path}: {type(exc).__name__}: {exc}")
            continue
        if a.repeat > 0 and not tiles:
            wall, cpu = [], []
            for _ in range(a.repeat):
                t, c = time.perf_counter(), time.process_time()
                parse_face(photo, lm, method=a.parser)
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            print(f"parse ({a.parser}, {a.threads} threads): median wall {np.median(wall):.3f} s, "
                  f"median CPU {np.median(cpu):.3f} s over {a.repeat} runs")
        pair = _pair(photo, lm, parsing, a.height)
        if len(a.photos) > 1:
            tile = Image.new("RGB", (pair.width, pair.height + 16), "white")
            tile.paste(pair, (0, 16))
            ImageDraw.Draw(tile).text((4, 2), f"{Path(path).name}  hair {parsing.hair.sum()} glasses "
                                              f"{parsing.glasses.sum()} hat {parsing.hat.sum()} skin "
                                              f"{parsing.skin.sum()}", fill="black")
            pair = tile
        tiles.append(pair)
        print(f"{path}: classes {sorted(np.unique(parsing.labels).tolist())}")
    if not tiles:
        raise SystemExit("no photo could be parsed")
    cols = min(3, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    tw, th = tiles[0].size
    sheet = Image.new("RGB", (cols * tw, rows * th), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * tw, (i // cols) * th))
    sheet.save(a.output, optimize=True)
    print(f"wrote {a.output}: {len(tiles)} of {len(a.photos)} photos")


if __name__ == "__main__":
    main()

"""Render a photo's face parse as an overlay: photo | classes tinted (crop around the face).

    python scripts/parse_overlay.py examples/astronaut.png benchmarks/results/parse_astronaut.png [--parser mesh]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from avatarsdk.detect import detect
from avatarsdk.parse import overlay, parse_face
from avatarsdk.photo import load_photo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("photo")
    ap.add_argument("output")
    ap.add_argument("--parser", default="bisenet", choices=("bisenet", "mesh"))
    ap.add_argument("--height", type=int, default=480, help="output height in pixels")
    ap.add_argument("--repeat", type=int, default=0, help="also time this many parses (after a warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the parser")
    a = ap.parse_args()
    import avatarsdk.parse

    avatarsdk.parse.PARSE_THREADS = a.threads
    photo = load_photo(a.photo)
    lm = detect(photo)
    parsing = parse_face(photo, lm, method=a.parser)
    if a.repeat > 0:
        wall, cpu = [], []
        for _ in range(a.repeat):
            t, c = time.perf_counter(), time.process_time()
            parse_face(photo, lm, method=a.parser)
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(f"parse ({a.parser}, {a.threads} threads): median wall {np.median(wall):.3f} s, "
              f"median CPU {np.median(cpu):.3f} s over {a.repeat} runs")
    x0, y0, x1, y1 = lm.box
    side = 2.2 * max(x1 - x0, y1 - y0)
    h, w = photo.size
    side = min(side, h, w)
    cx = min(max((x0 + x1) / 2, side / 2), w - side / 2)  # shifted to stay inside the photo
    cy = min(max((y0 + y1) / 2 - 0.1 * side, side / 2), h - side / 2)
    box = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    size = (a.height, a.height)
    left = Image.fromarray(photo.image).crop(box).resize(size, Image.Resampling.LANCZOS)
    right = Image.fromarray(overlay(photo, parsing)).crop(box).resize(size, Image.Resampling.NEAREST)
    sheet = Image.new("RGB", (2 * a.height, a.height))
    sheet.paste(left, (0, 0))
    sheet.paste(right, (a.height, 0))
    sheet.save(a.output, optimize=True)
    print(f"wrote {a.output}: classes {sorted(np.unique(parsing.labels).tolist())}")


if __name__ == "__main__":
    main()

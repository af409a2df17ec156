"""Contact sheets of the procedural hair: every library style on one head, and random NPCs.

    python scripts/hair_contact_sheet.py --out benchmarks/results [--size 256]

Writes hair_styles.png (each style, front and three-quarter) and
hair_random_npcs.png (16 random ICT heads with ``--hair random``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import load_glb
from avatarsdk.hair import STYLES, choose_hair, get_style, hair_for, named_colour, with_hair
from avatarsdk.pipeline import random_avatar
from avatarsdk.preview import render_views

VIEWS = ((0.0, 0.0), (35.0, 0.0))


def render(avatar, size: int) -> np.ndarray:
    hair = hair_for(avatar)
    glb = to_glb(avatar, blendshapes="none", hair=None if hair is None else hair.lods[0],
                 hair_texture=None if hair is None else hair.texture)
    return render_views(load_glb(glb), views=VIEWS, size=size)


def sheet(tiles: list[tuple[str, np.ndarray]], cols: int) -> Image.Image:
    h, w = tiles[0][1].shape[:2]
    rows = -(-len(tiles) // cols)
    img = Image.new("RGB", (cols * w, rows * (h + 16)), (40, 40, 40))
    d = ImageDraw.Draw(img)
    for i, (label, t) in enumerate(tiles):
        x, y = (i % cols) * w, (i // cols) * (h + 16)
        img.paste(Image.fromarray(t), (x, y + 16))
        d.text((x + 4, y + 2), label, fill=(230, 230, 230))
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only in ("", "styles"):
        base = random_avatar(3, texture_size=512)
        tiles = []
        for name in STYLES:
            av = with_hair(base, get_style(name), named_colour("brown"), 0)
            tiles.append((name, render(av, args.size)))
        sheet(tiles, 4).save(args.out / "hair_styles.png")
    if args.only in ("", "npcs"):
        tiles = []
        for seed in range(16):
            av = random_avatar(seed, texture_size=512)
            style, colour = choose_hair("random", seed)
            av = with_hair(av, style, colour, seed)
            tiles.append((f"seed {seed}: {style.name}, {colour.name}", render(av, args.size)))
        sheet(tiles, 4).save(args.out / "hair_random_npcs.png")
        styles = [t[0].split(": ")[1].split(",")[0] for t in tiles]
        report = {"heads": len(styles), "distinct_styles": len(set(styles)), "styles": styles}
        (args.out / "hair_random_npcs.json").write_text(json.dumps(report, indent=1))
        print(f"{len(set(styles))} distinct styles in {len(styles)} random heads")


if __name__ == "__main__":
    main()

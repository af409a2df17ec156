"""Hair from the photo on the real development set: silhouette IoU, head IoU, colour error, contact sheet.

    AVATARSDK_ICT_DIR=... OMP_NUM_THREADS=2 python benchmarks/hair_devset.py \\
        [--devset out/devset] [--cache out/hair_cache] [--only ID ...]

Per photo (fitted once and cached by ``benchmarks/_devset_fits.py``): the bald
avatar as ``create`` assembles it (skin albedo, rig; no iris or PBR maps, which
the hair does not see), then ``pipeline.hair_stage`` (the stage behind
``create --hair auto``). The hair it chose is regrown at LOD0 and rendered with
the photo's fitted camera by the project's z-buffer rasteriser (not the search's
painter) at 256 px on the longer side of a window around the head:

* ``hair_iou``: visible hair cards (in front of the head) vs the parsed hair
  mask; pixels the parser did not label, hats and hands do not count. Card
  geometry, not alpha-tested strands.
* ``head_iou``: head above the neck (the jaw cut of ``hair.photo.head_triangles``)
  or visible hair vs every parsed class but background, neck, necklace and cloth.
* ``delta_e``: CIEDE2000 (scikit-image) between the mean colour of the photo's
  parsed hair pixels (full resolution) and the mean colour of the avatar's hair
  rendered where it overlaps the parsed hair (256 px grid): strand atlas sampled at the cards' UVs (alpha-tested at 0.5),
  times the fitted SH light at the cards' normals and the photo's exposure.
  ``delta_e_albedo`` is the same with the de-lit root colour alone (no light).

Writes benchmarks/results/hair_devset.json, hair_devset.md (the README's table) and
hair_devset.png (photo | front | three-quarter). On a loaded machine, run workers with
``--wait`` (and ``--reverse``) beside ``_devset_fits.py``, then ``--assemble``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage.color import deltaE_ciede2000, rgb2lab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _devset_fits import cached_fit, photos  # noqa: E402

from avatarsdk.colour import linear_to_srgb, srgb_to_linear  # noqa: E402
from avatarsdk.exporters.gltf import to_glb  # noqa: E402
from avatarsdk.exporters.gltf_read import load_glb  # noqa: E402
from avatarsdk.hair import hair_for  # noqa: E402
from avatarsdk.hair.photo import head_triangles, hair_target  # noqa: E402
from avatarsdk.materials import default_textures  # noqa: E402
from avatarsdk.pipeline import albedo_stage, hair_stage  # noqa: E402
from avatarsdk.preview import render_views  # noqa: E402
from avatarsdk.render.camera import gl_matrices, transform_points  # noqa: E402
from avatarsdk.render.raster import interpolate, rasterize, texture  # noqa: E402
from avatarsdk.render.shading import sh_shading  # noqa: E402
from avatarsdk.datatypes import Avatar  # noqa: E402
from avatarsdk.errors import AvatarError  # noqa: E402

METRIC_SIZE = 256


def bald_avatar(pf, texture_size: int = 256) -> tuple[Avatar, object]:
    """The avatar ``create`` would make from this fit, without hair (and without iris colour and PBR maps)."""
    skin, exposure = albedo_stage(pf, texture_size=texture_size)
    neutral = pf.model.morph(pf.fit.identity)
    rig = pf.model.rig(neutral, names="arkit")
    return Avatar(vertices=neutral, topology=pf.model.topology, textures={"skin": skin, **default_textures()},
                  rig=rig, meta={}), exposure


def _raster(points, tris, camera, size):
    clip = transform_points(torch.from_numpy(np.ascontiguousarray(points, np.float32))[None],
                            gl_matrices(camera, size))
    faces = torch.from_numpy(np.asarray(tris, np.int64))
    return rasterize(clip, faces, size), faces


def metrics(pf, avatar: Avatar, exposure) -> dict:
    """IoUs and colour errors of the avatar's hair against the photo (see the module docstring)."""
    tg = hair_target(pf.photo.image, pf.parsing, pf.fit.camera, avatar, size=METRIC_SIZE)
    head_frags, _ = _raster(avatar.vertices, avatar.topology.triangles, tg.camera, tg.size)
    tid = head_frags.tri_id[0].numpy()
    head_depth = head_frags.depth[0].numpy()
    head_mask = (tid >= 0) & head_triangles(avatar)[np.maximum(tid, 0)]
    hair = hair_for(avatar)
    v = tg.valid
    out = {"style": None, "hair_px": int((tg.hair & v).sum())}
    if hair is None:
        vis = np.zeros(tg.size, bool)
    else:
        cards = hair.lods[0]
        frags, faces = _raster(cards.positions, cards.triangles, tg.camera, tg.size)
        d = frags.depth[0].numpy()
        vis = np.isfinite(d) & (d < head_depth)
        out["style"] = hair.style.name
        out["parameters"] = {k: hair.style.to_dict()[k] for k in ("length", "volume", "fringe", "parting",
                                                                    "recession")}
        out["colour"] = hair.colour.to_dict()

    def iou(a, b):
        a, b = a & v, b & v
        return float((a & b).sum()) / max(1, int((a | b).sum()))

    out["hair_iou"] = round(iou(vis, tg.hair), 4) if (tg.hair & v).any() or vis.any() else 1.0
    out["head_iou"] = round(iou(head_mask | vis, tg.head), 4)
    # colour: photo hair pixels at full resolution vs the rendered hair over the same (search-grid) pixels
    photo_hair = pf.parsing.hair.copy()
    if pf.parsing.hands is not None:
        photo_hair &= ~pf.parsing.hands
    px = pf.photo.image[photo_hair].astype(np.float64) / 255
    if len(px) == 0 or hair is None:
        return out
    mean_photo = linear_to_srgb(torch.from_numpy(srgb_to_linear(torch.from_numpy(px)).numpy().mean(0))).numpy()
    attrs = torch.from_numpy(np.concatenate([cards.normals, cards.uv], 1).astype(np.float32))[None]
    a = interpolate(attrs, frags, faces)[0]
    tex = torch.from_numpy(hair.texture.astype(np.float32) / 255)
    rgba = texture(tex, a[None, ..., 3:5])[0]
    sel = torch.from_numpy(vis & tg.hair & v) & (rgba[..., 3] >= 0.5)
    if int(sel.sum()) < 4:
        return out
    nrm = torch.nn.functional.normalize(a[..., :3][sel], dim=-1)
    shade = sh_shading(nrm, torch.from_numpy(np.asarray(pf.fit.light, np.float32))).clamp_min(0)
    scale = 1.0 if exposure is None else float(exposure.scale)
    lit = srgb_to_linear(rgba[..., :3][sel]) * shade * scale
    mean_avatar = linear_to_srgb(lit.mean(0).clamp(0, 1)).numpy()
    root = np.array(hair.colour.root)
    lab = lambda c: rgb2lab(np.asarray(c, np.float64).reshape(1, 1, 3))[0, 0]  # noqa: E731
    out["mean_photo_srgb"] = [round(float(x), 4) for x in mean_photo]
    out["mean_avatar_srgb"] = [round(float(x), 4) for x in mean_avatar]
    out["delta_e"] = round(float(deltaE_ciede2000(lab(mean_photo), lab(mean_avatar))), 2)
    out["delta_e_albedo"] = round(float(deltaE_ciede2000(lab(mean_photo), lab(root))), 2)
    return out


def sheet_row(pf, avatar: Avatar, height: int = 192) -> np.ndarray:
    """Photo crop around the head | avatar with hair, front | three-quarter."""
    hair = hair_for(avatar)
    kw = {} if hair is None else {"hair": hair.lods[0], "hair_texture": hair.texture}
    mesh = load_glb(to_glb(avatar, **kw))
    views = render_views(mesh, views=((0.0, 0.0), (35.0, 0.0)), size=height)
    box = np.asarray(pf.landmarks.box, np.float64)
    c = (box[:2] + box[2:]) / 2
    r = 1.05 * max(box[2] - box[0], box[3] - box[1])
    crop = Image.fromarray(pf.photo.image).crop((int(c[0] - r), int(c[1] - r * 1.15), int(c[0] + r),
                                                 int(c[1] + r * 0.85))).resize((height, height), Image.BICUBIC)
    return np.concatenate([np.asarray(crop)[..., :3], views], 1)


def _caption(row: np.ndarray, pid: str, m: dict) -> np.ndarray:
    """The row with ``id: style, hair IoU, head IoU`` written over its top-left corner."""
    img = Image.fromarray(np.ascontiguousarray(row[..., :3]))
    text = f"{pid}: {m.get('style') or 'bald'}  hair {m.get('hair_iou', 0):.2f}  head {m.get('head_iou', 0):.2f}"
    d = ImageDraw.Draw(img)
    d.rectangle([0, 0, 6 * len(text) + 6, 12], fill=(0, 0, 0))
    d.text((3, 1), text, fill=(255, 255, 255))
    return np.asarray(img)


def markdown(table: dict) -> str:
    """The per-photo table for the README."""
    lines = ["| photo | style | hair IoU | head IoU | CIEDE2000 (lit) | CIEDE2000 (albedo) | search CPU s |",
             "|---|---|---|---|---|---|---|"]
    for pid, m in table.items():
        if "error" in m:
            lines.append(f"| `{pid}` | {m['error']} | | | | | |")
            continue
        lines.append(f"| `{pid}` | {m['style'] or 'bald'} | {m['hair_iou']:.3f} | {m['head_iou']:.3f} | "
                     f"{m.get('delta_e', '-')} | {m.get('delta_e_albedo', '-')} | {m['hair_stage_cpu_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devset", type=Path, default=Path("out/devset"))
    ap.add_argument("--cache", type=Path, default=Path("out/hair_cache"))
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--wait", action="store_true", help="measure only photos already fitted, write nothing else")
    ap.add_argument("--redo", action="store_true", help="measure again photos already measured")
    ap.add_argument("--reverse", action="store_true", help="last photo first (a second worker with --wait)")
    ap.add_argument("--assemble", action="store_true", help="write the table and sheet from the photos measured so far")
    a = ap.parse_args()
    torch.set_num_threads(2)
    rows, table = [], {}
    work = a.cache / "hair_rows"  # per-photo results, so photos can be measured as their fits arrive
    work.mkdir(parents=True, exist_ok=True)
    todo = photos(a.devset)
    for pid, path in (todo[::-1] if a.reverse else todo):
        if a.only and pid not in a.only:
            continue
        done_json, done_png = work / f"{pid}.json", work / f"{pid}.png"
        if done_json.exists() and not a.redo:
            table[pid] = json.loads(done_json.read_text())
            if done_png.exists():
                rows.append(_caption(np.asarray(Image.open(done_png)), pid, table[pid]))
            continue
        if (a.wait or a.assemble) and not (a.cache / f"{pid}.pkl").exists():
            if a.assemble:
                table[pid] = {"error": "not measured: no cached fit (refused by create, or not fitted yet)"}
            continue
        if a.assemble:
            table[pid] = {"error": "not measured: fitted, not yet measured"}
            continue
        try:
            pf = cached_fit(pid, path, a.cache)
        except AvatarError as e:  # create refuses the photo as well
            table[pid] = {"error": str(e)}
            done_json.write_text(json.dumps(table[pid]))
            print(pid, "error:", e, flush=True)
            continue
        avatar, exposure = bald_avatar(pf)
        t, c = time.perf_counter(), time.process_time()
        avatar = hair_stage(pf, avatar, exposure)
        seconds, cpu = time.perf_counter() - t, time.process_time() - c
        m = metrics(pf, avatar, exposure)
        m["search"] = (avatar.meta.get("hair") or {}).get("photo") or avatar.meta.get("hair_photo")
        m["hair_stage_s_under_load"] = round(seconds, 3)
        m["hair_stage_cpu_s"] = round(cpu, 3)
        table[pid] = m
        print(pid, m["style"], m["hair_iou"], m["head_iou"], m.get("delta_e"), round(seconds, 2), flush=True)
        row = sheet_row(pf, avatar)
        Image.fromarray(row).save(done_png)
        done_json.write_text(json.dumps(m))
        rows.append(_caption(row, pid, m))
    if a.wait:
        return
    vals = lambda k: [r[k] for r in table.values() if r.get(k) is not None]  # noqa: E731
    summary_n = sum("error" not in r for r in table.values())
    summary = {"photos": summary_n, "not_measured": {k: r["error"] for k, r in table.items() if "error" in r},
               "median_hair_iou": float(np.median(vals("hair_iou"))),
               "median_head_iou": float(np.median(vals("head_iou"))),
               "median_delta_e": float(np.median(vals("delta_e"))) if vals("delta_e") else None,
               "median_delta_e_albedo": float(np.median(vals("delta_e_albedo"))) if vals("delta_e_albedo") else None,
               "median_hair_stage_s_under_load": float(np.median(vals("hair_stage_s_under_load"))),
               "median_hair_stage_cpu_s": float(np.median(vals("hair_stage_cpu_s"))),
               "max_hair_stage_cpu_s": float(np.max(vals("hair_stage_cpu_s"))),
               "fit_options": "benchmarks/_devset_fits.py FIT_OPTIONS (photometric stage: 30 steps at 128 px)"}
    print(json.dumps(summary, indent=1))
    if a.only:
        return
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "hair_devset.json").write_text(json.dumps({"summary": summary, "photos": table}, indent=1))
    (a.out / "hair_devset.md").write_text(markdown(table))
    half = (len(rows) + 1) // 2
    pad = [np.zeros_like(rows[0])] * (2 * half - len(rows))
    grid = np.concatenate([np.concatenate(rows[:half], 0), np.concatenate(rows[half:] + pad, 0)], 1)
    Image.fromarray(grid).save(a.out / "hair_devset.png", optimize=True)


if __name__ == "__main__":
    main()

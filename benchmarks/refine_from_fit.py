"""Refinement from the fit against the other starts: the synthetic benchmark and the development set.

``synthetic``: one case of the fidelity benchmark (identity i, neutral, one light) through the
fit, infer and the three refinements (from the fit's inversion, from R, from G's mean latent):
geometry, albedo and identity, at the step counts given (the CPU budget decides them; say which
were used); ``summary`` merges the cases.

``devset``: each real photo of ``out/devset`` fitted once, then refined from R and from the
fit; a contact sheet photo | fit | refine from R | refine from fit (frontal renders under the
benchmark's soft light) and a JSON with, per head, whether the refinement diverged and three
identity similarities (dlib cosines to the photo's embedding):

* ``in_loss``: 1 - the refinement's own identity term at its best step (the render blended
  into the photo, in the photo's view and fitted light: what the optimisation saw);
* ``frontal``: a frontal render under the soft light (the fidelity benchmark's);
* ``held_out``: the mean over renders the loss never saw: yaw -35 and +35 degrees under the
  ``side`` and ``top`` lights. No second recognizer with weights is installable here (the
  PyPI face-recognition packages download their networks at run time), so this is dlib again,
  on views and lights the optimisation did not see.

    for i in 0 1 2 3; do python benchmarks/refine_from_fit.py synthetic --identity $i -o out/rf_syn & done; wait
    python benchmarks/refine_from_fit.py summary -o out/rf_syn
    python benchmarks/refine_from_fit.py devset --only astronaut -o out/rf_dev   # one process per photo
    python benchmarks/refine_from_fit.py sheet -o out/rf_dev                    # -> benchmarks/results/refine_devset.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from avatarsdk.refine import RefineConfig


def _config(args):
    return RefineConfig(steps=args.steps, invert_steps=args.invert_steps, geometry=args.geometry,
                        schedule=((128, 0.5), (224, 1.0)) if args.steps >= 20 else ((128, 1.0),))


def synthetic(args) -> int:
    """One synthetic case (identity ``--identity``, neutral, one light) through every method: a JSON record.

    The case is the fidelity benchmark's (same seed derivation and yaw as
    :func:`avatarsdk.bench.fidelity.run`, neutral expression), so the cases of
    several processes (one identity each, to use the cores of a shared machine)
    add up to the neutral cases of ``bench fidelity --n N --seed S`` under that light.
    """
    from avatarsdk.bench.fidelity import (albedo_l1, geometry_error, identity_case, identity_similarity, make_case,
                                          photo_embedding)
    from avatarsdk.bench.methods import benchmark_methods
    from avatarsdk.files import atomic_write_bytes

    methods = benchmark_methods(refine_options=_config(args))
    i = args.identity
    case_seed, yaw = identity_case(args.seed, i)  # as fidelity.run
    case = make_case(case_seed, light=args.light, yaw_deg=yaw, size=args.size)
    emb = photo_embedding(case.photo)
    record = {"identity": i, "seed": args.seed, "light": args.light, "yaw_deg": round(yaw, 2), "size": args.size,
              "refine_steps": args.steps, "invert_steps": args.invert_steps, "methods": {}}
    for name in args.methods.split(","):
        t0 = time.perf_counter()
        rec = methods[name](case.photo)
        seconds = time.perf_counter() - t0
        row = {"geom_mm": geometry_error(case.vertices_neutral, rec.vertices), "albedo_l1": albedo_l1(case.albedo,
                                                                                                        rec.albedo),
               "identity_cos": identity_similarity(emb, rec), "seconds": round(seconds, 1)}
        row["held_out_cos"] = identities(emb, rec.vertices, _texture(rec))["held_out"]
        record["methods"][name] = row
        print(name, json.dumps(row), flush=True)
    atomic_write_bytes(Path(args.output) / f"case_{args.seed}_{i:03d}_{args.light}.json",
                       json.dumps(record, indent=1).encode())
    return 0


def _texture(rec) -> np.ndarray:
    from PIL import Image

    a = np.asarray(rec.albedo)[..., :3]
    if a.shape[0] < 64:  # the mean face's flat colour: upsample (nearest) so the renderer samples it
        a = np.asarray(Image.fromarray(a).resize((64, 64), Image.NEAREST))
    return a


def summarise(args) -> int:
    """Merge the case records of :func:`synthetic` into a markdown table (means over the cases)."""
    from avatarsdk.files import atomic_write_bytes

    recs = [json.loads(p.read_text()) for p in sorted(Path(args.output).glob("case_*.json"))]
    for log in sorted(Path(args.output).glob("log*.txt")) if args.logs else ():
        # A case still running (or stopped) has its finished methods in its log: "name {json}" lines.
        i = int(log.stem[3:])
        if any(r["identity"] == i for r in recs):
            continue
        rows = dict(line.split(" ", 1) for line in log.read_text().splitlines() if line.startswith("ours_"))
        if rows:
            recs.append({"identity": i, "seed": args.seed, "light": args.light, "size": args.size,
                         "refine_steps": args.steps, "invert_steps": args.invert_steps, "partial": True,
                         "methods": {k: json.loads(v) for k, v in rows.items()}})
    names = list(dict.fromkeys(n for r in recs for n in r["methods"]))
    lines = [f"{len(recs)} synthetic cases (neutral, light {', '.join(sorted({r['light'] for r in recs}))}, "
             f"identities {sorted(r['identity'] for r in recs)}, seed {sorted({r['seed'] for r in recs})}, "
             f"{recs[0]['size']} px); refinement {recs[0]['refine_steps']} steps, inversion of the fit "
             f"{recs[0]['invert_steps']} steps", "",
             "| method | cases | geom mm | albedo L1 | identity cos (frontal) | identity cos (held-out views, lights) "
             "| s / case |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    summary = {}
    for n in names:
        rows = [r["methods"][n] for r in recs if n in r["methods"]]
        m = {k: float(np.mean([x[k] for x in rows])) for k in ("geom_mm", "albedo_l1", "identity_cos",
                                                                 "held_out_cos", "seconds")}
        summary[n] = m | {"cases": len(rows)}
        lines.append(f"| {n} | {len(rows)} | {m['geom_mm']:.3f} | {m['albedo_l1']:.4f} | {m['identity_cos']:.3f} | "
                     f"{m['held_out_cos']:.3f} | {m['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    out = Path(args.output)
    atomic_write_bytes(out / "summary.md", text.encode())
    atomic_write_bytes(out / "summary.json", json.dumps({"summary": summary, "cases": recs}, indent=1).encode())
    print(text)
    return 0


def _render(vertices, skin_srgb, yaw_deg: float = 0.0, light: str = "soft", size: int = 384):
    """(image [size, size, 3] uint8, [478, 2] landmarks) of a head turned by ``yaw_deg`` about the look-at point."""
    from avatarsdk.colour import linear_to_srgb
    from avatarsdk.materials import default_textures
    from avatarsdk.rigs.mediapipe_map import load_correspondence, points_on_mesh
    from avatarsdk.scene import LOOK_AT, light_sh, portrait_camera, render_photo

    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    v = (np.asarray(vertices, np.float64) - LOOK_AT) @ rot.T + LOOK_AT
    cam = portrait_camera(size)
    textures = {"skin": np.asarray(skin_srgb)[..., :3], **default_textures()}
    lin, _ = render_photo(v.astype(np.float32), textures, cam, light_sh(light, cam.rotation),
                          background=np.full((size, size, 3), 0.2, np.float32), supersample=1)
    img = (np.asarray(linear_to_srgb(torch.from_numpy(lin))) * 255 + 0.5).astype(np.uint8)
    pts = np.zeros((478, 2))
    pts[:468] = cam.project(points_on_mesh(v, load_correspondence()))
    return img, pts


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


HELD_OUT = ((-35.0, "side"), (35.0, "side"), (-35.0, "top"), (35.0, "top"))


def identities(photo_emb, vertices, skin_srgb) -> dict:
    """Frontal (soft light) and held-out (turned, other lights) dlib cosines of a head to a photo embedding."""
    from avatarsdk.nn.identity import embed_photo

    img, pts = _render(vertices, skin_srgb)
    frontal = _cos(photo_emb, embed_photo(img, pts))
    held = [_cos(photo_emb, embed_photo(*_render(vertices, skin_srgb, yaw, light))) for yaw, light in HELD_OUT]
    return {"frontal": round(frontal, 4), "held_out": round(float(np.mean(held)), 4)}


def devset(args) -> int:
    from PIL import Image

    from avatarsdk import pipeline
    from avatarsdk.colour import linear_to_srgb
    from avatarsdk.files import atomic_write_bytes, png_bytes
    from avatarsdk.nn.identity import embed_photo

    refine = _config(args)
    folder = Path(args.devset)
    manifest = json.loads((folder / "manifest.json").read_text())
    ids = args.only.split(",") if args.only else [p["id"] for p in manifest["photos"]]
    photos = {p["id"]: p for p in manifest["photos"]}
    out = Path(args.output)
    report = {"refine_steps": args.steps, "invert_steps": args.invert_steps, "texture_size": args.texture_size,
              "heads": {}}
    for pid in ids:
        t0 = time.perf_counter()
        pf = pipeline.fit_stage(folder / photos[pid]["file"])
        skin, exposure = pipeline.albedo_stage(pf, texture_size=args.texture_size)
        emb = embed_photo(pf.photo, pf.landmarks)
        fit_v = pf.model.morph(pf.fit.identity)
        head = {"fit": identities(emb, fit_v, skin)}
        if args.fit_only:  # the fit's identities only, merged into a record written earlier
            path = out / f"head_{pid}.json"
            old = json.loads(path.read_text())[pid]
            old["fit"] = head["fit"]
            atomic_write_bytes(path, json.dumps({pid: old} | {k: v for k, v in report.items() if k != "heads"},
                                                indent=1).encode())
            print(pid, json.dumps(head["fit"]), flush=True)
            continue
        renders = [_render(fit_v, skin)[0]]
        for init in ("regressor", "fit"):
            r, timings = pipeline.refine_stage(pf, init=init, refine_options=refine,
                                               exposure=exposure, fit_albedo=skin)
            c = pipeline.check_refinement(pf, r, skin, texture_size=args.texture_size)
            srgb = (linear_to_srgb(torch.as_tensor(c.albedo)) * 255 + 0.5).to(torch.uint8).numpy()
            head[f"refine_{init}"] = {**identities(emb, c.vertices, srgb),
                                      "in_loss": round(1.0 - r.final["identity"], 4),
                                      "in_loss_start": round(1.0 - r.initial["identity"], 4), "diverged": c.diverged,
                                      "face_albedo": c.statistics, "start": r.start, "steps": r.steps,
                                      "timings": timings}
            renders.append(_render(c.vertices, srgb)[0])
        head["seconds"] = round(time.perf_counter() - t0, 1)
        report["heads"][pid] = head
        print(pid, json.dumps({k: v for k, v in head.items() if k in ("fit", "seconds")}),
              {i: {k: head[f"refine_{i}"][k] for k in ("frontal", "held_out", "in_loss", "diverged")}
               for i in ("regressor", "fit")},
              flush=True)
        h = renders[0].shape[0]
        ph = Image.fromarray(np.asarray(pf.photo.image))
        ph = ph.crop(tuple(int(round(x)) for x in _square(pf.landmarks.box, ph.size))).resize((h, h), Image.LANCZOS)
        row = np.concatenate([np.asarray(ph)[..., :3], *renders], 1)
        atomic_write_bytes(out / f"row_{pid}.png", png_bytes(row))
        atomic_write_bytes(out / f"head_{pid}.json", json.dumps({pid: head} | {k: v for k, v in report.items()
                                                                                if k != "heads"}, indent=1).encode())
    return 0


def sheet(args) -> int:
    """The devset rows (``row_<id>.png``) into one contact sheet, their records into ``refine_devset.json``."""
    from PIL import Image

    from avatarsdk.files import atomic_write_bytes

    out = Path(args.output)
    ids = [p.stem[4:] for p in sorted(out.glob("row_*.png"))]
    rows = [np.asarray(Image.open(out / f"row_{i}.png").convert("RGB")) for i in ids]
    img = Image.fromarray(np.concatenate(rows, 0))
    img = img.resize((img.width // 2, img.height // 2), Image.LANCZOS)
    Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
    img.save(args.sheet, optimize=True)
    heads = {}
    for i in ids:
        heads |= json.loads((out / f"head_{i}.json").read_text())
    atomic_write_bytes(out / "refine_devset.json", json.dumps(heads, indent=1).encode())
    print(f"wrote {args.sheet} (rows: {', '.join(ids)}; columns: photo, fit, refine from R, refine from the fit)")
    return 0


def _square(box, size):
    """A square around a face box, 1.8x its larger side (clipped to the photo where it must)."""
    x0, y0, x1, y1 = box
    side = 1.8 * max(x1 - x0, y1 - y0)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = min(side, *size)
    left = min(max(cx - side / 2, 0), size[0] - side)
    top = min(max(cy - side / 2, 0), size[1] - side)
    return left, top, left + side, top + side


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("synthetic", "devset"):
        p = sub.add_parser(name)
        p.add_argument("--steps", type=int, default=100, help="refinement steps")
        p.add_argument("--invert-steps", type=int, default=100, help="steps of the fit's inversion into G")
        p.add_argument("--geometry", type=float, default=RefineConfig.geometry,
                       help="weight of the refinement's pull toward the fit's face (refine from the fit)")
        p.add_argument("-o", "--output", default=f"out/refine_fit_{name}")
    s = sub.choices["synthetic"]
    s.add_argument("--identity", type=int, required=True, help="identity index i of the benchmark (0..n-1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=512)
    s.add_argument("--light", default="soft")
    s.add_argument("--methods", default="ours_fit,ours_infer,ours_refine_fit,ours_refine,ours_refine_mean")
    d = sub.choices["devset"]
    d.add_argument("--devset", default="out/devset")
    d.add_argument("--only", default="", help="comma-separated photo ids (default: all)")
    d.add_argument("--texture-size", type=int, default=512)
    d.add_argument("--fit-only", action="store_true", help="only the fit's identity similarities, merged into "
                   "the head records already in -o")
    m = sub.add_parser("summary")
    m.add_argument("-o", "--output", default="out/refine_fit_synthetic")
    m.add_argument("--logs", action="store_true", help="also read the finished methods of unfinished cases from "
                   "the logs log<i>.txt (the settings below describe those runs)")
    for k, v in (("--seed", 0), ("--size", 512), ("--steps", 100), ("--invert-steps", 100)):
        m.add_argument(k, type=int, default=v)
    m.add_argument("--light", default="soft")
    c = sub.add_parser("sheet")
    c.add_argument("-o", "--output", default="out/refine_fit_devset")
    c.add_argument("--sheet", default="benchmarks/results/refine_devset.png")
    args = ap.parse_args(argv)
    return {"synthetic": synthetic, "devset": devset, "summary": summarise, "sheet": sheet}[args.what](args)


if __name__ == "__main__":
    raise SystemExit(main())

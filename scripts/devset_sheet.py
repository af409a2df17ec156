"""Contact sheet of the development set: every photo through ``create`` (fit mode, default parser).

    python scripts/fetch_devset.py                      # the photos, out/devset/
    python scripts/devset_sheet.py --runs out/devset_runs/now
    python scripts/devset_sheet.py --runs out/devset_runs/now --only astronaut kpa_grin --force
    python scripts/devset_sheet.py --runs out/devset_runs/now --sheet-only \\
        --small benchmarks/results/devset_sheet.png  # also a downscaled copy (< 1.5 MB)

For each photo of ``out/devset/manifest.json`` the script runs :func:`avatarsdk.pipeline.create`
(mode "fit", the default parser) and keeps, under ``RUNS/ID/``: ``skin.png`` (the skin albedo
texture the avatar ships), ``front.png`` (the avatar without hair, front and three-quarter,
rendered by :func:`avatarsdk.preview.render_views`), ``parse.png`` (the photo's face parse as
``create`` saw it, hands tinted magenta) and ``fit.json`` (``avatar.meta``: timings, iris colour).
A photo already done is skipped unless ``--force``; a photo that ``create`` refuses gets
``RUNS/ID/refused.txt`` (the error) and a row saying so on the sheet.

``--fit-cache DIR`` memoises ``create``'s fit stage (:func:`avatarsdk.pipeline.fit_stage`: detect,
parse, fit; most of its time) on disk, keyed by the photo's bytes and the source of the modules that
stage runs, so that a change to the unwrap, fill or iris code re-runs only what follows the fit.
Everything after the fit is ``create`` as shipped.

The sheet (``RUNS/sheet.png``) has one row per photo: the photo around the face | the parse
overlay | the avatar front and three-quarter | the skin texture | a swatch of the iris colour
read from the photo (fit.json "iris") next to the photo's own eye, with the id and the create time.
The bald render shows the skin the way the texture is: hair in the photo must not be in it.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from avatarsdk.detect import detect_upright
from avatarsdk.errors import AvatarError
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.exporters.gltf_read import load_glb
from avatarsdk.files import atomic_write_bytes, dump_tree, load_tree
from avatarsdk.parse import overlay, parse_face
from avatarsdk.photo import load_photo
import avatarsdk.pipeline
from avatarsdk import albedo, detect, fit, hands, parse, photo as photo_module
from avatarsdk.pipeline import PhotoFit, create
from avatarsdk.rigs import load_ict
from avatarsdk.preview import render_views

ROOT = Path(__file__).resolve().parents[1]
VIEWS = ((0.0, 0.0), (35.0, 0.0))
TILE = 256  # pixel height of a row
HAND_TINT = np.array([255, 0, 255], np.float32)
# mediapipe face-mesh iris landmarks (refined): right eye 468-472, left eye 473-477 (centre first)
IRIS = (468, 473)


def _source_digest() -> bytes:
    """sha256 of the source the fit stage runs (not the unwrap or the iris), read once at start-up.

    Read at start-up, while it matches the code this process imported: ``inspect`` reads
    the files as they are on disk, which an edit during a long run would change under it.
    """
    h = hashlib.sha256()
    for part in (fit, parse, hands, detect, photo_module, avatarsdk.pipeline.fit_stage, albedo.occlusion_free):
        h.update(inspect.getsource(part).encode())
    return h.digest()


def memoise_fit_stage(cache: Path) -> None:
    """Make :func:`avatarsdk.pipeline.create` reuse fit stages stored in ``cache`` (see the module doc)."""
    real = avatarsdk.pipeline.fit_stage
    code = _source_digest()

    def fit_stage(photo, **kw) -> PhotoFit:
        key = cache / f"{hashlib.sha256(code + Path(photo).read_bytes()).hexdigest()[:24]}.pt"
        if key.exists():
            pf = load_tree(key)
            return PhotoFit(**(pf | {"model": load_ict(kw.get("ict_dir"))}))
        pf = real(photo, **kw)
        cache.mkdir(parents=True, exist_ok=True)
        fields = {f: getattr(pf, f) for f in PhotoFit.__dataclass_fields__ if f != "model"}
        dump_tree(key, fields)
        return pf

    avatarsdk.pipeline.fit_stage = fit_stage


def _png(img: np.ndarray | Image.Image) -> bytes:
    import io  # local: only for in-memory PNG encoding

    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _face_square(box, h: int, w: int, scale: float = 2.2) -> tuple[int, int, int, int]:
    """A square of ``scale`` face sizes around the face box, shifted to stay inside the photo."""
    x0, y0, x1, y1 = box
    side = min(scale * max(x1 - x0, y1 - y0), h, w)
    cx = min(max((x0 + x1) / 2, side / 2), w - side / 2)
    cy = min(max((y0 + y1) / 2 - 0.1 * side, side / 2), h - side / 2)
    return tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))


def run_one(path: Path, dest: Path, texture_size: int) -> dict:
    """``create`` one photo and write its pieces to ``dest``; return a summary."""
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    avatar = create(path, mode="fit", texture_size=texture_size)
    seconds = time.perf_counter() - t0
    # The same detection and parse create made (both deterministic), for the overlay.
    photo, lm, _ = detect_upright(load_photo(path))
    parsing = parse_face(photo, lm)
    tinted = overlay(photo, parsing).astype(np.float32)
    if parsing.hands is not None:
        tinted[parsing.hands] = 0.45 * tinted[parsing.hands] + 0.55 * HAND_TINT
    box = _face_square(lm.box, *photo.image.shape[:2])
    crop = lambda a: Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)).crop(box)  # noqa: E731
    iris_px = [lm.points[i, :2].round(1).tolist() for i in IRIS]
    atomic_write_bytes(dest / "photo.png", _png(crop(photo.image.astype(np.float32))))
    atomic_write_bytes(dest / "parse.png", _png(crop(tinted)))
    atomic_write_bytes(dest / "skin.png", _png(avatar.textures["skin"]))
    glb = to_glb(avatar, blendshapes="none")
    atomic_write_bytes(dest / "front.png", _png(render_views(load_glb(glb), views=VIEWS, size=TILE)))
    meta = dict(avatar.meta, sheet={"create_s": round(seconds, 1), "crop": box, "iris_px": iris_px,
                                    "iris_radius_px": float(np.linalg.norm(lm.points[469, :2] - lm.points[468, :2]))})
    atomic_write_bytes(dest / "fit.json", (json.dumps(meta, indent=1) + "\n").encode())
    return meta


def _eye_patch(photo: Path, meta: dict, size: int) -> Image.Image:
    """The photo's right eye (the subject's), magnified, for comparing with the swatch."""
    im = Image.open(photo).convert("RGB")
    x0, y0, _, _ = meta["sheet"]["crop"]
    cx, cy = meta["sheet"]["iris_px"][0]
    r = max(4.0, 2.5 * meta["sheet"]["iris_radius_px"])
    return im.crop((int(cx - r), int(cy - r), int(cx + r), int(cy + r))).resize((size, size), Image.Resampling.LANCZOS)


def sheet(runs: Path, devset: Path, ids: list[str], failures: dict[str, str]) -> Image.Image:
    """Compose the sheet: one row per photo (see the module doc)."""
    h = TILE
    cap = 18
    width = 2 * h + 2 * h + h + h // 2
    img = Image.new("RGB", (width, len(ids) * (h + cap)), (34, 34, 34))
    d = ImageDraw.Draw(img)
    files = {e["id"]: e["file"] for e in json.loads((devset / "manifest.json").read_text())["photos"]}
    for row, pid in enumerate(ids):
        y = row * (h + cap)
        run = runs / pid
        if pid in failures:
            message = failures[pid]
            for folder in {str(devset), str(devset.resolve())}:  # the photo's name, not where it lies
                message = message.replace(folder.rstrip("/") + "/", "")
            d.text((4, y + 2), f"{pid}: create refused: {message}", fill=(255, 140, 140))
            continue
        meta = json.loads((run / "fit.json").read_text())
        iris = meta.get("iris", {})
        swatch = tuple(int(round(255 * float(np.clip(c, 0, 1)))) for c in iris.get("colour", (0, 0, 0)))  # sRGB
        t = meta.get("timings_s", {})
        d.text((4, y + 2), f"{pid}   create {meta['sheet']['create_s']} s (parse {t.get('parse')} s)   iris "
                           f"{iris.get('source')} {iris.get('pixels')} px sRGB {swatch}", fill=(230, 230, 230))
        x = 0
        for name, w in (("photo.png", h), ("parse.png", h), ("front.png", 2 * h), ("skin.png", h)):
            im = Image.open(run / name).convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
            img.paste(im, (x, y + cap))
            x += w
        half = h // 2
        img.paste(Image.new("RGB", (half, half), swatch), (x, y + cap))
        img.paste(_eye_patch(devset / files[pid], meta, half), (x, y + cap + half))
    return img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devset", type=Path, default=ROOT / "out" / "devset", help="fetch_devset.py's folder")
    ap.add_argument("--runs", type=Path, default=ROOT / "out" / "devset_runs" / "now", help="output folder")
    ap.add_argument("--only", nargs="+", metavar="ID", help="only these photo ids")
    ap.add_argument("--force", action="store_true", help="run create again on photos already done")
    ap.add_argument("--sheet-only", action="store_true", help="compose the sheet from what RUNS holds")
    ap.add_argument("--texture-size", type=int, default=1024, help="skin texture size for create")
    ap.add_argument("--fit-cache", type=Path, help="memoise create's fit stage here (see the module doc)")
    ap.add_argument("--small", type=Path, help="also write a downscaled sheet here (PNG, < 1.5 MB)")
    a = ap.parse_args(argv)
    manifest = json.loads((a.devset / "manifest.json").read_text())
    ids = [e["id"] for e in manifest["photos"] if not a.only or e["id"] in a.only]
    files = {e["id"]: e["file"] for e in manifest["photos"]}
    if a.fit_cache:
        memoise_fit_stage(a.fit_cache)
    if not a.sheet_only:
        for pid in ids:
            run = a.runs / pid
            if ((run / "fit.json").exists() or (run / "refused.txt").exists()) and not a.force:
                continue
            run.mkdir(parents=True, exist_ok=True)
            (run / "refused.txt").unlink(missing_ok=True)
            try:
                meta = run_one(a.devset / files[pid], run, a.texture_size)
                print(f"{pid}: create {meta['sheet']['create_s']} s, iris {meta['iris'].get('source')}", flush=True)
            except AvatarError as exc:
                (run / "fit.json").unlink(missing_ok=True)
                atomic_write_bytes(run / "refused.txt", f"{type(exc).__name__}: {exc}\n".encode())
                print(f"{pid}: {type(exc).__name__}: {exc}", flush=True)
    failures = {p.parent.name: p.read_text().strip() for p in a.runs.glob("*/refused.txt")}
    all_ids = [e["id"] for e in manifest["photos"]]
    done = [i for i in all_ids if (a.runs / i / "fit.json").exists() or i in failures]
    img = sheet(a.runs, a.devset, done, failures)
    atomic_write_bytes(a.runs / "sheet.png", _png(img))
    print(f"wrote {a.runs / 'sheet.png'}: {len(done)} rows", file=sys.stderr)
    if a.small:
        small = img.resize((img.width * 3 // 5, img.height * 3 // 5), Image.Resampling.LANCZOS)
        small = small.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        atomic_write_bytes(a.small, _png(small))
        print(f"wrote {a.small}: {a.small.stat().st_size / 1e6:.2f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""scripts/devset_sheet.py: the contact sheet composed from run folders (no create run here)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from _scripts import load_script


def _run_folder(run, colour):
    run.mkdir(parents=True)
    for name, size in (("photo.png", (64, 64)), ("parse.png", (64, 64)), ("front.png", (128, 64)),
                       ("skin.png", (64, 64))):
        Image.new("RGB", size, (30, 60, 90)).save(run / name)
    meta = {"iris": {"colour": colour, "source": "photo", "pixels": 40}, "timings_s": {"parse": 0.3},
            "sheet": {"create_s": 12.0, "crop": [0, 0, 64, 64], "iris_px": [[20.0, 20.0]], "iris_radius_px": 4.0}}
    (run / "fit.json").write_text(json.dumps(meta))


def test_sheet_rows_and_swatch(tmp_path):
    mod = load_script("devset_sheet")
    devset = tmp_path / "devset"
    devset.mkdir()
    Image.new("RGB", (80, 80), (200, 180, 160)).save(devset / "a.png")
    Image.new("RGB", (80, 80), (200, 180, 160)).save(devset / "b.png")
    manifest = {"photos": [{"id": "a", "file": "a.png"}, {"id": "b", "file": "b.png"}]}
    (devset / "manifest.json").write_text(json.dumps(manifest))
    runs = tmp_path / "runs"
    _run_folder(runs / "a", [0.2, 0.4, 0.6])
    img = np.asarray(mod.sheet(runs, devset, ["a", "b"], {"b": "PhotoError: no face"}))
    h, cap = mod.TILE, 18
    assert img.shape == (2 * (h + cap), 5 * h + h // 2, 3)
    # The swatch is the sRGB iris colour as fit.json gives it (no second transfer curve).
    assert tuple(img[cap + 5, 5 * h + 5]) == (51, 102, 153)
    assert (img[cap + 5, 5] == (30, 60, 90)).all()  # the photo tile
    assert (img[h + cap + cap + 5:, :h] == 34).all()  # a refused photo: caption only


def test_face_square_stays_inside():
    mod = load_script("devset_sheet")
    x0, y0, x1, y1 = mod._face_square((0, 0, 50, 50), 200, 300)  # face at the corner
    assert x0 >= 0 and y0 >= 0 and x1 <= 300 and y1 <= 200 and x1 - x0 == y1 - y0 == 110
    assert mod._face_square((0, 0, 500, 500), 200, 300) == (100, 0, 300, 200)  # larger than the photo

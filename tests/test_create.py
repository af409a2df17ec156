"""Photo -> avatar end to end (short fit schedule) and the CLI's failure behaviour."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import EXAMPLE
from avatarsdk.cli import app
from avatarsdk.errors import NoFaceFound
from avatarsdk.fit import FitOptions
from avatarsdk.pipeline import create
from avatarsdk.rigs.model import ARKIT_NAMES

QUICK = FitOptions(rigid_steps=30, landmark_steps=60, photo_steps=((96, 15),))


@pytest.fixture(scope="module")
def avatar():
    return create(EXAMPLE, texture_size=256, fit_options=QUICK)


def test_create_from_the_example(avatar):
    assert avatar.vertices.shape == (26719, 3) and np.isfinite(avatar.vertices).all()
    assert avatar.albedo.shape == (256, 256, 3) and avatar.albedo.dtype == np.uint8
    assert avatar.rig.blendshape_names == ARKIT_NAMES
    fit = avatar.meta["fit"]
    assert len(fit["identity"]) == 100 and fit["faces_detected"] == 1
    assert fit["camera"]["width"] == 512
    assert set(avatar.meta["timings_s"]) >= {"detect", "parse", "fit", "albedo", "rig"}
    assert avatar.meta["components"]["parser"] in ("bisenet", "mesh")  # mesh where AVATARSDK_PERMISSIVE=1
    json.dumps(avatar.meta)  # fit.json must serialise


def test_albedo_looks_like_her_skin(avatar):
    """The face chart's cheek texels carry the photo's skin colour, not grey or background."""
    photo = np.asarray(Image.open(EXAMPLE).convert("RGB")).astype(float)
    cheek_photo = photo[125:140, 200:215].reshape(-1, 3).mean(0)  # her right cheek
    tex = avatar.albedo.astype(float)
    s = tex.shape[0]
    face = tex[int(0.30 * s):int(0.45 * s), int(0.15 * s):int(0.30 * s)].reshape(-1, 3).mean(0)
    # Warm skin: red > green > blue, and the hue close to the photo's (de-lighting changes brightness).
    assert face[0] > face[1] > face[2]
    hue = lambda c: c / c.sum()  # noqa: E731
    assert np.abs(hue(face) - hue(cheek_photo)).max() < 0.06


def test_create_no_face(tmp_path):
    blank = np.full((256, 256, 3), 128, np.uint8)
    with pytest.raises(NoFaceFound):
        create(blank, fit_options=QUICK)
    Image.fromarray(blank).save(tmp_path / "blank.png")
    r = CliRunner().invoke(app, ["create", str(tmp_path / "blank.png"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "NoFaceFound" in r.output
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_create_unreadable(tmp_path, content):
    p = tmp_path / "photo.jpg"
    p.write_bytes(content)
    r = CliRunner().invoke(app, ["create", str(p), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "UnreadableImage" in r.output
    assert not (tmp_path / "out").exists()


def test_create_refuses_two_faces_when_asked(tmp_path):
    face = Image.open(EXAMPLE).convert("RGB").crop((100, 0, 400, 300))
    canvas = Image.new("RGB", (600, 300), (200, 200, 200))
    canvas.paste(face, (0, 0))
    canvas.paste(face, (300, 0))
    canvas.save(tmp_path / "two.png")
    r = CliRunner().invoke(app, ["create", str(tmp_path / "two.png"), "-o", str(tmp_path / "out"),
                                 "--refuse-multiple"])
    assert r.exit_code == 2 and "MultipleFaces" in r.output
    assert not (tmp_path / "out").exists()


def test_benchmark_methods_share_one_fit(monkeypatch):
    import avatarsdk.pipeline as P
    from avatarsdk.bench.fidelity import make_case
    from avatarsdk.bench.methods import benchmark_methods

    case = make_case(3, light="side", yaw_deg=20.0, size=384, albedo_size=256, supersample=1)
    calls = []
    real = P.fit_stage
    monkeypatch.setattr(P, "fit_stage", lambda *a, **k: calls.append(k["fit_options"].photometric) or real(*a, **k))
    from avatarsdk.refine import RefineConfig

    methods = benchmark_methods(texture_size=256, fit_options=QUICK,
                                refine_options=RefineConfig(steps=2, schedule=((96, 1.0),), invert_steps=3))
    assert list(methods) == ["mean_face", "landmarks_only_fit", "unwrap_no_delight", "ours_fit", "ours_keeping_expression",
                             "ours_infer", "ours_refine_fit", "ours_refine", "ours_refine_mean"]
    out = {name: method(case.photo) for name, method in methods.items() if name != "ours_infer"}
    assert calls == [False, True]  # the landmarks-only fit, then one full fit shared by all fitted methods
    assert np.isfinite(out["ours_refine"].vertices).all() and out["ours_refine"].albedo.shape == (256, 256, 3)
    assert np.isfinite(out["ours_refine_fit"].vertices).all() and out["ours_refine_fit"].albedo.shape == (256, 256, 3)
    np.testing.assert_array_equal(out["unwrap_no_delight"].vertices, out["ours_fit"].vertices)
    assert np.abs(out["unwrap_no_delight"].albedo.astype(int) - out["ours_fit"].albedo).mean() > 3
    flat = out["mean_face"].albedo
    assert (flat == flat[0, 0]).all() and 20 < int(flat[0, 0].max()) < 250
    assert not np.array_equal(out["mean_face"].vertices, out["ours_fit"].vertices)
    assert not np.array_equal(out["ours_keeping_expression"].vertices, out["ours_fit"].vertices)


def test_sclera_exposure_reads_an_underexposed_photo():
    """The whites of the eyes tell a dim photo from a darker skin; a normal photo is left alone."""
    import torch

    from avatarsdk.albedo import sclera_exposure
    from avatarsdk.bench.fidelity import light_sh, make_case
    from avatarsdk.detect import detect, sclera_pixels
    from avatarsdk.photo import load_photo
    from avatarsdk.fit import exposure_peak

    scales = {}
    for light in ("soft", "dim"):
        case = make_case(11, light=light, yaw_deg=5.0, size=1024, albedo_size=256, supersample=1)
        photo = load_photo(case.photo)
        eyes = sclera_pixels(photo, detect(photo))
        assert all(len(px) >= 40 for px in eyes.values())
        # The soft light, scaled as the fit scales it (unit peak irradiance); the dim photo is
        # given the same light, as a fit that cannot see the exposure would.
        sh = torch.from_numpy(light_sh("soft")).float()
        sh = (sh / exposure_peak(sh)).numpy()
        scales[light] = sclera_exposure(eyes, sh).scale
    assert scales["soft"] == pytest.approx(1.0, abs=0.1)
    assert 0.25 < scales["dim"] < 0.6  # the dim light is ~0.37 of the soft one


def test_photo_exposure_ignores_eyes_behind_glasses():
    """An eye the parse puts behind a lens is no exposure reference: its dim white is not read as a dim photo."""
    import types

    import torch

    from avatarsdk.bench.fidelity import light_sh, make_case
    from avatarsdk.datatypes import FaceParse
    from avatarsdk.detect import detect
    from avatarsdk.fit import exposure_peak
    from avatarsdk.iris import _EYES
    from avatarsdk.photo import load_photo
    from avatarsdk.pipeline import PhotoFit, photo_exposure

    case = make_case(11, light="dim", yaw_deg=5.0, size=1024, albedo_size=256, supersample=1)
    photo = load_photo(case.photo)
    lm = detect(photo)
    sh = torch.from_numpy(light_sh("soft")).float()
    fit = types.SimpleNamespace(light=(sh / exposure_peak(sh)).numpy())
    labels = np.ones(photo.size, np.uint8)
    yy, xx = np.mgrid[0:photo.size[0], 0:photo.size[1]]
    for e in _EYES.values():
        cx, cy = lm.points[e["centre"], :2]
        labels[(xx - cx) ** 2 + (yy - cy) ** 2 <= 40 ** 2] = 6  # eye_g over both eyes
    pf = PhotoFit(photo=photo, model=None, landmarks=lm, region=None, fit=fit, timings={},
                  parsing=FaceParse(labels=np.ones(photo.size, np.uint8), method="bisenet"))
    assert photo_exposure(pf).scale < 0.6  # no glasses: the dim photo is read as dim
    pf = dataclasses.replace(pf, parsing=FaceParse(labels=labels, method="bisenet"))
    exposure = photo_exposure(pf)
    assert exposure.scale == 1.0 and exposure.per_eye == {}


def test_sclera_exposure_gates():
    from avatarsdk.albedo import sclera_exposure

    light = np.zeros((9, 3), np.float32)
    light[0] = 1.0  # unit ambient: shading 1 everywhere
    grey = np.full((200, 3), 90, np.uint8)  # sclera reading ~0.1 linear: a very dark photo
    assert sclera_exposure({"left": grey}, light).scale == pytest.approx(0.3)  # floor
    assert sclera_exposure({"left": grey[:10]}, light).scale == 1.0  # too few pixels
    assert sclera_exposure({"left": grey}, light * 0.3).scale == 1.0  # eye in shadow: not trusted
    white = np.full((200, 3), 255, np.uint8)
    assert sclera_exposure({"left": white, "right": white}, light).scale == 1.0  # never brightens
    assert sclera_exposure({}, light).scale == 1.0


def test_forehead_hair_is_not_baked_in():
    """A dark fringe over the forehead loses its confidence; skin elsewhere keeps it."""
    import torch

    from avatarsdk.albedo import reject_forehead_hair
    from avatarsdk.rigs import load_ict

    model = load_ict()
    size = 128
    albedo = torch.full((size, size, 3), 0.5)
    conf = torch.ones(size, size)
    albedo[8:12, 40:60] = 0.1  # dark band high on the forehead (face chart, above the brows)
    albedo[60:64, 40:60] = 0.1  # equally dark below the brows (e.g. a shadow): kept
    out = reject_forehead_hair(model, albedo, conf)
    assert out[10, 50] == 0 and out[9, 45] == 0
    assert out[62, 50] == 1 and out[30, 20] == 1 and out[10, 110] == 1  # below brows; back-of-head chart
    assert torch.equal(reject_forehead_hair(model, albedo, torch.zeros(size, size)), torch.zeros(size, size))


def test_no_seam_across_the_forehead(avatar):
    """The face chart and the scalp chart read the same colour where they meet on the upper head.

    Before seam levelling the astronaut's texture jumped there by a median 0.027 (p95 0.057) of
    full scale: a lighter band across the upper forehead in every renderer.
    """
    import torch
    from scipy.spatial import cKDTree
    from test_albedo import seam_jump
    from test_paint import _seam_uvs

    from avatarsdk.colour import srgb_to_linear
    from avatarsdk.rigs import load_ict
    from avatarsdk.rigs.model import PARTS

    verts, uv_face, uv_back = _seam_uvs()
    v = load_ict().neutral
    sockets = np.concatenate([np.arange(*PARTS["mouth_socket"]), np.arange(*PARTS["eye_sockets"])])
    main = cKDTree(v[sockets]).query(v[verts])[0] > 0.005
    upper = main & (v[verts][:, 1] > np.percentile(v[:, 1], 90))
    lin = srgb_to_linear(torch.from_numpy(avatar.albedo.copy()).float() / 255)
    jump = seam_jump(lin, (uv_face, uv_back, main, upper))
    assert np.median(jump) < 0.012 and np.percentile(jump, 95) < 0.03, (np.median(jump), np.percentile(jump, 95))


def test_closed_eyelid_is_plain_skin(avatar):
    """The lid skin a blink uncovers carries no stretched lashes or eye white (a grey streaked smudge).

    Measured on the astronaut at 1024 texels: the lid's luminance spread was 0.068 (grey streaks
    and a dark rim), 0.038 after; the cheek's is about 0.02.
    """
    from avatarsdk.albedo import eyelid_mask
    from avatarsdk.rigs import load_ict

    tex = avatar.albedo.astype(float) / 255
    s = tex.shape[0]
    lids = eyelid_mask(load_ict(), s).numpy() > 0.5
    lids[:, int(0.75 * s):] = False  # the face chart's lids only
    lum = tex[lids].mean(-1)
    cheek = tex[int(0.30 * s):int(0.45 * s), int(0.15 * s):int(0.30 * s)].reshape(-1, 3)
    assert lum.std() < 0.05, lum.std()
    assert np.median(lum) > 0.85 * np.median(cheek.mean(-1))  # not a darker smudge either

"""The ICT rig: loading, cache, topology, bases, names, skeleton, skin weights."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from avatarsdk.errors import DataError, InputError
from avatarsdk.rigs import LANDMARKS68, PARTS, load_data, load_ict, locate
from avatarsdk.rigs.ict import ICT_EXPRESSIONS, NUM_VERTICES
from avatarsdk.rigs.model import ARKIT_NAMES, arkit_to_ict
from avatarsdk.datatypes import JOINT_NAMES


@pytest.fixture(scope="module")
def model():
    return load_ict()


def test_locate_finds_shared_data():
    root = locate()
    assert (root / "FaceXModel").is_dir() or any(root.glob("generic_neutral_mesh.obj*"))


def test_missing_dir_is_data_error(tmp_path):
    with pytest.raises(DataError, match="ICT-FaceKit data not found"):
        locate(tmp_path)


def test_pack_loads_without_the_objs(model, tmp_path, monkeypatch):
    """``ict pack``: a float16 copy that a machine without the OBJs loads through the same setting."""
    from avatarsdk.rigs.ict import PACK_NAME, write_pack

    monkeypatch.setenv("AVATARSDK_CACHE_DIR", str(tmp_path / "cache"))
    path = write_pack(tmp_path / "ict" / PACK_NAME, model.data)
    assert path.stat().st_size < 20e6
    assert locate(tmp_path / "ict") == tmp_path / "ict"
    packed = load_data(tmp_path / "ict")
    assert packed.source_sha256 == model.data.source_sha256
    assert packed.identity.dtype == np.float32 and packed.identity.shape == model.data.identity.shape
    assert np.abs(packed.identity - model.data.identity).max() < 2e-5  # float16 of offsets up to ~3 cm
    assert np.abs(packed.expression - model.data.expression).max() < 2e-5
    assert np.array_equal(packed.neutral, model.data.neutral)
    assert np.array_equal(packed.poly_vertices, model.data.poly_vertices)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / PACK_NAME).write_bytes(b"not a zip")
    with pytest.raises(DataError, match="unreadable ICT pack"):
        load_data(tmp_path / "bad")


def test_shapes_and_units(model):
    d = model.data
    assert d.neutral.shape == (NUM_VERTICES, 3) and d.neutral.dtype == np.float32
    assert d.identity.shape == (100, NUM_VERTICES, 3)
    assert d.expression.shape == (53, NUM_VERTICES, 3)
    width = d.neutral[:, 0].max() - d.neutral[:, 0].min()
    assert 0.2 < width < 0.3  # metres: the ICT head is ~25 cm wide
    # Identity modes are PCA modes scaled by their std: decreasing magnitude.
    mags = np.linalg.norm(d.identity, axis=2).mean(1)
    assert mags[0] > mags[10] > mags[99]


def test_cache_round_trip_and_plain_obj(tmp_path, monkeypatch):
    """A folder of plain .obj files parses to the same data as the gzipped one."""
    src = locate()
    src = src / "FaceXModel" if (src / "FaceXModel").is_dir() else src
    plain = tmp_path / "ict"
    plain.mkdir()
    for p in src.glob("*.obj.gz"):
        if p.name.startswith(("generic", "identity")) or p.name[:-7] in ICT_EXPRESSIONS:
            (plain / p.name[:-3]).write_bytes(gzip.decompress(p.read_bytes()))
    monkeypatch.setenv("AVATARSDK_CACHE_DIR", str(tmp_path / "cache"))
    a = load_data(plain)
    assert len(list((tmp_path / "cache").glob("ict-*.npz"))) == 1
    b = load_data(plain)  # from cache
    ref = load_data(src)
    for x in (a, b):
        np.testing.assert_array_equal(x.neutral, ref.neutral)
        np.testing.assert_array_equal(x.identity, ref.identity)
        np.testing.assert_array_equal(x.poly_vertices, ref.poly_vertices)
    # A changed file changes the checksum, so the stale cache is not used.
    shutil.copy(plain / "identity000.obj", plain / "identity001.obj")
    c = load_data(plain)
    assert c.source_sha256 != a.source_sha256
    np.testing.assert_allclose(c.identity[1], c.identity[0])


def test_truncated_obj_is_data_error(tmp_path, monkeypatch):
    src = locate()
    src = src / "FaceXModel" if (src / "FaceXModel").is_dir() else src
    bad = tmp_path / "ict"
    bad.mkdir()
    for p in src.glob("*.obj.gz"):
        (bad / p.name).symlink_to(p)
    text = gzip.decompress((src / "jawOpen.obj.gz").read_bytes())
    (bad / "jawOpen.obj.gz").unlink()
    (bad / "jawOpen.obj.gz").write_bytes(gzip.compress(text[: len(text) // 10]))
    monkeypatch.setenv("AVATARSDK_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="jawOpen"):
        load_data(bad)


def test_topology(model):
    t = model.topology
    assert t.triangles.shape[1] == 3 and t.triangles.max() < NUM_VERTICES
    # 25,836 quads + 548 triangles -> 52,220 triangles.
    assert len(t.triangles) == 2 * 25836 + 548
    assert t.materials == ("skin", "eyes", "teeth", "eye_wet", "eyelashes")
    assert t.corner_uv.shape == t.triangles.shape + (2,)
    assert (t.corner_uv >= 0).all() and (t.corner_uv <= 1).all()
    assert set(t.parts) == set(PARTS) and len(PARTS) == 11
    assert list(t.landmarks68) == list(LANDMARKS68)
    # Outward winding: the normals around the nose tip point forward (+Z).
    v = model.neutral
    tip = int(np.argmax(v[: PARTS["face"][1], 2]))
    tris = t.triangles[(t.triangles == tip).any(1)]
    n = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    assert n[:, 2].sum() > 0


def test_head_uv_charts_do_not_overlap(model):
    """Skin triangles of the unified UV never overlap: the map is a function."""
    t = model.topology
    skin = t.tri_material == t.materials.index("skin")
    uv = t.corner_uv[skin].astype(np.float64)
    area = 0.5 * ((uv[:, 1, 0] - uv[:, 0, 0]) * (uv[:, 2, 1] - uv[:, 0, 1])
                  - (uv[:, 2, 0] - uv[:, 0, 0]) * (uv[:, 1, 1] - uv[:, 0, 1]))
    # One orientation throughout (v points down in glTF, so CCW in 3D -> CW in UV)
    assert (area < 0).mean() > 0.999 or (area > 0).mean() > 0.999
    # Sum of triangle areas equals the area of their union (rasterised), so nothing overlaps.
    import torch

    from avatarsdk.uvmap import rasterize_uv

    n = 1024
    _, mask = rasterize_uv(torch.zeros(1, len(uv), 3, 1), torch.from_numpy(uv), n, extrapolate=0.0)
    assert np.abs(area).sum() == pytest.approx(float(mask.float().mean()), rel=0.02)
    assert np.abs(area).sum() < 0.75**2 + 0.25**2
    ids = np.isfinite(t.head_uv[:, 0])
    assert ids[: PARTS["face"][1]].mean() > 0.95  # a few collapsed nostril/eyelid-rim vertices excepted
    assert not ids[PARTS["gums_tongue"][0]:].any()


def test_arkit_names():
    assert len(ARKIT_NAMES) == 52 == len(set(ARKIT_NAMES))
    used = [p for n in ARKIT_NAMES for p in arkit_to_ict(n)]
    assert sorted(used) == sorted(ICT_EXPRESSIONS)  # every ICT shape used exactly once
    assert sum(len(arkit_to_ict(n)) == 1 for n in ARKIT_NAMES) == 49
    assert arkit_to_ict("browInnerUp") == ("browInnerUp_L", "browInnerUp_R")
    assert arkit_to_ict("eyeBlinkLeft") == ("eyeBlink_L",)
    assert arkit_to_ict("jawLeft") == ("jawLeft",)
    assert arkit_to_ict("tongueOut") == ()
    with pytest.raises(InputError):
        arkit_to_ict("smile")


def test_left_means_avatar_left(model):
    """ARKit/ICT 'Left' is the avatar's own left, which is +X here."""
    k = ARKIT_NAMES.index("eyeBlinkLeft")
    d = model.arkit_blendshapes()[k]
    moved = np.linalg.norm(d, axis=1) > 1e-4
    assert model.neutral[moved, 0].mean() > 0.02


def test_morph(model):
    rng = np.random.default_rng(0)
    ident = rng.normal(size=100)
    expr = np.zeros(53)
    expr[ICT_EXPRESSIONS.index("jawOpen")] = 1.0
    v = model.morph(ident, expr)
    ref = model.neutral + np.einsum("i,ivk->vk", ident, model.identity_basis) + model.expression_basis[26]
    np.testing.assert_allclose(v, ref, atol=1e-5)
    np.testing.assert_array_equal(model.morph(), model.neutral)
    with pytest.raises(InputError):
        model.morph(np.zeros(101))
    with pytest.raises(InputError):
        model.morph(None, np.zeros(52))
    with pytest.raises(InputError):
        model.morph([np.nan])


def test_tongue_out(model):
    shapes = model.arkit_blendshapes()
    d = shapes[ARKIT_NAMES.index("tongueOut")]
    moved = np.nonzero(np.linalg.norm(d, axis=1) > 1e-4)[0]
    a, b = PARTS["gums_tongue"]
    assert len(moved) > 200 and moved.min() >= a and moved.max() < b
    assert d[:, 2].max() > 0.02  # tip comes forward by centimetres
    # The tip passes the front of the lower teeth when combined with jawOpen.
    opened = model.neutral + shapes[ARKIT_NAMES.index("jawOpen")] + d
    t0, t1 = PARTS["teeth"]
    assert opened[a:b, 2].max() > opened[t0:t1, 2].max() + 0.005


def test_skeleton_and_weights(model):
    rng = np.random.default_rng(3)
    for ident in (np.zeros(100), rng.normal(size=100) * 2.5):
        v = model.morph(ident)
        rig = model.rig(v)
        s = rig.skeleton
        assert s.names == JOINT_NAMES and list(s.parents) == [-1, 0, 1, 2, 2, 2]
        p = {n: s.positions[i] for i, n in enumerate(s.names)}
        e0, e1 = PARTS["eyeballs"]
        # Eyes at the eyeball centres, left at +X; jaw behind and below the eyes.
        assert p["eye_L"][0] > 0.02 and p["eye_R"][0] < -0.02
        sclera_l = v[21451:22221]  # M_ScleraLeft's vertex range
        r = np.linalg.norm(sclera_l - p["eye_L"], axis=1)
        lo, med, hi = np.percentile(r, [10, 50, 90])
        assert 0.012 < med < 0.018 and hi - lo < 0.002  # near-sphere of ~15 mm radius
        assert p["jaw"][1] < p["eye_L"][1] and p["jaw"][2] < p["eye_L"][2]
        assert p["root"][1] < p["neck"][1] < p["head"][1]
        w, j = rig.skin_weights, rig.skin_joints
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
        assert (j[w == 0] == 0).all()
        # Eyeballs rigid to their eye joint; lower teeth fully on the jaw; crown on the head.
        assert (j[e0:e1, 0] >= 4).all() and (w[e0:e1, 0] == 1).all()
        chin = LANDMARKS68[8]
        jaw_w = (w[chin] * (j[chin] == 3)).sum()
        assert jaw_w > 0.5
        crown = int(np.argmax(v[:, 1]))
        assert (w[crown] * (j[crown] == 2)).sum() == pytest.approx(1.0)
    assert rig.blendshapes.shape == (52, NUM_VERTICES, 3)
    assert model.rig(v, names="ict").blendshape_names == ICT_EXPRESSIONS
    with pytest.raises(InputError):
        model.rig(v[:100])


def test_eye_look_turns_the_eyeballs(model):
    """ICT's eyeLook shapes move only the lids; ours also turn the eyeballs."""
    v = model.morph(np.random.default_rng(5).standard_normal(100))
    shapes = dict(zip(ARKIT_NAMES, model.arkit_blendshapes(v)))
    e0, e1 = PARTS["eyeballs"]
    left = np.arange(e0, e1)[v[e0:e1, 0] > 0]
    right = np.arange(e0, e1)[v[e0:e1, 0] < 0]
    pupil_l = left[np.argmax(v[left, 2])]
    pupil_r = right[np.argmax(v[right, 2])]
    assert shapes["eyeLookUpLeft"][pupil_l, 1] > 0.004
    assert shapes["eyeLookDownLeft"][pupil_l, 1] < -0.004
    assert shapes["eyeLookInLeft"][pupil_l, 0] < -0.004  # toward the nose (-X for the left eye)
    assert shapes["eyeLookOutLeft"][pupil_l, 0] > 0.004
    assert shapes["eyeLookInRight"][pupil_r, 0] > 0.004
    assert np.abs(shapes["eyeLookUpLeft"][right]).max() == 0
    # A rotation: distances to the eye joint are kept (to first order at weight 1: exactly).
    rig = model.rig(v)
    centre = rig.skeleton.positions[rig.skeleton.names.index("eye_L")]
    before = np.linalg.norm(v[left] - centre, axis=1)
    after = np.linalg.norm(v[left] + shapes["eyeLookOutLeft"][left] - centre, axis=1)
    np.testing.assert_allclose(after, before, atol=1e-6)


def _zip(path, entries):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def test_fetch_extracts_only_the_model_files(tmp_path):
    from avatarsdk.rigs.ict import fetch

    names = ["generic_neutral_mesh"] + [f"identity{i:03d}" for i in range(100)] + list(ICT_EXPRESSIONS)
    entries = {f"ICT-FaceKit-master/FaceXModel/{n}.obj": b"v 0 0 0\n" for n in names}
    entries["ICT-FaceKit-master/FaceXModel/vertex_indices.json"] = b"{}"
    entries["ICT-FaceKit-master/LICENSE"] = b"MIT"
    entries["ICT-FaceKit-master/README.md"] = b"not kept"
    entries["../../escape.obj"] = b"zip slip"
    archive = _zip(tmp_path / "ict.zip", entries)
    dest = fetch(tmp_path / "data" / "ict", url=archive.as_uri())
    assert (dest / "FaceXModel" / "identity099.obj").is_file() and (dest / "LICENSE").is_file()
    assert not (dest / "README.md").exists() and not (tmp_path / "escape.obj").exists()
    assert locate(dest) == dest
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ict"]  # no temp folders left


def test_fetch_failures_are_data_errors(tmp_path):
    from avatarsdk.rigs.ict import fetch

    with pytest.raises(DataError, match="does not hold"):
        fetch(tmp_path / "a", url=_zip(tmp_path / "empty.zip", {"x/README.md": b"hi"}).as_uri())
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a zip"):
        fetch(tmp_path / "b", url=(tmp_path / "bad.zip").as_uri())
    with pytest.raises(DataError, match="could not download"):
        fetch(tmp_path / "c", url=(tmp_path / "missing.zip").as_uri())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

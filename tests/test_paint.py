"""Procedural skin albedo: shapes, determinism, tone range, seams, regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avatarsdk.errors import InputError
from avatarsdk.rigs import PARTS, load_ict
from avatarsdk.paint import (
    ALBEDO_TONES,
    SkinParams,
    face_region_mask,
    face_region_vertices,
    mean_albedo_srgb,
    paint_albedo,
    procedural_albedo,
    sample_skin_params,
)

SIZE = 128


def _region_mean(img: np.ndarray) -> np.ndarray:
    return img[face_region_mask(img.shape[0])].astype(np.float64).mean(0) / 255.0


def test_shape_dtype_and_determinism():
    a = procedural_albedo(7, size=SIZE)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, procedural_albedo(7, size=SIZE))
    np.testing.assert_array_equal(a, procedural_albedo(np.random.default_rng(7), size=SIZE))
    assert np.abs(a.astype(int) - procedural_albedo(8, size=SIZE).astype(int)).mean() > 3


def test_params_round_trip_and_overrides():
    p = sample_skin_params(3)
    np.testing.assert_array_equal(paint_albedo(p, size=SIZE), procedural_albedo(3, size=SIZE))
    bald = procedural_albedo(3, size=SIZE, hair_style="bald", beard=0.0)
    assert bald.shape == (SIZE, SIZE, 3)
    with pytest.raises(InputError, match="unknown skin parameter"):
        procedural_albedo(3, size=SIZE, hairstyle="bald")
    with pytest.raises(InputError, match="hair_style"):
        procedural_albedo(3, size=SIZE, hair_style="mohawk")
    with pytest.raises(InputError, match="size"):
        procedural_albedo(3, size=100)
    with pytest.raises(InputError, match="seed"):
        procedural_albedo(-1, size=SIZE)
    with pytest.raises(InputError, match="tone"):
        procedural_albedo(1, size=SIZE, tone=12)
    with pytest.raises(InputError):
        SkinParams(tone=(1.2, 0.5, 0.5))


def test_tones_span_light_to_dark():
    light = _region_mean(procedural_albedo(1, size=SIZE, tone=0, beard=0.0, hair_style="bald"))
    dark = _region_mean(procedural_albedo(1, size=SIZE, tone=9, beard=0.0, hair_style="bald"))
    assert light.mean() > 0.6 and dark.mean() < 0.25
    # Skin albedo is reddish at every tone: R > G > B.
    for c in (light, dark):
        assert c[0] > c[1] > c[2]
    # Sampled tones cover the scale.
    lum = [np.mean(sample_skin_params(s).tone) for s in range(200)]
    assert min(lum) < 0.25 and max(lum) > 0.7
    m = np.mean(mean_albedo_srgb())
    assert np.mean(ALBEDO_TONES[-1]) / 255 < m < np.mean(ALBEDO_TONES[0]) / 255


def _seam_uvs():
    t = load_ict().topology
    skin = np.nonzero(t.tri_material == t.materials.index("skin"))[0]
    tri, cuv = t.triangles[skin], t.corner_uv[skin]
    face = cuv[:, :, 0].max(1) <= 0.75
    out = []
    for sel in (face, ~face):
        v, uv = tri[sel].ravel(), cuv[sel].reshape(-1, 2)
        _, first = np.unique(v, return_index=True)
        out.append(dict(zip(v[first], uv[first])))
    common = sorted(set(out[0]) & set(out[1]))
    return np.array(common), np.stack([out[0][v] for v in common]), np.stack([out[1][v] for v in common])


def _seam_differences(img: np.ndarray, uv_a: np.ndarray, uv_b: np.ndarray) -> np.ndarray:
    from avatarsdk.render import texture

    t = torch.from_numpy(img).float()[None] / 255.0
    a = texture(t, torch.from_numpy(uv_a).float().view(1, -1, 1, 2))[0, :, 0]
    b = texture(t, torch.from_numpy(uv_b).float().view(1, -1, 1, 2))[0, :, 0]
    return (a - b).abs().max(1).values.numpy()


def test_seam_colours_agree():
    """A vertex on a chart seam reads the same colour from both charts."""
    from scipy.spatial import cKDTree

    verts, uv_face, uv_back = _seam_uvs()
    v = load_ict().neutral
    sockets = np.concatenate([np.arange(*PARTS["mouth_socket"]), np.arange(*PARTS["eye_sockets"])])
    main = cKDTree(v[sockets]).query(v[verts])[0] > 0.005  # the scalp / neck seam
    assert main.sum() > 150 and (~main).sum() > 50
    for seed in (0, 5):
        d = _seam_differences(procedural_albedo(seed, size=512), uv_face[main], uv_back[main])
        assert np.percentile(d, 95) < 0.02 and d.max() < 0.06, (seed, np.percentile(d, 95), d.max())
    # The mouth and eye-socket islands are tiny in UV: check them at the default size.
    d = _seam_differences(procedural_albedo(1, size=1024), uv_face, uv_back)
    assert np.percentile(d, 95) < 0.03 and d.max() < 0.1, (np.percentile(d, 95), d.max())


def test_face_region():
    m = face_region_mask(SIZE)
    assert m.dtype == bool and m.shape == (SIZE, SIZE)
    assert 0.05 < m.mean() < 0.3
    assert not m[:, int(0.76 * SIZE):].any()  # face chart only
    ids = face_region_vertices()
    assert 3000 < len(ids) < 6000 and ids.max() < PARTS["face"][1]
    # The nose tip is in, the ear and the back of the head are out.
    v = load_ict().neutral
    assert int(np.argmax(v[: PARTS["face"][1], 2])) in set(ids.tolist())
    assert (np.abs(v[ids, 0]) < 0.075).all()

"""Skin albedo touches shared by every head: the mouth interior."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from avatarsdk.colour import srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.materials import paint_mouth_interior, plain_skin_albedo
from avatarsdk.pipeline import random_avatar


def _luminance(rgb_u8: np.ndarray) -> np.ndarray:
    lin = srgb_to_linear(rgb_u8.astype(np.float64) / 255.0)
    return lin @ np.array([0.2126, 0.7152, 0.0722])


def _socket_triangles(avatar, min_depth: float) -> np.ndarray:
    """Skin triangles of the mouth socket whose corners all lie over ``min_depth`` m from the face part."""
    topo = avatar.topology
    a, b = topo.parts["mouth_socket"]
    f0, f1 = topo.parts["face"]
    tris = np.asarray(topo.triangles, np.int64)
    depth = np.full(len(avatar.vertices), -1.0)
    depth[a:b] = cKDTree(avatar.vertices[f0:f1]).query(avatar.vertices[a:b])[0]
    skin = np.asarray(topo.tri_material) == topo.materials.index("skin")
    return np.nonzero(skin & (depth[tris] > min_depth).all(1))[0]


def test_random_head_mouth_socket_is_dark_mucosa():
    """The three-quarter view at jawOpen sees the inner cheek: it must be dark mucosa, not skin.

    A plain skin tone on the socket's texels made the open mouth bright skin colour inside, so the one
    row of lower teeth seen through it read as a loose strip. Measured on the exported texture at the
    UV centres of socket triangles deeper than 10 mm: linear luminance under 25% of the skin tone's.
    The rest of the texture keeps the plain tone.
    """
    avatar = random_avatar(1, texture_size=256)
    skin = avatar.textures["skin"]
    tone = np.median(skin.reshape(-1, 3), axis=0)
    deep = _socket_triangles(avatar, 0.010)
    assert len(deep) > 50
    centres = np.asarray(avatar.topology.corner_uv, np.float64)[deep].mean(1)
    px = np.clip(np.floor(centres * skin.shape[0]).astype(int), 0, skin.shape[0] - 1)
    texels = skin[px[:, 1], px[:, 0]]
    ratio = float(np.median(_luminance(texels))) / float(_luminance(tone[None])[0])
    assert ratio < 0.25, f"mouth socket luminance is {ratio:.2f} of the skin tone's"
    assert (texels[:, 0].astype(int) > texels[:, 1].astype(int) + 10).mean() > 0.9  # red mucosa
    changed = (skin != tone).any(-1).mean()
    assert changed < 0.03, f"{changed:.1%} of the texels left the plain tone"


def test_paint_mouth_interior_rejects_bad_albedo():
    topo = random_avatar(1, texture_size=64).topology
    with pytest.raises(InputError):
        paint_mouth_interior(np.zeros((8, 16, 3), np.uint8), topo, np.zeros((topo.num_vertices, 3)))
    plain = plain_skin_albedo((0.8, 0.7, 0.6), size=64)
    assert paint_mouth_interior(plain, topo, random_avatar(1, texture_size=64).vertices).shape == plain.shape

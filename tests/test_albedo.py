"""Occluder-free unwrap: texels whose pixel the parser calls hair, mouth interior, cloth... get no confidence."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from conftest import EXAMPLE
from avatarsdk.albedo import occlusion_free, unwrap
from avatarsdk.colour import srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.fit import FitOptions
from avatarsdk.pipeline import fit_stage
from avatarsdk.types import PARSE_CLASSES, FaceParse

QUICK = FitOptions(rigid_steps=30, landmark_steps=60, photo_steps=((96, 15),))
SIZE = 256


@pytest.fixture(scope="module")
def pf():
    return fit_stage(EXAMPLE, fit_options=QUICK)


def _sampled_pixels(pf) -> np.ndarray:
    """[S, S, 2] photo pixel (x, y) each texel samples: unwrap an image that encodes its own coordinates."""
    h, w = pf.photo.size
    yy, xx = np.mgrid[0:h, 0:w]
    code = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.zeros_like(xx)], -1).astype(np.uint8)
    lin, _ = unwrap(pf.model, pf.fit, code, np.ones((h, w), np.float32), size=SIZE, delight=False)
    lut = srgb_to_linear(torch.arange(256, dtype=torch.float32) / 255.0)  # invert the sRGB decode
    idx = torch.searchsorted(lut, lin[..., :2].contiguous()).clamp(0, 255).numpy().astype(np.float64)
    return np.stack([idx[..., 0] * (w - 1) / 255, idx[..., 1] * (h - 1) / 255], -1)


def test_occluded_texels_are_excluded(pf):
    parsing = pf.parsing
    assert parsing is not None and parsing.method == "bisenet"
    img = pf.photo.image
    _, conf0 = unwrap(pf.model, pf.fit, img, pf.region, size=SIZE)
    keep = occlusion_free(parsing)
    _, conf1 = unwrap(pf.model, pf.fit, img, pf.region, size=SIZE, keep=keep)
    assert bool((conf1 <= conf0 + 1e-6).all())
    xy = np.round(_sampled_pixels(pf)).astype(int)  # within ~2 px (the code has 256 levels over 512 px)
    yx = (xy[..., 1].clip(0, img.shape[0] - 1), xy[..., 0].clip(0, img.shape[1] - 1))
    # Classes 3 px inside their boundaries, so that the decoded position's error cannot cross them.
    occ = binary_erosion(parsing.mask("hair", "mouth", "cloth", "eye_g", "hat"), np.ones((3, 3), bool), 3)
    skin = binary_erosion(parsing.skin, np.ones((3, 3), bool), 3)
    occluded = occ[yx]
    seen = conf0.numpy() > 0.05
    assert (occluded & seen).sum() > 50  # the mesh-based region lets hair (her fringe) through today
    assert (conf1.numpy()[occluded] == 0).all()  # the parser keeps every one of them out
    clear = skin[yx] & (conf0.numpy() > 0.5)
    assert (conf1.numpy()[clear] > 0).mean() > 0.9  # clear skin stays


def test_occlusion_free_mask():
    labels = np.full((40, 40), PARSE_CLASSES.index("skin"), np.uint8)
    labels[:10] = PARSE_CLASSES.index("hair")
    labels[30:, 15:25] = PARSE_CLASSES.index("mouth")
    labels[20, 5] = PARSE_CLASSES.index("nose")
    labels[20, 35] = PARSE_CLASSES.index("l_eye")
    keep = occlusion_free(FaceParse(labels=labels, method="bisenet"), grow=0.05)  # 2 px band at side 40
    assert keep.dtype == np.float32
    assert keep[:12].sum() == 0 and keep[13:18, 5:10].all()
    assert keep[28:, 13:27].sum() == 0 and keep[28:, :12].all()
    assert keep[20, 5] == 1 and keep[20, 35] == 0  # nose kept, eye dropped


def test_keep_mask_shape_checked(pf):
    with pytest.raises(InputError, match="keep mask"):
        unwrap(pf.model, pf.fit, pf.photo.image, pf.region, size=64, keep=np.ones((3, 3)))

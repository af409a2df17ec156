"""Refinement from the fit (init="fit"), the range of real skin and the divergence check with its fallback."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from avatarsdk.albedo import SKIN_LIMITS, albedo_divergence, skin_range_excess, skin_statistics
from avatarsdk.colour import srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.paint import ALBEDO_TONES, face_region_mask
from avatarsdk.refine import RefineConfig


def _plain(rgb_linear, size=64) -> torch.Tensor:
    return torch.tensor(rgb_linear, dtype=torch.float32).expand(size, size, 3).clone()


def test_every_monk_tone_is_real_skin_and_white_green_blue_black_are_not():
    tones = srgb_to_linear(torch.tensor(ALBEDO_TONES, dtype=torch.float32) / 255.0)
    assert float(skin_range_excess(tones).max()) == 0.0
    for bad in ([0.95, 0.95, 0.95], [0.2, 0.45, 0.2], [0.2, 0.25, 0.6], [0.004, 0.003, 0.002]):
        assert float(skin_range_excess(torch.tensor(bad))) > 0.01, bad
    w = torch.tensor([0.9, 0.9, 0.9], requires_grad=True)  # white: the gradient pulls it darker and redder
    skin_range_excess(w).backward()
    assert w.grad[1] > 0 and w.grad[1] > w.grad[0]
    lo, hi = SKIN_LIMITS.luminance
    assert 0 < lo < 0.03 and 0.5 < hi < 0.8


def test_divergence_compares_with_the_fit_and_the_range_of_real_skin():
    face = face_region_mask(64)
    fit = _plain([0.5, 0.3, 0.2])
    assert skin_statistics(fit, face)["red_green"] == pytest.approx(5 / 3, rel=1e-3)
    assert albedo_divergence(fit * 1.2, fit, face) is None  # a little lighter: kept
    assert albedo_divergence(_plain([0.52, 0.3, 0.19]), fit, face) is None  # a little warmer: kept
    assert "luminance" in albedo_divergence(_plain([0.97, 0.97, 0.97]), fit, face)  # white
    assert "luminance" in albedo_divergence(fit * 0.2, fit, face)  # black
    assert "red/green" in albedo_divergence(_plain([0.25, 0.3, 0.2]), fit, face)  # green
    assert "blue/green" in albedo_divergence(_plain([0.5, 0.3, 0.3]), fit, face)  # purple-blue
    # Near a fit that is itself at the edge, leaving the range of real skin still counts.
    edge = _plain([0.75, 0.62, 0.5])
    assert albedo_divergence(_plain([0.8, 0.75, 0.62]), edge, face) is not None
    with pytest.raises(InputError):
        skin_statistics(fit, np.zeros((64, 64), bool))


@pytest.fixture(scope="module")
def G():
    from avatarsdk.pipeline import load_generator

    return load_generator()


def test_fit_targets_and_their_inversion(G):
    from avatarsdk.invert import InvertConfig, chart_mask, fit_targets, invert_fit
    from avatarsdk.rigs import load_ict

    model = load_ict()
    res = G.cfg.resolution
    verts = model.morph(np.linspace(-1, 1, model.identity_basis.shape[0]))
    skin = np.zeros((512, 512, 3), np.uint8)
    skin[...] = (200, 150, 130)
    albedo, offsets = fit_targets(verts, skin, res)
    assert albedo.shape == offsets.shape == (3, res, res)
    assert torch.allclose(albedo[:, 5, 5], srgb_to_linear(torch.tensor([200, 150, 130]) / 255.0), atol=1e-4)
    on = chart_mask(res)
    assert 0.5 < float(offsets[:, on].norm(dim=0).mean()) * 1000 < 20  # mm away from the generic head
    inv = invert_fit(G, verts, skin, InvertConfig(steps=12, lpips_geometry=0, lpips_albedo=0, lr=0.05))
    assert inv.errors["vertex_mm"] < inv.initial_errors["vertex_mm"]
    assert inv.errors["albedo_l1"] < inv.initial_errors["albedo_l1"]
    with pytest.raises(InputError):
        fit_targets(verts[:10], skin, res)
    with pytest.raises(InputError):
        fit_targets(verts, skin.astype(np.float32), res)


def test_create_refines_from_the_fit():
    from avatarsdk.pipeline import create

    cfg = RefineConfig(steps=3, invert_steps=8, schedule=((96, 1.0),))
    avatar = create("examples/astronaut.png", mode="refine", init="fit", refine_options=cfg, texture_size=256)
    info = avatar.meta["refine"]
    assert info["init"] == "fit" and info["steps"] == 3 and info["inversion_steps"] == 8
    start, inverted = info["inversion_start_errors"], info["inversion_errors"]
    assert inverted["vertex_mm"] < start["vertex_mm"] and inverted["albedo_l1"] < start["albedo_l1"]
    assert {"invert", "refine", "albedo", "assemble"} <= set(avatar.meta["timings_s"])
    assert "embed" not in avatar.meta["timings_s"]  # no regressor on this path
    assert set(info["face_albedo"]) == {"refined", "fit"} and isinstance(info["diverged"], bool)


def test_a_diverged_refinement_falls_back_to_the_fit(caplog):
    """A step size that blows up (and no skin-range term) drives the latent far off; the check catches it."""
    from avatarsdk.pipeline import create
    from avatarsdk.rigs import load_ict

    # The crop size changes after step 2; the best latent is then taken among the blown-up ones.
    cfg = RefineConfig(steps=6, lr=5.0, skin=0.0, schedule=((96, 0.5), (128, 1.0)), patience=0)
    with caplog.at_level(logging.WARNING, logger="avatarsdk.pipeline"):
        avatar = create("examples/astronaut.png", mode="refine", init="regressor", refine_options=cfg,
                        texture_size=256)
    info = avatar.meta["refine"]
    assert info["diverged"] is True and info["reason"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "diverged" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()
    # The avatar is the fit's: its neutral head and its de-lit albedo, inside the range of real skin.
    identity = np.asarray(avatar.meta["fit"]["identity"])
    np.testing.assert_allclose(avatar.vertices, load_ict().morph(identity), atol=1e-4)
    skin = srgb_to_linear(torch.from_numpy(np.array(avatar.textures["skin"][..., :3])).float() / 255.0)
    stats = skin_statistics(skin, face_region_mask(256))
    assert stats["luminance"] == pytest.approx(info["face_albedo"]["fit"]["luminance"], abs=0.01)
    assert float(skin_range_excess(torch.tensor(stats["rgb"]))) == 0.0


def test_refinement_from_the_fit_adds_only_its_change_to_the_fit():
    """With init="fit" the avatar is the fit's head and albedo plus what the refinement changed in G:
    a refinement that changes nothing gives the fit's own head and albedo back, not G's inversion of them."""
    from avatarsdk.pipeline import albedo_stage, check_refinement, fit_stage, refine_stage

    pf = fit_stage("examples/astronaut.png")
    skin, exposure = albedo_stage(pf, texture_size=256)
    cfg = RefineConfig(steps=1, lr=1e-12, invert_steps=4, schedule=((96, 1.0),), lr_rampup=0.0)
    r, _ = refine_stage(pf, init="fit", refine_options=cfg, exposure=exposure, fit_albedo=skin)
    assert r.start["init"] == "fit" and "geometry" in r.history
    assert r.start["inversion_errors"]["vertex_mm"] > 0.05  # G's inversion is not the fit ...
    checked = check_refinement(pf, r, skin, texture_size=256)
    assert checked.diverged is None
    np.testing.assert_allclose(checked.vertices, pf.model.morph(pf.fit.identity), atol=2e-6)  # ... the avatar is
    fit_lin = srgb_to_linear(torch.from_numpy(skin[..., :3]).float() / 255.0).numpy()
    np.testing.assert_allclose(checked.albedo, fit_lin, atol=1e-4)
    # A changed latent moves the head by G's change only.
    moved = dataclasses.replace(r, offsets=r.offsets + 0.001)
    delta = check_refinement(pf, moved, skin, texture_size=256).vertices - pf.model.morph(pf.fit.identity)
    assert 0.0005 < float(np.abs(delta).max()) < 0.01

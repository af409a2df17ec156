"""GAN inversion (avatarsdk.invert): eq. 1 on a tiny G, its renderer, its errors and its input checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from avatarsdk.errors import InputError
from avatarsdk.invert import (
    Inversion,
    InvertConfig,
    chart_mask,
    face_vertices,
    invert,
    inversion_views,
    map_errors,
    render_inversion_views,
)
from avatarsdk.nn import DiscriminatorConfig, Discriminators, Generator, GeneratorConfig, decode_maps, sample_z

TINY = GeneratorConfig(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
PIXEL_ONLY = InvertConfig(steps=6, lr=0.05, lpips_geometry=0.0, lpips_albedo=0.0, render_size=32)


@pytest.fixture(scope="module")
def G() -> Generator:
    g = Generator(TINY, seed=0).eval()
    with torch.no_grad():  # an untrained G tracks no mean: use the mean of its mapping, as training would
        g.mapping.w_avg.copy_(g.mapping(sample_z(256, TINY.z_dim, 1)).mean((0, 1)))
    return g


@pytest.fixture(scope="module")
def target(G):
    """(true ws [L, w_dim], albedo [3, R, R], offsets [3, R, R]) of a head G makes from a known latent."""
    with torch.no_grad():
        ws = G.mapping(sample_z(1, TINY.z_dim, 7))
        albedo, offsets = decode_maps(G.synthesis(ws), TINY)
    return ws[0], albedo[0], offsets[0]


@pytest.fixture(scope="module")
def inverted(G, target) -> Inversion:
    cfg = InvertConfig(steps=40, lr=0.05, render_size=48, lpips_geometry=1.0, lpips_albedo=1.0)
    return invert(G, target[1], target[2], cfg)


# ---------------------------------------------------------------------------
# Inversion
# ---------------------------------------------------------------------------


def test_recovers_a_head_generated_by_g(inverted):
    h = inverted.history
    assert h["total"][-1] < 0.5 * h["total"][0]
    assert inverted.errors["vertex_mm"] < 0.5 * inverted.initial_errors["vertex_mm"]
    assert inverted.errors["albedo_l1"] < 0.7 * inverted.initial_errors["albedo_l1"]
    assert inverted.initial_errors["vertex_mm"] > 1.0  # the w_avg start is really somewhere else


def test_shapes_and_history(inverted):
    assert inverted.w.shape == (TINY.num_ws, TINY.w_dim)
    assert inverted.albedo.shape == inverted.offsets.shape == (3, 16, 16)
    assert float(inverted.albedo.min()) >= 0 and float(inverted.albedo.max()) <= 1
    keys = {"pix_albedo", "pix_offsets", "total", "lpips_geometry", "lpips_albedo"}
    assert set(inverted.history) == keys
    assert all(len(v) == 40 for v in inverted.history.values())
    assert 0 <= inverted.best_step <= 40
    maps = inverted.uvmaps()
    assert maps.albedo.shape == maps.offsets.shape == (16, 16, 3) and maps.mask.shape == (16, 16)


def test_result_is_what_g_decodes_from_w(G, inverted):
    with torch.no_grad():
        albedo, offsets = decode_maps(G.synthesis(inverted.w[None]), TINY)
    torch.testing.assert_close(albedo[0], inverted.albedo)
    torch.testing.assert_close(offsets[0], inverted.offsets)


def test_deterministic(G, target):
    a = invert(G, target[1], target[2], PIXEL_ONLY)
    b = invert(G, target[1], target[2], PIXEL_ONLY)
    assert torch.equal(a.w, b.w)
    assert a.history == b.history


def test_pixel_terms_alone_reduce_the_loss(G, target):
    out = invert(G, target[1], target[2], dataclasses.replace(PIXEL_ONLY, steps=15))
    assert out.history["total"][-1] < out.history["total"][0]
    assert out.errors["vertex_mm"] < out.initial_errors["vertex_mm"]


def test_w_space_shares_one_latent(G, target):
    out = invert(G, target[1], target[2], dataclasses.replace(PIXEL_ONLY, wplus=False))
    assert torch.equal(out.w, out.w[:1].expand_as(out.w))


def test_starting_at_the_answer_stays_there(G, target):
    out = invert(G, target[1], target[2], PIXEL_ONLY, w0=target[0])
    assert out.initial_errors["vertex_mm"] < 1e-3 and out.errors["vertex_mm"] < 1e-3
    assert out.best_step == 0
    assert torch.equal(out.w, target[0])


def test_adversarial_term_and_frozen_networks_restored(G, target):
    D = Discriminators(DiscriminatorConfig.for_generator(TINY), seed=3).train()
    G.train()
    try:
        out = invert(G, target[1], target[2], dataclasses.replace(PIXEL_ONLY, steps=3, adv=0.1), discriminators=D)
        assert len(out.history["adv"]) == 3 and all(np.isfinite(out.history["adv"]))
        assert G.training and D.training
        assert all(p.requires_grad for p in G.parameters()) and all(p.requires_grad for p in D.parameters())
        assert all(p.grad is None for p in G.parameters())
    finally:
        G.eval()


def test_target_at_another_resolution(G, target):
    big_a = torch.nn.functional.interpolate(target[1][None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    big_o = torch.nn.functional.interpolate(target[2][None], size=(32, 32), mode="bilinear", align_corners=False)[0]
    out = invert(G, big_a.numpy(), big_o.numpy(), dataclasses.replace(PIXEL_ONLY, steps=3))
    assert out.w.shape == (TINY.num_ws, TINY.w_dim) and out.albedo.shape == (3, 16, 16)


def test_bad_inputs(G, target):
    _, a, o = target
    cases = [
        (a.permute(1, 2, 0), o.permute(1, 2, 0)),  # channels last
        (a, o[:, :8, :8]),  # shapes differ
        (a * 2.0, o),  # albedo outside [0, 1]
        (a, o + 1.0),  # not offsets in metres
        (a, o.clone().fill_(float("nan"))),
        ([[0.0]], o),
    ]
    for ta, to in cases:
        with pytest.raises(InputError):
            invert(G, ta, to, PIXEL_ONLY)
    with pytest.raises(InputError):
        invert(G, a, o, PIXEL_ONLY, w0=torch.zeros(3, 5))
    with pytest.raises(InputError):
        invert(G, a, o, PIXEL_ONLY, discriminators=Discriminators(DiscriminatorConfig(resolution=32, channel_base=64,
                                                                                      channel_max=8)))
    with pytest.raises(InputError):
        invert(torch.nn.Linear(2, 2), a, o, PIXEL_ONLY)
    for bad in (dict(steps=0), dict(render_size=16), dict(light="moon"), dict(lr=-1.0), dict(yaw_deg=()),
                dict(lpips_net="squeeze")):
        with pytest.raises(InputError):
            InvertConfig(**bad)


# ---------------------------------------------------------------------------
# Renderer and errors
# ---------------------------------------------------------------------------


def test_face_vertices_equal_offset_map_to_mesh(target):
    from avatarsdk.losses import face_mesh
    from avatarsdk.rigs import load_ict
    from avatarsdk.uvmap import offset_map_to_mesh

    model = load_ict()
    o = target[2][None]
    full = offset_map_to_mesh(o.permute(0, 2, 3, 1).double(), model.topology, model.neutral, model.identity_basis)
    torch.testing.assert_close(face_vertices(o).double(), full[:, face_mesh().ids], atol=1e-6, rtol=0)


def test_render_views_shapes_and_gradients(target):
    _, a, o = target
    views = inversion_views(InvertConfig(render_size=32))
    o = o[None].clone().requires_grad_(True)
    a = a[None].clone().requires_grad_(True)
    geo, alb = render_inversion_views(views, face_vertices(o), a)
    assert geo.shape == alb.shape == (3, 3, 32, 32)
    assert float(geo.detach().min()) >= 0 and float(geo.detach().max()) <= 1
    assert float(geo.detach()[:, :, 0, 0].sub(0.5).abs().max()) == 0  # background corner
    (geo.sum() + alb.sum()).backward()
    for t in (o, a):
        assert torch.isfinite(t.grad).all() and float(t.grad.abs().sum()) > 0


def test_map_errors_reference_values(target):
    _, a, o = target
    zero = map_errors(a, o, a, o)
    assert float(zero["vertex_mm"]) == 0 and float(zero["albedo_l1"]) == 0
    shifted = o.clone()
    shifted[2] += 0.001  # 1 mm along z everywhere
    brighter = (a * 0 + 0.5)
    e = map_errors(brighter + 0.1, shifted, brighter, o)
    assert float(e["vertex_mm"]) == pytest.approx(1.0, abs=1e-4)
    assert float(e["albedo_l1"]) == pytest.approx(0.1, abs=1e-5)
    batched = map_errors(a[None].expand(2, -1, -1, -1), o[None].expand(2, -1, -1, -1), a, o)
    assert batched["vertex_mm"].shape == (2,)
    assert chart_mask(16).dtype == torch.bool and 0 < int(chart_mask(16).sum()) < 256


def test_cached_target_features_give_the_lpips_distance():
    from avatarsdk.losses import lpips_features, lpips_to, perceptual

    p = perceptual("alex")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 40, 40, generator=gen), torch.rand(2, 3, 40, 40, generator=gen)
    torch.testing.assert_close(lpips_to(p, x, lpips_features(p, y)), p(x, y))


def test_train_invert_cli_bootstrap_step(tmp_path):
    """`train invert`: a photo -> fit -> inversion into the shipped G, started from R; a bad photo is skipped."""
    from pathlib import Path

    from typer.testing import CliRunner

    from avatarsdk.cli import app
    from avatarsdk.train.data import load_fitted

    photo = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"
    bad = tmp_path / "blank.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "boot"
    r = CliRunner().invoke(app, ["train", "invert", str(photo), str(bad), "-o", str(out), "--steps", "3"])
    assert r.exit_code == 1, r.output  # one of two failed
    report = json.loads((out / "report.json").read_text())
    assert report["inverted"] == 1 and report["failed"] == 1 and report["init"] == "regressor"
    assert "UnreadableImage" in report["rows"][1]["error"]
    row = report["rows"][0]
    # Three steps from R's guess move the latent towards the fit (the loss is on the maps and renders).
    assert row["inverted"]["vertex_mm"] <= row["start"]["vertex_mm"] + 1e-6
    with np.load(out / "inverted.npz") as z:
        assert z["embedding"].shape == (1, 128) and np.isfinite(z["w"]).all()
        assert z["w"].shape[1:] == (14, 512) and list(z["source"]) == ["inverted"]
    vertices, albedo, identity = load_fitted(out / row["fitted"])
    assert vertices.shape == (26719, 3) and albedo.dtype == np.uint8 and identity is not None

"""Perceptual refinement (avatarsdk.refine): recovers a head G made, from a photo of it; settings and checks."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch

from avatarsdk.errors import ConfigError, InputError
from avatarsdk.refine import RefineConfig, RefineTarget, _make_crop, refine, render_into_photo

FAST = RefineConfig(steps=30, lr=0.05, schedule=((96, 0.5), (128, 1.0)), patience=0)


@pytest.fixture(scope="module")
def G():
    from avatarsdk import pretrained
    from avatarsdk.nn.checkpoint import load

    return load(pretrained.locate("generator"), kind="generator").model  # the shipped G, as create() loads it


@pytest.fixture(scope="module")
def scene(G):
    """A photo of a head G decodes from a known latent, with its exact camera, light and landmarks."""
    from avatarsdk.colour import linear_to_srgb
    from avatarsdk.materials import default_textures
    from avatarsdk.nn.stylegan import decode_maps, sample_z
    from avatarsdk.render.camera import Camera
    from avatarsdk.rigs import load_ict
    from avatarsdk.rigs.mediapipe_map import load_correspondence, points_on_mesh
    from avatarsdk.scene import light_sh, render_photo
    from avatarsdk.uvmap import offset_map_to_mesh

    model = load_ict()
    with torch.no_grad():
        ws = G.mapping(sample_z(1, G.cfg.z_dim, 11), truncation_psi=0.8)
        albedo, offsets = decode_maps(G.synthesis(ws), G.cfg)
    verts = offset_map_to_mesh(offsets.permute(0, 2, 3, 1).double(), model.topology, model.neutral,
                               model.identity_basis)[0].numpy()
    skin = (linear_to_srgb(albedo[0].permute(1, 2, 0)) * 255 + 0.5).to(torch.uint8).numpy()
    size = 320
    yaw = np.radians(15.0)
    rot = np.diag([1.0, -1.0, -1.0]) @ np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0],
                                                  [-np.sin(yaw), 0, np.cos(yaw)]])
    centre = np.array([0.0, 0.03, 0.04])
    t = -rot @ (centre + rot.T @ np.array([0.0, 0.0, -0.6]))  # camera 0.6 m in front of the face centre
    focal = 0.55 * size * 0.6 / 0.22
    cam = Camera(fx=focal, fy=focal, cx=(size - 1) / 2, cy=(size - 1) / 2, width=size, height=size, rotation=rot,
                 translation=t)
    sh = light_sh("soft", rot)
    lin, cover = render_photo(verts, {"skin": skin, **default_textures()}, cam, sh, supersample=1)
    image = (linear_to_srgb(lin) * 255 + 0.5).astype(np.uint8)
    pts = np.zeros((478, 2))
    pts[:468] = cam.project(points_on_mesh(verts, load_correspondence()))
    lo, hi = pts[:468].min(0), pts[:468].max(0)
    target = RefineTarget(image=image, points=pts, box=(lo[0], lo[1], hi[0], hi[1]), region=(cover > 0.5) * 1.0,
                          camera=cam, light=sh,
                          expression=np.zeros(53, np.float32))
    return target, ws[0], albedo[0], offsets[0]


@pytest.fixture(scope="module")
def refined(G, scene):
    return refine(G, scene[0], None, FAST)


def test_refinement_recovers_the_photographed_head(refined, scene, G):
    """From G's mean latent, matching the photo moves the head toward the one photographed."""
    from avatarsdk.invert import map_errors
    from avatarsdk.nn.stylegan import decode_maps

    _, _, albedo, offsets = scene
    r = refined
    assert r.final["total"] < 0.7 * r.initial["total"]
    assert r.final["lpips"] < r.initial["lpips"] and r.final["colour"] < r.initial["colour"]
    with torch.no_grad():
        a0, o0 = decode_maps(G.synthesis(r.w0[None]), G.cfg)
    before = map_errors(a0, o0, albedo[None], offsets[None])
    after = map_errors(r.albedo[None], r.offsets[None], albedo[None], offsets[None])
    assert float(after["albedo_l1"]) < 0.8 * float(before["albedo_l1"])
    assert float(after["vertex_mm"]) < float(before["vertex_mm"])


def test_result_shapes_and_history(refined, G):
    L, D = G.cfg.num_ws, G.cfg.w_dim
    assert refined.w.shape == (L, D) and refined.w0.shape == (L, D)
    assert refined.albedo.shape == (3, G.cfg.resolution, G.cfg.resolution) == refined.offsets.shape
    assert refined.steps == FAST.steps
    assert set(refined.history) == {"latent", "lpips", "identity", "colour", "landmarks", "skin", "total"}
    assert all(len(v) == FAST.steps for v in refined.history.values())
    assert 0 <= refined.best_step <= FAST.steps
    assert torch.isfinite(refined.w).all()


def test_deterministic(G, scene):
    cfg = dataclasses.replace(FAST, steps=4)
    # No randomness in refine(): one thread gives bit-identical runs. With several threads, oneDNN's
    # parallel reductions may round differently from run to run and Adam magnifies that (~3e-4 in w
    # after 4 steps with the 256x256 G), so this checks the algorithm, not the thread scheduling.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = refine(G, scene[0], None, cfg), refine(G, scene[0], None, cfg)
    finally:
        torch.set_num_threads(threads)
    assert a.best_step == b.best_step and torch.equal(a.w, b.w), (a.w - b.w).abs().max()


def test_starts_from_w0_and_latent_prior_holds_it(G, scene):
    w0 = scene[1] + 0.05
    cfg = dataclasses.replace(FAST, steps=5, latent=1e4)
    r = refine(G, scene[0], w0, cfg)
    assert torch.allclose(r.w0, w0)
    assert (r.w - w0).abs().max() < 0.05  # a huge prior weight keeps w at w0


def test_without_the_perceptual_term(G, scene, monkeypatch):
    """lpips=0 (the permissive mode's refinement) never loads ST-LPIPS and records a zero term."""
    import avatarsdk.refine

    def refuse(net):
        raise AssertionError("ST-LPIPS loaded with lpips=0")

    monkeypatch.setattr(avatarsdk.refine, "perceptual", refuse)
    r = refine(G, scene[0], None, dataclasses.replace(FAST, steps=3, lpips=0.0))
    assert list(r.history["lpips"]) == [0.0, 0.0, 0.0]
    assert np.isfinite(r.history["total"]).all()


def test_early_stop(G, scene):
    cfg = dataclasses.replace(FAST, steps=60, lr=1e-6, patience=3, schedule=((96, 1.0),))
    r = refine(G, scene[0], None, cfg)
    assert r.steps < 60


def test_render_lands_on_the_face_and_blends_only_the_region(G, scene):
    """The crop camera puts G's face where the photo's face is; outside the region the photo is untouched."""
    from avatarsdk.losses import face_mesh, face_vertices, perceptual

    target, _, albedo, offsets = scene
    crop = _make_crop(target, 128, 1.6, perceptual("alex"), None)
    verts = face_vertices(offsets[None])[0]
    with torch.no_grad():
        blended, mask = render_into_photo(verts, albedo, target, crop)
    region = crop.region > 0.5
    covered = mask > 0.5
    iou = (region & covered).sum() / (region | covered).sum()
    assert iou > 0.8, float(iou)
    outside = crop.region == 0
    assert torch.allclose(blended[0][:, outside], crop.photo[0][:, outside])
    # G's own head rendered into its own photo matches it closely (exact camera, light and maps).
    err = (blended - crop.photo).abs().sum(1)[0][region].mean()
    assert err < 0.06, float(err)
    assert face_mesh().faces.shape[1] == 3


def test_config_checks():
    with pytest.raises(InputError):
        RefineConfig(steps=0)
    with pytest.raises(InputError):
        RefineConfig(lr=0)
    with pytest.raises(InputError):
        RefineConfig(schedule=((128, 0.5),))  # must end at 1.0
    with pytest.raises(InputError):
        RefineConfig(schedule=((224, 1.0), (128, 0.5)))
    with pytest.raises(InputError):
        RefineConfig(lpips_net="squeeze")
    with pytest.raises(InputError):
        RefineConfig(identity=-1.0)
    cfg = RefineConfig(steps=10, schedule=((128, 0.5), (224, 1.0)))
    assert [cfg.size_at(i) for i in range(10)] == [128] * 5 + [224] * 5
    assert cfg.lr_at(9) < cfg.lr_at(5) <= cfg.lr


def test_bad_inputs(G, scene):
    target = scene[0]
    with pytest.raises(InputError):
        refine(G, target, torch.zeros(3, 3), FAST)
    with pytest.raises(InputError):
        refine(G, "photo.jpg", None, FAST)
    with pytest.raises(InputError):
        dataclasses.replace(target, image=np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError):
        dataclasses.replace(target, expression=np.zeros(10))
    with pytest.raises(InputError):
        dataclasses.replace(target, exposure=0.0)


def test_create_refine_mode_and_its_checks():
    from avatarsdk.pipeline import create

    cfg = RefineConfig(steps=3, schedule=((96, 1.0),))
    avatar = create("examples/astronaut.png", mode="refine", init="regressor", refine_options=cfg, texture_size=256)
    meta = avatar.meta
    assert meta["mode"] == "refine" and meta["refine"]["steps"] == 3 and meta["refine"]["init"] == "regressor"
    assert inspect.signature(create).parameters["init"].default == "fit"  # the refine mode starts from the fit
    for stage in ("detect", "fit", "embed", "regress", "refine", "assemble"):
        assert stage in meta["timings_s"], stage
    assert avatar.textures["skin"].shape == (256, 256, 3)
    assert len(avatar.rig.blendshape_names) == 52
    with pytest.raises(InputError):
        create("examples/astronaut.png", mode="refine", init="zero")
    with pytest.raises(InputError):
        create("examples/astronaut.png", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            create("examples/astronaut.png", mode="refine", device="cuda")


def test_cli_refine_mode(tmp_path):
    from typer.testing import CliRunner

    from avatarsdk.cli import app

    runner = CliRunner()
    out = tmp_path / "r"
    r = runner.invoke(app, ["create", "examples/astronaut.png", "-o", str(out), "--mode", "refine",
                            "--refine-steps", "2", "--invert-steps", "3", "--texture-size", "256"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "fit.json").read_text())
    assert report["mode"] == "refine" and report["refine"]["steps"] == 2
    assert report["refine"]["init"] == "fit" and report["refine"]["inversion_steps"] == 3  # the default start
    assert {"fit", "refine", "export", "total"} <= set(report["timings_s"])
    bad = runner.invoke(app, ["create", "examples/astronaut.png", "-o", str(tmp_path / "x"), "--mode", "refine",
                              "--init", "zero"])
    assert bad.exit_code == 2 and "InputError" in bad.output
    assert not (tmp_path / "x").exists()


def test_an_anchor_holds_the_face_near_a_given_head(G, scene):
    """refine(anchor=...) adds the geometry term: G's face stays near the anchor head (the fit's, in create)."""
    from avatarsdk.losses import face_vertices
    from avatarsdk.nn.stylegan import decode_maps

    target = scene[0]
    cfg = dataclasses.replace(FAST, steps=6, schedule=((96, 1.0),), geometry=1e3)
    with torch.no_grad():
        w_mean = G.mapping.w_avg.detach().float()[None, None].expand(1, G.cfg.num_ws, -1)
        _, start_offsets = decode_maps(G.synthesis(w_mean), G.cfg)
    anchor = face_vertices(start_offsets)[0]  # the mean latent's head: the anchor is where refinement starts

    def drift_mm(r):
        return float((face_vertices(r.offsets[None])[0] - anchor).norm(dim=-1).mean()) * 1000

    free = refine(G, target, None, cfg)
    held = refine(G, target, None, cfg, anchor=anchor.numpy())
    assert "geometry" not in free.history and len(held.history["geometry"]) == 6
    assert torch.allclose(held.start_offsets, start_offsets[0], atol=1e-6)
    assert drift_mm(held) < 0.5 * drift_mm(free), (drift_mm(held), drift_mm(free))
    with pytest.raises(InputError):
        refine(G, target, None, cfg, anchor=anchor.numpy()[:10])

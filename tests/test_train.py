"""Training of G (avatarsdk.train): data build, UVDataset, mirror, GAN loop, resume, coverage, datasheet."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from avatarsdk.errors import InputError, WeightsError
from avatarsdk.nn import GeneratorConfig, checkpoint, decode_maps, encode_maps
from avatarsdk.nn.stylegan import Discriminators
from avatarsdk.train import data as tdata
from avatarsdk.train import gan as tgan
from avatarsdk.train import (
    DataConfig,
    DatasetWriter,
    TrainConfig,
    UVDataset,
    build_dataset,
    coverage_from_features,
    coverage_stats,
    load_fitted,
    synthetic_sample,
    train_gan,
    write_datasheet,
)

RES = 16
DCFG = DataConfig(resolution=RES, count=5, seed=3, shard_size=3)
TINY = GeneratorConfig(resolution=RES, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=16)
TIMING_KEYS = {"seconds", "total_seconds", "samples_per_s"}


@pytest.fixture(scope="module")
def model():
    from avatarsdk.rigs import load_ict

    return load_ict()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple:
    """The same small data set built twice (determinism) -> (dir A, manifest A, dir B, manifest B)."""
    a, b = tmp_path_factory.mktemp("ds_a"), tmp_path_factory.mktemp("ds_b")
    ma = build_dataset(a, DCFG, extra={"command": "test"})
    mb = build_dataset(b, DCFG)
    return a, ma, b, mb


@pytest.fixture(scope="module")
def ds(built) -> UVDataset:
    return UVDataset(built[0], TINY, mirror=True)


def _dummy_avatar(model, vertices: np.ndarray, albedo: np.ndarray, meta: dict | None = None):
    """An Avatar with a trivial one-joint-weight rig (cheap; enough for add_fitted and to_glb)."""
    from avatarsdk.datatypes import JOINT_NAMES, Avatar, Rig, Skeleton

    nv = model.topology.num_vertices
    sk = Skeleton(names=JOINT_NAMES, parents=np.array([-1, 0, 1, 2, 2, 2], np.int32),
                  positions=np.tile(np.array([[0, 0, 0]], np.float32), (6, 1)) + np.arange(6, dtype=np.float32)[:, None]
                  * 0.01)
    w = np.zeros((nv, 4), np.float32)
    w[:, 0] = 1
    rig = Rig(skeleton=sk, skin_joints=np.zeros((nv, 4), np.uint8), skin_weights=w, blendshape_names=(),
              blendshapes=np.zeros((0, nv, 3), np.float32))
    return Avatar(vertices=vertices, topology=model.topology, textures={"skin": albedo}, rig=rig, meta=meta or {})


# ---------------------------------------------------------------------------
# Data build
# ---------------------------------------------------------------------------


def test_build_is_deterministic(built, tmp_path):
    _, ma, _, mb = built
    assert [s["sha256"] for s in ma["shards"]] == [s["sha256"] for s in mb["shards"]]
    other = build_dataset(tmp_path, DataConfig(resolution=RES, count=3, seed=4, shard_size=3))
    assert other["shards"][0]["sha256"] != ma["shards"][0]["sha256"]


def test_build_with_spawned_workers_matches(built, tmp_path):
    m = build_dataset(tmp_path, DCFG, workers=2)
    assert [s["sha256"] for s in m["shards"]] == [s["sha256"] for s in built[1]["shards"]]
    assert m["build"]["workers"] == 2


def test_manifest_contents(built):
    root, m, _, _ = built
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == m
    assert m["count"] == 5 and m["resolution"] == RES and m["format"] == tdata.DATA_FORMAT
    assert [s["count"] for s in m["shards"]] == [3, 2]
    assert m["sources"] == {"synthetic": 5}
    assert m["seeds"]["base"] == 3 and m["seeds"]["synthetic_index_ranges"] == [[0, 5]]
    assert m["config"] == DCFG.to_dict()
    for key in ("avatarsdk", "torch", "numpy", "ict_source_sha256"):
        assert m["versions"][key]
    assert m["build"]["seconds"] > 0 and m["build"]["samples_per_s"] > 0
    assert m["machine"]["cpu_count"] >= 1
    assert m["extra"] == {"command": "test"}
    for s in m["shards"]:
        assert checkpoint.file_sha256(root / s["file"]) == s["sha256"]
    with np.load(root / m["shards"][0]["file"], allow_pickle=False) as z:
        assert z["albedo"].dtype == np.uint8 and z["albedo"].shape == (3, RES, RES, 3)
        assert z["offsets"].dtype == np.float16 and z["mask"].dtype == np.bool_
        assert list(z["index"]) == [0, 1, 2] and list(z["source"]) == ["synthetic"] * 3
        assert np.isfinite(z["identity"]).all() and np.abs(z["identity"]).max() <= DCFG.identity_clip


def test_existing_dataset_needs_overwrite(built):
    with pytest.raises(InputError, match="already holds"):
        DatasetWriter(built[0], DCFG)


def test_bad_data_config():
    for kw in ({"resolution": 24}, {"resolution": 8}, {"count": -1}, {"shard_size": 0}, {"identity_clip": 0.0},
               {"detail_scale": -1.0}):
        with pytest.raises(InputError):
            DataConfig(**kw)


def test_dataset_items(ds):
    assert ds.num_samples == 5 and len(ds) == 10
    x = ds[0]
    assert x.shape == (6, RES, RES) and x.dtype == torch.float32
    all_maps = ds.batch(torch.arange(len(ds)))
    assert torch.equal(all_maps[0], x) and torch.equal(all_maps[7], ds[7])
    assert all_maps[:, :3].min() >= -1 and all_maps[:, :3].max() <= 1
    assert torch.isfinite(all_maps).all()
    # Offsets of a head are centimetres at most: < 6 cm everywhere, mostly a few mm.
    assert all_maps[:, 3:].abs().max() * TINY.offset_scale_m < 0.06
    mask = ds.chart_mask()
    assert 0.3 < mask.float().mean() < 0.9
    with pytest.raises(IndexError):
        ds[10]
    with pytest.raises(InputError):
        ds.batch([0, 99])
    with pytest.raises(InputError, match="resolution"):
        UVDataset(ds.root, GeneratorConfig(resolution=32, z_dim=8, w_dim=8, channel_max=8))


def test_altered_shard_is_refused(built, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(built[0], root)
    shard = root / built[1]["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(InputError, match="sha256"):
        UVDataset(root)


def test_round_trip_float16(ds):
    """Stored sample == the float32 sample within float16 / uint8 precision, and encode/decode inverts."""
    for i in (0, 4):
        ref = synthetic_sample(i, DCFG)
        got = ds.uvmaps(i)
        np.testing.assert_allclose(got.offsets, ref.offsets, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(got.albedo, ref.albedo, atol=1e-6)  # same uint8, decoded by LUT vs formula
        assert np.array_equal(got.mask, ref.mask)
        albedo, off = decode_maps(ds[i][None], TINY)
        np.testing.assert_allclose(albedo[0].permute(1, 2, 0).numpy(), got.albedo, atol=1e-6)
        np.testing.assert_allclose(off[0].permute(1, 2, 0).numpy(), got.offsets, atol=1e-8)
        enc = encode_maps(torch.tensor(ref.albedo).permute(2, 0, 1)[None],
                          torch.tensor(ref.offsets).permute(2, 0, 1)[None], TINY)
        np.testing.assert_allclose(enc[0].numpy(), ds[i].numpy(), rtol=1e-3, atol=1e-4)


def test_mirror_matches_mirrored_mesh(model):
    """Mirroring the maps ~ rasterising the mirrored head; a plain image flip does not."""
    from avatarsdk.albedo import mirror_index

    size = 32
    cfg = DataConfig(resolution=size, count=1, seed=11)
    v, _, _ = tdata._synthetic_head(0, cfg, model)
    flip = np.array([-1.0, 1.0, 1.0], np.float32)
    vm = v[mirror_index(model)] * flip
    off, mask = tdata._maps(np.stack([v, vm]), model, size, 4)
    maps = torch.from_numpy(off).permute(0, 3, 1, 2) / 0.01  # offsets only, network units
    maps6 = torch.cat([torch.zeros_like(maps), maps], 1)
    mirrored = tdata.mirror_maps(maps6[:1], 0.01)[0, 3:] * 0.01  # [3, R, R] metres
    m = torch.from_numpy(mask[0])
    err = (mirrored - torch.from_numpy(off[1]).permute(2, 0, 1)).norm(dim=0)[m]
    naive = (maps6[0, 3:].flip(-1) * torch.tensor(flip)[:, None, None] * 0.01
             - torch.from_numpy(off[1]).permute(2, 0, 1)).norm(dim=0)[m]
    assert err.mean() < 2e-4 and torch.quantile(err, 0.9) < 5e-4
    assert naive.mean() > 10 * err.mean()
    twice = tdata.mirror_maps(tdata.mirror_maps(maps6[:1], 0.01), 0.01)
    assert (twice - maps6[:1])[0, 3:].norm(dim=0)[m].mean() * 0.01 < 2e-4


# ---------------------------------------------------------------------------
# Fitted samples
# ---------------------------------------------------------------------------


def test_add_fitted_avatar_and_glb(model, tmp_path):
    from avatarsdk.exporters.gltf import to_glb

    cfg = DataConfig(resolution=RES, count=1, seed=3, shard_size=2)
    v, albedo, ident = tdata._synthetic_head(0, cfg, model)
    avatar = _dummy_avatar(model, v, albedo, meta={"identity": ident[:100].tolist()})
    w = DatasetWriter(tmp_path / "ds", cfg)
    w.add_synthetic()
    s = w.add_fitted(avatar)
    ref = tdata._synthetic_samples([0], cfg, model)[0][0]
    np.testing.assert_array_equal(s.offsets, ref.offsets)  # same head, same pipeline
    np.testing.assert_array_equal(s.albedo, ref.albedo)
    np.testing.assert_allclose(s.identity, ident, rtol=1e-6)
    glb = tmp_path / "fit" / "avatar.glb"
    glb.parent.mkdir()
    glb.write_bytes(to_glb(avatar, blendshapes="none"))
    verts, tex, _ = load_fitted(glb)
    np.testing.assert_allclose(verts, v, atol=1e-7)
    np.testing.assert_array_equal(tex, albedo)
    s2 = w.add_fitted_file(glb.parent)  # a `create` output folder
    np.testing.assert_array_equal(s2.offsets, ref.offsets)
    m = w.close()
    assert m["count"] == 3 and m["sources"] == {"fitted": 2, "synthetic": 1}
    assert m["fitted_inputs"][0]["sha256"] == checkpoint.file_sha256(glb)
    fitted_ds = UVDataset(tmp_path / "ds", TINY)
    assert list(fitted_ds.sources) == ["synthetic", "fitted", "fitted"]
    assert torch.equal(fitted_ds[0], fitted_ds[1])
    with pytest.raises(InputError):
        load_fitted(tmp_path / "missing.glb")
    with pytest.raises(InputError):
        w.add_fitted(avatar)  # closed


# ---------------------------------------------------------------------------
# GAN training
# ---------------------------------------------------------------------------


def _cfg(**kw) -> TrainConfig:
    base = dict(generator=TINY, batch_size=4, r1_interval=2, log_interval=3, checkpoint_interval=3, mirror=True,
                seed=5)
    base.update(kw)
    return TrainConfig(**base)


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.fixture(scope="module")
def run_a(ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    res = train_gan(ds, out, _cfg(steps=6), command="avatarsdk train gan --steps 6")
    return out, res


def test_train_tiny(run_a):
    out, res = run_a
    assert res.steps == 6 and res.generator_path == out / "generator.pt"
    lines = [json.loads(x) for x in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6]
    for r in lines:
        for k in ("loss_g", "loss_d", "r1", "d_real_joint", "d_fake_albedo", "kimg", "samples_per_s"):
            assert np.isfinite(r[k]), (k, r)
        assert r["partial"] is False
    assert lines[-1]["kimg"] == pytest.approx(0.024)
    g = checkpoint.load(out / "generator.pt", sha256=res.generator_sha256, kind="generator")
    assert g.config == TINY and g.extra == {}
    with torch.no_grad():
        assert torch.isfinite(g.model(torch.randn(2, TINY.z_dim))).all()
    ck = checkpoint.load(res.checkpoint_path, kind="generator")
    assert ck.extra["step"] == 6 and ck.extra["train_config"] == _cfg(steps=6).to_dict()
    assert set(ck.extra) >= {"generator", "discriminators", "opt_g", "opt_d", "rng_state", "discriminator_config"}
    assert (out / "TRAIN_COMMAND.txt").read_text() == "avatarsdk train gan --steps 6\n"
    info = json.loads((out / "training.json").read_text())
    assert info["generator_sha256"] == res.generator_sha256 and info["steps"] == 6
    sheet = (out / "DATASHEET.md").read_text()
    assert "**5**" in sheet and res.generator_sha256 in sheet
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003.pt", "step-00000006.pt"]


def test_resume_equals_uninterrupted(ds, run_a, tmp_path):
    out_a, res_a = run_a
    # Stop at step 4 (a partial log line), then resume to 6 in the same folder.
    res_c = train_gan(ds, tmp_path, _cfg(steps=4))
    assert json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])["partial"] is True
    res = train_gan(ds, tmp_path, _cfg(steps=6), resume=res_c.checkpoint_path)
    assert res.steps == 6
    a = checkpoint.load(res_a.checkpoint_path).extra
    c = checkpoint.load(res.checkpoint_path).extra
    for key in ("generator", "discriminators"):
        for name, t in a[key].items():
            assert torch.equal(t, c[key][name]), (key, name)
    ga = checkpoint.load(res_a.generator_path).model.state_dict()
    gc = checkpoint.load(res.generator_path).model.state_dict()
    assert all(torch.equal(ga[k], gc[k]) for k in ga)
    assert torch.equal(a["rng_state"], c["rng_state"])
    la = [json.loads(x) for x in (out_a / "stats.jsonl").read_text().splitlines()]
    lc = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert _strip(la) == _strip(lc)


def test_time_limit_stops_cleanly_and_resumes(ds, run_a, tmp_path):
    """A time limit ends the run early like a planned end; resuming finishes it as if uninterrupted."""
    _, res_a = run_a
    res = train_gan(ds, tmp_path, _cfg(steps=6), time_limit_s=0.0)
    assert res.steps == 1 and res.generator_path.is_file() and res.checkpoint_path.name == "step-00000001.pt"
    last = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 1 and last["partial"] is True
    res = train_gan(ds, tmp_path, _cfg(steps=6), resume=res.checkpoint_path)
    assert res.steps == 6
    a = checkpoint.load(res_a.checkpoint_path).extra["generator"]
    b = checkpoint.load(res.checkpoint_path).extra["generator"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _grown(model, tmp_path, seed: int, grey: int) -> UVDataset:
    """The tiny data set plus one fitted head (a random identity, flat albedo), mirrored."""
    rng = np.random.default_rng(seed)
    fitted = tmp_path / "fit.npz"
    np.savez(fitted, vertices=model.morph(identity=rng.standard_normal(100) * 0.5).astype(np.float32),
             albedo=np.full((64, 64, 3), grey, np.uint8))
    build_dataset(tmp_path / "grown", DCFG, fitted=[fitted])
    return UVDataset(tmp_path / "grown", TINY, mirror=True)


def test_fine_tune_on_a_grown_data_set(model, run_a, tmp_path):
    """The bootstrap's G0 -> G1: resume G0's checkpoint on the data set grown by a fitted head."""
    _, res_a = run_a
    ds2 = _grown(model, tmp_path, seed=0, grey=150)
    assert ds2.num_samples == DCFG.count + 1 and "fitted" in set(ds2.sources)
    res = train_gan(ds2, tmp_path / "g1", _cfg(steps=8), resume=res_a.checkpoint_path)
    assert res.steps == 8
    info = json.loads((tmp_path / "g1" / "training.json").read_text())
    assert info["dataset"]["fingerprint"] == ds2.fingerprint() and info["dataset"]["count"] == DCFG.count + 1


def test_fine_tune_from_a_generator_file(ds, run_a, tmp_path):
    """G0 -> G1 from G0's exported weights alone: fresh D, which trains alone for d_warmup_steps."""
    _, res_a = run_a
    g0 = checkpoint.load(res_a.generator_path, kind="generator").model.state_dict()
    warm = train_gan(ds, tmp_path / "warm", _cfg(steps=3, d_warmup_steps=3), init_generator=res_a.generator_path)
    extra = checkpoint.load(warm.checkpoint_path).extra
    # G's weights untouched while D warms up (w_avg, a running mean of the mapping's output, still tracks)
    assert [k for k in g0 if not torch.equal(g0[k], extra["generator"][k])] == ["mapping.w_avg"]
    fresh = Discriminators(_cfg().d_config, seed=_cfg().seed + tgan._D_SEED_OFFSET).state_dict()
    assert any(not torch.equal(fresh[k], extra["discriminators"][k]) for k in fresh)  # ...and D learnt
    tuned = train_gan(ds, tmp_path / "g1", _cfg(steps=5, d_warmup_steps=3), init_generator=res_a.generator_path)
    g1 = checkpoint.load(tuned.checkpoint_path).extra["generator"]
    changed = [k for k in g0 if not torch.equal(g0[k], g1[k])]
    assert changed and all(torch.isfinite(g1[k]).all() for k in g1)
    # The run resumes like any other; the start file must match the run's architecture.
    assert train_gan(ds, tmp_path / "g1", _cfg(steps=6, d_warmup_steps=3), resume=tuned.checkpoint_path).steps == 6
    other = dataclasses.replace(TINY, channel_max=8)
    with pytest.raises(InputError, match="architecture"):
        train_gan(ds.root, tmp_path / "bad", _cfg(generator=other, steps=1), init_generator=res_a.generator_path)
    with pytest.raises(InputError, match="not both"):
        train_gan(ds, tmp_path / "bad", _cfg(steps=1), init_generator=res_a.generator_path,
                  resume=tuned.checkpoint_path)


def test_fitted_fraction_draws_the_fitted_heads(model, ds, tmp_path):
    grown = _grown(model, tmp_path, seed=1, grey=120)
    pools = tgan._real_pools(grown, 0.5)
    n = grown.num_samples
    assert sorted(pools[0].tolist()) == [n - 1, 2 * n - 1]  # the fitted head and its mirror
    assert tgan._real_pools(grown, None) is None
    gen = torch.Generator().manual_seed(0)
    all_fitted = tgan._draw_real(gen, 64, len(grown), pools, 1.0)
    assert set(all_fitted.tolist()) == {n - 1, 2 * n - 1}
    half = tgan._draw_real(torch.Generator().manual_seed(0), 4000, len(grown), pools, 0.25)
    share = np.isin(half.numpy(), pools[0].numpy()).mean()
    assert 0.22 < share < 0.28
    with pytest.raises(InputError, match="fitted_fraction needs"):
        tgan._real_pools(ds, 0.5)  # synthetic heads only
    with pytest.raises(InputError, match="fitted_fraction"):
        _cfg(fitted_fraction=1.5)
    res = train_gan(grown, tmp_path / "run", _cfg(steps=2, fitted_fraction=0.5))
    assert res.steps == 2 and np.isfinite(res.final_stats["loss_d"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_on_gpu_matches_cpu(ds):
    idx = torch.tensor([0, 1, len(ds) - 1, len(ds) // 2 + 1])
    cpu = ds.batch(idx)
    gpu = ds.batch(idx, device="cuda").cpu()
    assert torch.allclose(cpu, gpu, atol=1e-5)


def test_batch_device_cpu_is_default(ds):
    idx = torch.tensor([0, len(ds) - 1])
    assert torch.equal(ds.batch(idx), ds.batch(idx, device="cpu"))


def test_resume_refuses_other_config(ds, run_a, tmp_path):
    _, res_a = run_a
    with pytest.raises(InputError, match="lr"):
        train_gan(ds, tmp_path, _cfg(steps=8, lr=0.001), resume=res_a.checkpoint_path)
    with pytest.raises(WeightsError):
        train_gan(ds, tmp_path, _cfg(steps=8), resume=res_a.generator_path)  # weights only, no training state


def test_train_config():
    cfg = _cfg(steps=None, total_kimg=1.0)
    assert cfg.total_steps == 250
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    for kw in ({"batch_size": 0}, {"betas": (0.0, 1.0)}, {"style_mixing_prob": 1.5}, {"device": "tpu"},
               {"r1_gamma": -1.0}, {"steps": 0}):
        with pytest.raises(InputError):
            _cfg(**kw)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            train_gan("unused", "unused", _cfg(device="cuda"))


# ---------------------------------------------------------------------------
# Coverage and datasheet
# ---------------------------------------------------------------------------


def test_coverage_self_and_shifted():
    x = torch.randn(20, 12, generator=torch.Generator().manual_seed(0))
    c = coverage_from_features(x, x, k=3)
    assert c.gen_to_train_nn == pytest.approx(0, abs=1e-9) and c.train_to_gen_nn == pytest.approx(0, abs=1e-9)
    assert c.precision == 1.0 and c.recall == 1.0
    assert c.diversity_generated == pytest.approx(c.diversity_training)
    assert c.train_self_nn > 0
    far = coverage_from_features(x + 100.0, x, k=3)
    assert far.gen_to_train_nn > 50 and far.precision == 0.0 and far.recall == 0.0
    collapsed = coverage_from_features(x[:1].repeat(20, 1) + 1e-3 * x, x, k=3, pca_dim=None)
    assert collapsed.diversity_generated < 0.01 * collapsed.diversity_training
    assert collapsed.train_to_gen_nn > collapsed.gen_to_train_nn
    with pytest.raises(InputError):
        coverage_from_features(x, x[:, :5])


def test_coverage_stats(ds, run_a):
    g = checkpoint.load(run_a[1].generator_path, kind="generator").model
    c = coverage_stats(g, ds, n=5, pca_dim=4)
    assert c.n_generated == 5 and c.n_training == 5 and c.feature_dim == 4
    vals = [c.gen_to_train_nn, c.train_to_gen_nn, c.train_self_nn, c.diversity_generated, c.diversity_training]
    assert all(np.isfinite(v) and v >= 0 for v in vals)
    assert json.dumps(c.to_json())


def test_write_datasheet(built, tmp_path):
    p = write_datasheet(tmp_path / "DATASHEET.md", built[1], {"steps": 10, "seconds": 3600.0, "device": "cuda",
                                                              "command": "avatarsdk train gan", "extra_fact": 1})
    text = p.read_text()
    assert "**5** at 16 x 16" in text and "60.0 min" in text and "extra_fact" in text
    assert "synthetic" in text and tgan.TRAIN_FORMAT == 1

"""Training of R (avatarsdk.train.regressor): pairs from G's renders, imported pairs, training, resume, checkpoints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from avatarsdk.errors import InputError, WeightsError
from avatarsdk.nn import Generator, GeneratorConfig, Regressor, RegressorConfig, checkpoint
from avatarsdk.train.regressor import (
    PairConfig,
    Pairs,
    RegressorTrainConfig,
    build_pairs,
    embed_image,
    evaluate_regressor,
    load_pairs,
    render_pair_photo,
    save_inverted_pairs,
    synthetic_pair,
    train_regressor,
)

TINY = GeneratorConfig(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
PAIRS = PairConfig(count=3, seed=0, shard_size=2, photo_size=256)
TIMING_KEYS = {"seconds", "total_seconds", "pairs_per_s"}


def _face_like(g: Generator) -> Generator:
    """Make an untrained G produce plausible heads: the generic head, one skin tone, small latent-driven changes.

    An untrained G's maps are +-4 cm bumps and saturated colours, which the face
    detector often rejects; shrinking the toRGB weights keeps the latent's
    influence (so pairs still differ) while the head stays a face.
    """
    with torch.no_grad():
        s = g.synthesis
        for t in (s.torgb4, *s.torgbs):
            t.weight.mul_(0.1)
            t.bias.zero_()
        s.torgb4.bias[:3] = torch.tensor([0.45, 0.28, 0.22]) * 2 - 1  # linear skin albedo in network units
    return g.eval()


@pytest.fixture(scope="module")
def G() -> Generator:
    return _face_like(Generator(TINY, seed=0))


@pytest.fixture(scope="module")
def built(G, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    return out, build_pairs(G, out, PAIRS)


def _linear_pairs(G: Generator, tmp_path, n: int = 96, seed: int = 0):
    """A learnable pair set without rendering: ws = w_avg + a fixed linear function of the unit embedding."""
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(n, 128, generator=gen)
    a = torch.randn(128, TINY.num_ws * TINY.w_dim, generator=gen) * 0.1
    ws = (torch.nn.functional.normalize(e, dim=1) @ a).view(n, TINY.num_ws, TINY.w_dim) + G.w_avg
    path = save_inverted_pairs(tmp_path / "inv.npz", e, ws)
    out = tmp_path / "linear_pairs"
    build_pairs(G, out, PairConfig(count=0, inverted=(str(path),), shard_size=40))
    return out


TRAIN = RegressorTrainConfig(regressor=RegressorConfig.for_generator(TINY, hidden_dim=64), batch_size=16, lr=3e-3,
                             steps=60, log_interval=10, eval_interval=0, checkpoint_interval=0)


# ---------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------


def test_build_pairs_writes_a_consistent_set(G, built):
    out, manifest = built
    assert manifest["synthetic"]["attempted"] == 3
    assert manifest["count"] == manifest["synthetic"]["made"] >= 2
    assert manifest["generator"]["state_sha256"] == checkpoint.state_sha256(G.state_dict())
    assert [s["count"] for s in manifest["shards"]][0] == 2
    assert json.loads((out / "manifest.json").read_text())["count"] == manifest["count"]
    pairs = load_pairs(out)
    assert pairs.embedding.shape == (manifest["count"], 128)
    assert pairs.ws.shape == (manifest["count"], TINY.num_ws, TINY.w_dim)
    assert torch.equal(pairs.ws, pairs.ws[:, :1].expand_as(pairs.ws))  # no style mixing: one w per head
    assert set(pairs.source) == {"synthetic"}
    assert torch.isfinite(pairs.embedding).all()


def test_synthetic_pair_is_deterministic_and_targets_its_latent(G, built):
    pairs = load_pairs(built[0])
    i = int(pairs.index[0])
    p = synthetic_pair(G, i, PAIRS, keep_image=True)
    np.testing.assert_array_equal(p.embedding, pairs.embedding[0].numpy())
    np.testing.assert_array_equal(p.ws, pairs.ws[0].numpy())
    assert p.image.shape == (256, 256, 3) and p.image.dtype == np.uint8
    assert abs(p.pose[0]) <= PAIRS.max_yaw_deg and p.light in PAIRS.lights
    rs = np.random.SeedSequence([PAIRS.seed, i, 0x5E6A]).spawn(8)[0]
    z = torch.from_numpy(np.random.default_rng(rs).standard_normal((2, TINY.z_dim)).astype(np.float32))
    with torch.no_grad():
        torch.testing.assert_close(G.mapping(z[:1])[0], torch.from_numpy(p.ws))


def test_existing_set_needs_overwrite(G, built):
    with pytest.raises(InputError, match="overwrite"):
        build_pairs(G, built[0], PAIRS)


def test_render_and_embed_a_realistic_head():
    from avatarsdk.train.data import DataConfig, synthetic_sample

    maps = synthetic_sample(0, DataConfig(resolution=32, count=1, seed=0))
    image, info = render_pair_photo(maps.albedo, maps.offsets, 5, dataclasses.replace(PAIRS, expression_prob=1.0))
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    assert info["expression"] and all(0 <= w <= PAIRS.expression_max for w in info["expression"].values())
    e = embed_image(image)
    assert e.shape == (128,) and np.isfinite(e).all()
    with pytest.raises(InputError):
        render_pair_photo(maps.albedo[:8], maps.offsets, 5)


def test_inverted_pairs_import(G, tmp_path):
    e = np.random.default_rng(0).standard_normal((5, 128)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((5, TINY.w_dim)).astype(np.float32)  # one w, broadcast to W+
    path = save_inverted_pairs(tmp_path / "inv.npz", e, w, sources=["bench"] * 5)
    manifest = build_pairs(G, tmp_path / "p", PairConfig(count=0, inverted=(str(path),), shard_size=2))
    assert manifest["count"] == 5 and len(manifest["shards"]) == 3 and manifest["sources"] == {"bench": 5}
    pairs = load_pairs(tmp_path / "p")
    np.testing.assert_array_equal(pairs.embedding.numpy(), e)
    assert torch.equal(pairs.ws, torch.from_numpy(w)[:, None].expand(5, TINY.num_ws, -1))
    with pytest.raises(InputError):
        save_inverted_pairs(tmp_path / "bad.npz", e, w[:3])
    np.savez(tmp_path / "wrong.npz", embedding=e, w=np.zeros((5, 3, 3), np.float32))
    with pytest.raises(InputError):
        build_pairs(G, tmp_path / "q", PairConfig(count=0, inverted=(str(tmp_path / "wrong.npz"),)))


def test_tampered_shard_is_refused(G, tmp_path):
    out = _linear_pairs(G, tmp_path, n=8)
    shard = next(out.glob("pairs-*.npz"))
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(InputError, match="sha256"):
        load_pairs(out)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def test_training_reduces_the_loss(G, tmp_path):
    pairs_dir = _linear_pairs(G, tmp_path)
    res = train_regressor(pairs_dir, G, tmp_path / "run", TRAIN, command="test")
    lines = [json.loads(x) for x in res.stats_path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [10, 20, 30, 40, 50, 60]
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    ev = res.evaluation
    assert ev["n"] == 10  # 10% held out
    assert ev["w_mse"] < ev["mean_w_mse"]
    assert all(np.isfinite(v) for v in ev.values())
    assert "val_vertex_mm" in lines[-1]
    info = json.loads((tmp_path / "run" / "training.json").read_text())
    assert info["regressor_sha256"] == res.regressor_sha256 and info["pairs"]["n_train"] == 86
    assert (tmp_path / "run" / "TRAIN_COMMAND.txt").read_text() == "test\n"


def test_map_loss_term(G, tmp_path):
    pairs_dir = _linear_pairs(G, tmp_path, n=24)
    cfg = dataclasses.replace(TRAIN, steps=4, log_interval=2, map_weight=1.0, val_fraction=0.0)
    res = train_regressor(pairs_dir, G, tmp_path / "run", cfg)
    assert res.final_stats["loss_map"] > 0 and res.final_stats["loss"] > res.final_stats["loss_w"]
    assert res.evaluation == {}
    assert all(p.requires_grad for p in G.parameters()) and all(p.grad is None for p in G.parameters())


def test_resume_reproduces_the_uninterrupted_run(G, tmp_path):
    pairs_dir = _linear_pairs(G, tmp_path, n=40)
    cfg = dataclasses.replace(TRAIN, steps=6, log_interval=2, checkpoint_interval=3, eval_interval=4)
    straight = train_regressor(pairs_dir, G, tmp_path / "a", cfg)
    first = train_regressor(pairs_dir, G, tmp_path / "b", dataclasses.replace(cfg, steps=3))
    resumed = train_regressor(pairs_dir, G, tmp_path / "b", cfg, resume=first.checkpoint_path)
    assert resumed.steps == straight.steps == 6
    a = checkpoint.load(straight.regressor_path, kind="regressor").model.state_dict()
    b = checkpoint.load(resumed.regressor_path, kind="regressor").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    def strip(path):
        return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in path.read_text().splitlines()]

    assert strip(straight.stats_path) == strip(resumed.stats_path)
    with pytest.raises(InputError, match="resume"):
        train_regressor(pairs_dir, G, tmp_path / "c", dataclasses.replace(cfg, lr=1e-2), resume=first.checkpoint_path)


def test_checkpoint_kind_regressor_round_trip(G, tmp_path):
    pairs_dir = _linear_pairs(G, tmp_path, n=24)
    res = train_regressor(pairs_dir, G, tmp_path / "run", dataclasses.replace(TRAIN, steps=3, log_interval=1))
    loaded = checkpoint.load(res.regressor_path, sha256=res.regressor_sha256, kind="regressor")
    assert isinstance(loaded.model, Regressor) and loaded.kind == "regressor"
    step_ck = checkpoint.load(res.checkpoint_path, kind="regressor")
    assert step_ck.extra["step"] == 3 and step_ck.extra["kind"] == "regressor-training"
    e = load_pairs(pairs_dir).embedding[:4]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(e), step_ck.model(e), rtol=0, atol=0)
    with pytest.raises(WeightsError):
        checkpoint.load(res.regressor_path, kind="generator")
    with pytest.raises(WeightsError):  # a plain regressor file is not a training checkpoint
        train_regressor(pairs_dir, G, tmp_path / "run2", TRAIN, resume=res.regressor_path)


def test_evaluate_a_perfect_regressor(G):
    R = Regressor(RegressorConfig.for_generator(TINY, hidden_dim=16), seed=1)
    R.set_w_avg(G.w_avg)
    e = torch.randn(6, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ws = R(e)
    ev = evaluate_regressor(R, G, Pairs(embedding=e, ws=ws, source=np.array(["x"] * 6), index=np.arange(6)))
    assert ev["n"] == 6 and ev["w_mse"] == 0 and ev["vertex_mm"] < 1e-4 and ev["albedo_l1"] < 1e-6
    assert ev["mean_vertex_mm"] > 0


def test_pairs_of_another_generator_are_refused(G, tmp_path):
    pairs_dir = _linear_pairs(G, tmp_path, n=8)
    other = _face_like(Generator(TINY, seed=1))
    with pytest.raises(InputError, match="different generator"):
        train_regressor(pairs_dir, other, tmp_path / "run", TRAIN)


def test_bad_configs():
    for bad in (dict(w_loss="huber"), dict(eval_interval=15, log_interval=10), dict(steps=0), dict(lr=0.0),
                dict(val_fraction=0.95), dict(device="tpu")):
        with pytest.raises(InputError):
            RegressorTrainConfig(**bad)
    for bad in (dict(count=0), dict(lights=("moon",)), dict(photo_size=32), dict(texture_size=100),
                dict(max_yaw_deg=90.0)):
        with pytest.raises(InputError):
            PairConfig(**bad)
    assert PairConfig.from_dict(PAIRS.to_dict()) == PAIRS
    assert RegressorTrainConfig.from_dict(TRAIN.to_dict()) == TRAIN

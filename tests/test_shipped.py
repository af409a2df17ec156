"""The networks trained here and shipped in the package: checksums, sampling, inference, ONNX parity."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import EXAMPLE
from avatarsdk import pretrained
from avatarsdk.errors import InputError, WeightsError
from avatarsdk.nn.checkpoint import load
from avatarsdk.pipeline import create, generated_avatar


@pytest.fixture(scope="module")
def G():
    return load(pretrained.locate("generator"), kind="generator").model


@pytest.fixture(scope="module")
def R():
    return load(pretrained.locate("regressor"), kind="regressor").model


def test_shipped_weights_are_checksummed(tmp_path):
    for name in ("generator", "regressor"):
        entry = pretrained.REGISTRY[name]
        path = pretrained.locate(name)
        assert path.stat().st_size == entry.size < 50_000_000  # small enough to ship in the repository
        assert f"avatarsdk train {'gan' if name == 'generator' else name}" in (path.parent / f"{name}.TRAIN_COMMAND.txt").read_text()
        bad = tmp_path / path.name
        shutil.copyfile(path, bad)
        with open(bad, "r+b") as f:
            f.seek(entry.size // 2)
            byte = f.read(1)
            f.seek(entry.size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
        with pytest.raises(WeightsError):
            pretrained.verify(bad, entry.sha256, entry.size)
        with pytest.raises(WeightsError):
            load(bad, sha256=entry.sha256)
    assert (pretrained.locate("generator").parent / "DATASHEET.md").is_file()


def test_generated_heads(G):
    a = generated_avatar(3, texture_size=64)
    b = generated_avatar(3, texture_size=64)
    c = generated_avatar(4, texture_size=64)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert np.isfinite(a.vertices).all() and np.abs(a.vertices - c.vertices).max() > 1e-4
    assert len(a.rig.blendshape_names) == 52 and a.meta["mode"] == "gan"
    # Truncation 0 is the average latent: every seed gives the same head.
    m1 = generated_avatar(1, truncation_psi=0.0, texture_size=64)
    m2 = generated_avatar(2, truncation_psi=0.0, texture_size=64)
    np.testing.assert_allclose(m1.vertices, m2.vertices, atol=1e-6)
    with pytest.raises(InputError):
        generated_avatar(1, truncation_psi=-1.0)


def test_infer_mode_from_the_example():
    avatar = create(EXAMPLE, mode="infer", texture_size=256)
    assert avatar.meta["mode"] == "infer" and np.isfinite(avatar.vertices).all()
    assert avatar.albedo.shape == (256, 256, 3) and len(avatar.rig.blendshape_names) == 52
    with pytest.raises(InputError):
        create(EXAMPLE, mode="guess")


def test_onnx_matches_pytorch_for_the_shipped_networks(G, R, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from avatarsdk.nn.onnx import OnnxModel, export_generator, export_regressor

    emb = torch.randn(2, R.cfg.in_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ws = R(emb)
        maps = G.synthesis(ws)
    r_onnx = OnnxModel(export_regressor(R, tmp_path / "r.onnx"), intra_op_num_threads=2)
    g_onnx = OnnxModel(export_generator(G, tmp_path / "g.onnx", input="ws"), intra_op_num_threads=2)
    ws_o = r_onnx(emb.numpy())
    maps_o = g_onnx(ws_o)
    assert np.abs(ws_o - ws.numpy()).max() / np.abs(ws.numpy()).max() < 1e-4
    assert np.abs(maps_o - maps.numpy()).max() / np.abs(maps.numpy()).max() < 1e-4


def test_shipped_onnx_graphs_match_their_checkpoints_and_are_pinned(G, R, tmp_path):
    """create's R (and infer's G) run as the shipped ONNX files: same numbers as the .pt, tampering refused."""
    pytest.importorskip("onnxruntime")
    from avatarsdk.nn.onnx import OnnxModel

    emb = torch.randn(3, R.cfg.in_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ws = R(emb)
        maps = G.synthesis(ws)
    r_path, g_path = pretrained.locate("regressor_onnx"), pretrained.locate("generator_onnx")
    ws_o = OnnxModel(r_path, sha256=pretrained.REGISTRY["regressor_onnx"].sha256)(emb.numpy())
    maps_o = OnnxModel(g_path, sha256=pretrained.REGISTRY["generator_onnx"].sha256)(ws.numpy())
    assert np.abs(ws_o - ws.numpy()).max() / np.abs(ws.numpy()).max() < 1e-4
    assert np.abs(maps_o - maps.numpy()).max() / np.abs(maps.numpy()).max() < 1e-4
    bad = tmp_path / r_path.name
    data = bytearray(r_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError):
        OnnxModel(bad, sha256=pretrained.REGISTRY["regressor_onnx"].sha256)
    with pytest.raises(WeightsError):
        pretrained.verify(bad, pretrained.REGISTRY["regressor_onnx"].sha256, pretrained.REGISTRY["regressor_onnx"].size)

"""The paper's networks (avatarsdk.nn): UV StyleGAN2 G, discriminators, regressor R, checkpoints, ONNX."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from avatarsdk.errors import InputError, WeightsError
from avatarsdk.nn import (
    Discriminator,
    DiscriminatorConfig,
    Discriminators,
    Generator,
    GeneratorConfig,
    Regressor,
    RegressorConfig,
    d_logistic_loss,
    decode_maps,
    encode_maps,
    g_nonsaturating_loss,
    lazy_regularization_adam,
    mix_ws,
    r1_loss,
    r1_penalty,
    sample_z,
)
from avatarsdk.nn import checkpoint

TINY = GeneratorConfig(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=16)
TINY_D = DiscriminatorConfig.for_generator(TINY)
TINY_R = RegressorConfig.for_generator(TINY, in_dim=16, hidden_dim=32)


@pytest.fixture(scope="module")
def g() -> Generator:
    gen = Generator(TINY, seed=0).eval()
    with torch.no_grad():  # a non-zero mean latent, as after training
        gen.mapping.w_avg.copy_(torch.randn(TINY.w_dim, generator=torch.Generator().manual_seed(5)))
    return gen


@pytest.fixture(scope="module")
def r(g) -> Regressor:
    reg = Regressor(TINY_R, seed=0).eval()
    reg.set_w_avg(g.w_avg)
    return reg


def _ws(g: Generator, n: int, seed: int) -> torch.Tensor:
    """W+ latents with a different w per layer (as GAN inversion produces)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return g.mapping(sample_z(n, TINY.z_dim, gen)) + 0.5 * torch.randn(n, TINY.num_ws, TINY.w_dim, generator=gen)


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


def test_num_ws_matches_the_paper():
    assert GeneratorConfig().num_ws == 14  # W+ = 14 x 512 at 256
    assert (GeneratorConfig().w_dim, GeneratorConfig().out_channels) == (512, 6)
    assert TINY.num_ws == 6
    assert GeneratorConfig(resolution=4).num_ws == 2


@pytest.mark.parametrize("kw", [dict(resolution=17), dict(resolution=2), dict(z_dim=0), dict(w_dim=-1),
                                dict(offset_scale_m=0.0), dict(w_avg_beta=1.0), dict(mapping_layers=True),
                                dict(channel_max=1.5)])
def test_bad_generator_config(kw):
    with pytest.raises(InputError):
        GeneratorConfig(**kw)


def test_bad_other_configs():
    with pytest.raises(InputError):
        DiscriminatorConfig(resolution=12)
    with pytest.raises(InputError):
        RegressorConfig(in_dim=0)
    with pytest.raises(InputError):
        Discriminators(dataclasses.replace(TINY_D, in_channels=3))
    with pytest.raises(InputError):
        Generator(TINY_D)


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------


def test_generator_shapes_and_finite(g):
    z = sample_z(3, TINY.z_dim, 0)
    with torch.no_grad():
        ws = g.mapping(z)
        maps = g.synthesis(ws)
    assert ws.shape == (3, TINY.num_ws, TINY.w_dim)
    assert maps.shape == (3, 6, 16, 16) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.std() > 0
    torch.testing.assert_close(g(z), maps, rtol=0, atol=0)


def test_generator_rejects_bad_shapes(g):
    with pytest.raises(InputError):
        g.mapping(torch.zeros(2, TINY.z_dim + 1))
    with pytest.raises(InputError):
        g.synthesis(torch.zeros(2, TINY.num_ws - 1, TINY.w_dim))


def test_generator_is_deterministic():
    a, b, c = Generator(TINY, seed=3), Generator(TINY, seed=3), Generator(TINY, seed=4)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    z = sample_z(2, TINY.z_dim, seed=11)
    assert torch.equal(z, sample_z(2, TINY.z_dim, seed=11))
    with torch.no_grad():
        assert torch.equal(a.eval()(z), b.eval()(z))
        assert not torch.allclose(a(z), c.eval()(z))


def test_no_noise_inputs(g):
    names = [n for n, _ in g.named_parameters()] + [n for n, _ in g.named_buffers()]
    assert not [n for n in names if "noise" in n.lower()]
    assert [n for n, _ in g.named_buffers()] == ["mapping.w_avg"]
    ws = _ws(g, 2, 0)
    with torch.no_grad():
        first = g.synthesis(ws)
        torch.manual_seed(123)  # the global RNG must not matter
        second = g.synthesis(ws)
        g.synthesis.train()
        third = g.synthesis(ws)
        g.synthesis.eval()
    assert torch.equal(first, second) and torch.equal(first, third)


def test_style_mixing_keeps_coarse_features(g):
    ws1, ws2 = _ws(g, 2, 1), _ws(g, 2, 2)
    cutoff = 3  # ws[0..2] drive the 4x4 conv and both 8x8 convs
    mixed = mix_ws(ws1, ws2, cutoff)
    assert torch.equal(mixed[:, :cutoff], ws1[:, :cutoff]) and torch.equal(mixed[:, cutoff:], ws2[:, cutoff:])
    feats = []
    hook = g.synthesis.convs1[0].register_forward_hook(lambda m, i, o: feats.append(o))  # 8x8 features
    try:
        with torch.no_grad():
            out1, out2, out_mixed = g.synthesis(ws1), g.synthesis(ws2), g.synthesis(mixed)
    finally:
        hook.remove()
    assert torch.equal(feats[2], feats[0])  # coarse features come from ws1 only
    assert not torch.allclose(feats[2], feats[1])
    assert (out_mixed - out1).abs().max() > 1e-4 and (out_mixed - out2).abs().max() > 1e-4
    with torch.no_grad():
        torch.testing.assert_close(g.synthesis(mix_ws(ws1, ws2, cutoff)), out_mixed, rtol=0, atol=0)
    assert torch.equal(mix_ws(ws1, ws2, 0), ws2) and torch.equal(mix_ws(ws1, ws2, TINY.num_ws), ws1)
    with pytest.raises(InputError):
        mix_ws(ws1, ws2, TINY.num_ws + 1)
    with pytest.raises(InputError):
        mix_ws(ws1, ws2[:1], 2)


def test_truncation(g):
    z = sample_z(4, TINY.z_dim, 7)
    with torch.no_grad():
        ws0 = g.mapping(z, truncation_psi=0.0)
        torch.testing.assert_close(ws0, g.w_avg.expand(4, TINY.num_ws, -1), rtol=0, atol=1e-6)
        torch.testing.assert_close(g.mean_ws(), ws0[:1])
        w1, wh = g.mapping(z), g.mapping(z, truncation_psi=torch.tensor(0.5))
        torch.testing.assert_close(wh, g.w_avg + 0.5 * (w1 - g.w_avg))


def test_w_avg_tracks_the_mean_in_training_only():
    gen = Generator(dataclasses.replace(TINY, w_avg_beta=0.5), seed=0)
    z = sample_z(8, TINY.z_dim, 1)
    with torch.no_grad():
        gen.eval()
        gen.mapping(z)
        assert torch.equal(gen.w_avg, torch.zeros(TINY.w_dim))
        w = gen.mapping(z)[:, 0].mean(0)
        gen.train()
        gen.mapping(z)
    torch.testing.assert_close(gen.w_avg, 0.5 * w)


def test_encode_decode_maps_round_trip():
    gen = torch.Generator().manual_seed(0)
    albedo = torch.rand(2, 3, 8, 8, generator=gen)
    offsets = 0.02 * torch.randn(2, 3, 8, 8, generator=gen)
    maps = encode_maps(albedo, offsets, TINY)
    assert maps.shape == (2, 6, 8, 8)
    a, o = decode_maps(maps, TINY)
    torch.testing.assert_close(a, albedo)
    torch.testing.assert_close(o, offsets)
    with pytest.raises(InputError):
        decode_maps(maps[:, :5], TINY)


def test_modulated_conv_matches_per_sample_weights():
    from avatarsdk.nn.stylegan import modulated_conv2d

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    weight = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    styles = torch.rand(2, 3, generator=gen, dtype=torch.float64) + 0.5
    for demod in (True, False):
        ref = []
        for b in range(2):  # the StyleGAN2 definition: modulate, demodulate, convolve each sample
            w = weight * styles[b][None, :, None, None]
            if demod:
                w = w * (w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8).rsqrt()
            ref.append(torch.nn.functional.conv2d(x[b:b + 1], w, padding=1))
        torch.testing.assert_close(modulated_conv2d(x, weight, styles, demod, 1), torch.cat(ref))
    assert torch.autograd.gradcheck(lambda a, w, s: modulated_conv2d(a, w, s, True, 1),
                                    (x[:, :, :3, :3].clone().requires_grad_(), weight.clone().requires_grad_(),
                                     styles.clone().requires_grad_()))


def test_minibatch_stddev_reference():
    from avatarsdk.nn.stylegan import minibatch_stddev

    x = torch.randn(6, 4, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = minibatch_stddev(x, group_size=4, num_channels=1)  # 6 samples -> groups of 3: {0, 2, 4}, {1, 3, 5}
    assert out.shape == (6, 5, 2, 2) and torch.equal(out[:, :4], x)
    for members in ([0, 2, 4], [1, 3, 5]):
        std = (x[members].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        for i in members:
            torch.testing.assert_close(out[i, 4], std.expand(2, 2))


# ---------------------------------------------------------------------------
# Discriminators and losses
# ---------------------------------------------------------------------------


def test_discriminators_shapes_and_gradients(g):
    d = Discriminators(TINY_D, seed=0)
    x = g(sample_z(3, TINY.z_dim, 0)).detach().requires_grad_(True)  # batch 3: mbstd groups of 3
    logits = d(x)
    assert [tuple(lg.shape) for lg in logits] == [(3,), (3,), (3,)]
    assert all(torch.isfinite(lg).all() for lg in logits)
    d_logistic_loss(logits, [lg.detach() for lg in logits]).backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert x.grad.abs().sum() > 0
    # The individual discriminators see only their channels.
    assert d.albedo.cfg.in_channels == 3 and d.position.cfg.in_channels == 3 and d.joint.cfg.in_channels == 6
    x2 = x.detach().clone()
    x2[:, 3:] += 1.0
    with torch.no_grad():
        assert torch.equal(d.albedo(x2[:, :3]), d(x2)[0]) and torch.equal(d(x2)[0], d(x.detach())[0])
    with pytest.raises(InputError):
        Discriminator(TINY_D)(x[:, :3])


def test_generator_gets_gradients_through_discriminators():
    gen, d = Generator(TINY, seed=1), Discriminators(TINY_D, seed=1)
    g_nonsaturating_loss(d(gen(sample_z(2, TINY.z_dim, 0)))).backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_loss_reference_values():
    zero = torch.zeros(4)
    torch.testing.assert_close(g_nonsaturating_loss(zero), torch.tensor(np.log(2.0), dtype=torch.float32))
    torch.testing.assert_close(d_logistic_loss([zero] * 3, [zero] * 3), torch.tensor(6 * np.log(2.0),
                                                                                       dtype=torch.float32))
    with pytest.raises(InputError):
        d_logistic_loss([zero] * 3, [zero] * 2)
    lr, betas = lazy_regularization_adam(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17) and betas[1] == pytest.approx(0.99 ** (16 / 17))


def test_r1_penalty_matches_a_linear_discriminator():
    # D(x) = sum(a * x): the gradient is a, so R1 = ||a||^2 for every sample.
    a = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    pen = r1_penalty(x, (x * a).sum(dim=[1, 2, 3]))
    torch.testing.assert_close(pen, a.square().sum())
    with pytest.raises(InputError):
        r1_penalty(x.detach(), torch.zeros(4))


def test_r1_loss_positive_finite_and_differentiable(g):
    d = Discriminators(TINY_D, seed=0)
    real = g(sample_z(4, TINY.z_dim, 3)).detach()
    loss = r1_loss(d, real, gamma=1.0, interval=4)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = [p.grad for p in d.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    with pytest.raises(InputError):
        r1_loss(d, real, gamma=1.0, interval=0)


def test_few_training_steps_reduce_losses():
    gen = Generator(TINY, seed=2)
    z = sample_z(2, TINY.z_dim, 0)
    target = encode_maps(torch.full((2, 3, 16, 16), 0.6), torch.zeros(2, 3, 16, 16), TINY)
    opt = torch.optim.Adam(gen.parameters(), lr=0.01, betas=(0.0, 0.99))
    losses = []
    for _ in range(6):
        loss = (gen(z) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]

    d = Discriminators(TINY_D, seed=2)
    rng = torch.Generator().manual_seed(0)
    real = target.repeat(2, 1, 1, 1) + 0.1 * torch.randn(4, 6, 16, 16, generator=rng)
    fake = torch.randn(4, 6, 16, 16, generator=rng)
    opt_d = torch.optim.Adam(d.parameters(), lr=0.002, betas=(0.0, 0.99))
    d_losses = []
    for _ in range(6):
        loss = d_logistic_loss(d(real), d(fake))
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
        d_losses.append(loss.item())
    assert d_losses[-1] < d_losses[0]


# ---------------------------------------------------------------------------
# Regressor
# ---------------------------------------------------------------------------


def test_regressor_shapes_and_mean(g, r):
    e = torch.randn(5, TINY_R.in_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ws = r(e)
    assert ws.shape == (5, TINY.num_ws, TINY.w_dim) and torch.isfinite(ws).all()
    assert TINY_R.num_layers == 4 and len(r.layers) == 4
    assert sum(isinstance(m, torch.nn.Linear) for m in r.modules()) == 4
    # With a zero last layer R outputs exactly the mean latent.
    flat = Regressor(dataclasses.replace(TINY_R, out_init_gain=0.0))
    flat.set_w_avg(g.w_avg)
    with torch.no_grad():
        torch.testing.assert_close(flat(e), g.mean_ws().expand(5, -1, -1), rtol=0, atol=0)
        # The embedding's scale does not matter (it is L2-normalised).
        torch.testing.assert_close(r(3.0 * e), ws)
        assert g.synthesis(ws).shape == (5, 6, 16, 16)
    per_layer = torch.randn(TINY.num_ws, TINY.w_dim)
    flat.set_w_avg(per_layer)
    assert torch.equal(flat.w_avg, per_layer)
    with pytest.raises(InputError):
        flat.set_w_avg(torch.zeros(3))
    with pytest.raises(InputError):
        r(torch.zeros(2, TINY_R.in_dim + 1))


def test_regressor_facenet_size_and_gradients():
    reg = Regressor(RegressorConfig(in_dim=512, num_ws=4, w_dim=8, hidden_dim=16))
    out = reg(torch.randn(2, 512))
    assert out.shape == (2, 4, 8)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in reg.parameters())


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, g, r):
    sha = checkpoint.save(tmp_path / "g.pt", g)
    assert sha == checkpoint.file_sha256(tmp_path / "g.pt")
    ck = checkpoint.load(tmp_path / "g.pt", sha256=sha, kind="generator")
    assert ck.kind == "generator" and ck.config == TINY and ck.sha256 == sha and not ck.model.training
    z = sample_z(2, TINY.z_dim, 9)
    with torch.no_grad():
        assert torch.equal(ck.model(z, 0.7), g(z, 0.7))
    assert torch.equal(ck.model.w_avg, g.w_avg)

    checkpoint.save(tmp_path / "r.pt", r)
    rk = checkpoint.load(tmp_path / "r.pt", kind="regressor")
    e = torch.randn(2, TINY_R.in_dim)
    with torch.no_grad():
        assert torch.equal(rk.model(e), r(e))

    d = Discriminators(TINY_D, seed=4)
    checkpoint.save(tmp_path / "d.pt", d)
    dk = checkpoint.load(tmp_path / "d.pt")
    x = torch.randn(2, 6, 16, 16)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(dk.model(x), d.eval()(x)))


def test_checkpoint_extra_optimizer_state(tmp_path):
    gen = Generator(TINY, seed=0)
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    gen(sample_z(2, TINY.z_dim, 0)).mean().backward()
    opt.step()
    checkpoint.save(tmp_path / "g.pt", gen, extra={"step": 1, "opt": opt.state_dict(), "note": "x"})
    ck = checkpoint.load(tmp_path / "g.pt")
    assert ck.extra["step"] == 1 and ck.extra["note"] == "x"
    opt2 = torch.optim.Adam(ck.model.parameters(), lr=1e-3)
    opt2.load_state_dict(ck.extra["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(InputError):
        checkpoint.save(tmp_path / "bad.pt", gen, extra={"fn": print})


def test_checkpoint_rejects_bad_files(tmp_path, g):
    path = tmp_path / "g.pt"
    sha = checkpoint.save(path, g)
    with pytest.raises(WeightsError, match="sha256"):
        checkpoint.load(path, sha256="0" * 64)
    with pytest.raises(WeightsError, match="expected a regressor"):
        checkpoint.load(path, kind="regressor")
    with pytest.raises(WeightsError):
        checkpoint.load(tmp_path / "missing.pt")

    data = bytearray(path.read_bytes())
    # Tamper with the weights: the largest stored tensor sits in the middle of the archive.
    weight = g.synthesis.conv4.weight.detach().numpy().tobytes()
    at = bytes(data).find(weight[:64])
    assert at > 0
    data[at + 10] ^= 0xFF
    tampered = tmp_path / "tampered.pt"
    tampered.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        checkpoint.load(tampered, sha256=sha)
    with pytest.raises(WeightsError, match="digest"):
        checkpoint.load(tampered)  # caught by the embedded digest even without a registry sha
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: len(data) // 2])
    with pytest.raises(WeightsError):
        checkpoint.load(truncated)


def _write_payload(path, **changes):
    gen = Generator(TINY, seed=0)
    state = gen.state_dict()
    payload = {"format": 1, "kind": "generator", "config": dataclasses.asdict(TINY), "state_dict": state,
               "state_sha256": checkpoint.state_sha256(state)}
    payload.update(changes)
    buf = io.BytesIO()
    torch.save(payload, buf)
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("changes, message", [
    (dict(format=2), "format"),
    (dict(kind="vae"), "kind"),
    (dict(config={**dataclasses.asdict(TINY), "resolution": 17}), "config"),
    (dict(config={**dataclasses.asdict(TINY), "unknown": 1}), "config"),
    (dict(config={**dataclasses.asdict(TINY), "resolution": 32}), "state dict"),
    (dict(state_sha256="0" * 64), "digest"),
])
def test_checkpoint_rejects_bad_payloads(tmp_path, changes, message):
    with pytest.raises(WeightsError, match=message):
        checkpoint.load(_write_payload(tmp_path / "x.pt", **changes))


# ---------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------


def _rel(a: np.ndarray, b: torch.Tensor) -> float:
    b = b.detach().numpy()
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    return tmp_path_factory.mktemp("onnx")


def test_onnx_generator_parity(onnx_dir, g):
    from avatarsdk.nn.onnx import OnnxModel, export_generator

    export_generator(g, onnx_dir / "g_z.onnx")
    export_generator(g, onnx_dir / "g_ws.onnx", input="ws")
    export_generator(g, onnx_dir / "g_z07.onnx", truncation_psi=0.7)
    assert not g.training and not g.mapping.training  # export leaves the modes alone
    z = sample_z(3, TINY.z_dim, 21)  # exported with batch 2: the batch axis is dynamic
    ws = _ws(g, 3, 22)
    gz = OnnxModel(onnx_dir / "g_z.onnx", intra_op_num_threads=1)
    assert gz.input_names == ["z", "psi"] and gz.output_names == ["maps"]
    assert gz.providers[-1] == "CPUExecutionProvider"
    with torch.no_grad():
        assert _rel(gz.run(z=z, psi=1.0)["maps"], g(z)) < 1e-4
        assert _rel(gz(z, 0.5), g(z, 0.5)) < 1e-4
        assert _rel(OnnxModel(onnx_dir / "g_z07.onnx", intra_op_num_threads=1)(z), g(z, 0.7)) < 1e-4
        assert _rel(OnnxModel(onnx_dir / "g_ws.onnx", intra_op_num_threads=1)(ws), g.synthesis(ws)) < 1e-4
    with pytest.raises(InputError):
        gz.run(z=z)
    with pytest.raises(InputError):
        export_generator(g, onnx_dir / "bad.onnx", input="ws", truncation_psi=0.5)


def test_onnx_regressor_parity(onnx_dir, r):
    from avatarsdk.nn.onnx import OnnxModel, export_regressor

    export_regressor(r, onnx_dir / "r.onnx")
    m = OnnxModel(onnx_dir / "r.onnx", providers=["CPUExecutionProvider"], intra_op_num_threads=1)
    e = torch.randn(4, TINY_R.in_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert _rel(m(e), r(e)) < 1e-4
    assert m.output_names == ["ws"]

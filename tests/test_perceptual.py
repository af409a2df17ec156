"""ST-LPIPS with our own AlexNet / VGG16 stacks, checked against the stlpips-pytorch reference."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import EXAMPLE
from avatarsdk import pretrained
from avatarsdk.errors import InputError, WeightsError
from avatarsdk.nn.perceptual import BlurPool, PerceptualLoss, perceptual_distance


@pytest.fixture(scope="module")
def alex():
    return PerceptualLoss.load("alex")


@pytest.fixture(scope="module")
def astronaut256() -> torch.Tensor:
    from avatarsdk.photo import load_photo

    img = torch.from_numpy(load_photo(EXAMPLE).image.copy())
    return F.interpolate(img.permute(2, 0, 1)[None].float() / 255.0, size=(256, 256), mode="area")


def _blur(x: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    k = torch.arange(-6, 7, dtype=x.dtype)
    g = torch.exp(-k ** 2 / (2 * sigma * sigma))
    g = g / g.sum()
    y = F.conv2d(F.pad(x, (6, 6, 0, 0), mode="reflect"), g.view(1, 1, 1, 13).repeat(3, 1, 1, 1), groups=3)
    return F.conv2d(F.pad(y, (0, 0, 6, 6), mode="reflect"), g.view(1, 1, 13, 1).repeat(3, 1, 1, 1), groups=3)


@pytest.fixture()
def reference(monkeypatch):
    """The package's own LPIPS class, imported with its unusable imports stubbed.

    stlpips_pytorch imports torchvision (broken here), IPython and torchsummary at
    module level but uses none of them for the shift-tolerant networks.
    """
    stubs = {
        "torchvision": {"models": types.ModuleType("torchvision.models")},
        "IPython": {"embed": lambda *a, **k: None},
        "torchsummary": {"summary": lambda *a, **k: None},
    }
    for name, attrs in stubs.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
    for name in [n for n in sys.modules if n.startswith("stlpips_pytorch")]:
        monkeypatch.delitem(sys.modules, name)
    stlpips = importlib.import_module("stlpips_pytorch.stlpips")
    yield lambda net: stlpips.LPIPS(net=net, variant="shift_tolerant", verbose=False).eval()
    for name in [n for n in sys.modules if n.startswith("stlpips_pytorch")]:
        sys.modules.pop(name, None)


def test_identical_images_give_zero(alex, astronaut256):
    with torch.no_grad():
        d = alex(astronaut256, astronaut256.clone())
    assert d.shape == (1,) and float(d) == 0.0


def test_shift_is_small_and_blur_is_large(alex, astronaut256):
    x = astronaut256
    with torch.no_grad():
        shift = float(alex(x, torch.roll(x, 2, dims=3)))
        blur = float(alex(x, _blur(x)))
    assert shift == pytest.approx(0.014174, abs=1e-4)  # OFFLINE-MODELS.md: 0.014
    assert blur == pytest.approx(0.490054, abs=1e-4)  # (OFFLINE-MODELS' 0.36 used another blur)
    assert blur > 20 * shift


@pytest.mark.parametrize("net, size", [("alex", 96), ("vgg", 64)])
def test_matches_the_reference_implementation(reference, net, size):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, size, size + 8, generator=gen)
    b = (a + 0.1 * torch.randn(2, 3, size, size + 8, generator=gen)).clamp(0, 1)
    ours = PerceptualLoss.load(net)
    ref = reference(net)
    with torch.no_grad():
        expected = ref(a, b, normalize=True).flatten()
        got = ours(a, b)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert float(expected.min()) > 0


def test_spatial_map_matches_the_reference(reference, alex):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(1, 3, 64, 64, generator=gen), torch.rand(1, 3, 64, 64, generator=gen)
    ref = reference("alex")
    ref.spatial = True
    with torch.no_grad():
        expected = ref(a, b, normalize=True)
        got = alex(a, b, spatial=True)
    assert got.shape == (1, 1, 64, 64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_gradient_flows_and_is_symmetric(alex):
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 64, 64, generator=gen, requires_grad=True)
    b = torch.rand(1, 3, 64, 64, generator=gen)  # broadcast over a's batch
    d = alex(a, b)
    assert d.shape == (2,)
    d.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert all(p.grad is None for p in alex.parameters())
    with torch.no_grad():
        torch.testing.assert_close(alex(a, b), alex(b.expand(2, -1, -1, -1), a))


def test_blurpool_gradcheck_and_size():
    pool = BlurPool(2).double()
    x = torch.rand(1, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert pool(x).shape == (1, 2, 5, 4)  # (n + 1) // 2 + 1
    assert torch.autograd.gradcheck(pool, (x,))


def test_bad_inputs(alex):
    with pytest.raises(InputError):
        alex(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 32))
    with pytest.raises(InputError):
        alex(torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64))
    with pytest.raises(InputError, match="32"):
        alex(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16))
    with pytest.raises(InputError, match="unknown perceptual net"):
        PerceptualLoss.load("squeeze")


def test_bad_weight_files(tmp_path):
    path = pretrained.locate("stlpips_alex")
    with pytest.raises(WeightsError, match="does not match"):
        PerceptualLoss.load("alex", path, sha256="0" * 64)
    with pytest.raises(WeightsError, match="sha256"):  # the alex file is not the vgg file
        PerceptualLoss.load("vgg", path)
    with pytest.raises(WeightsError, match="not an ST-LPIPS vgg checkpoint"):
        PerceptualLoss.load("vgg", path, sha256=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = PerceptualLoss()
    with pytest.raises(WeightsError, match="missing"):
        model.load_checkpoint_state({k: v for k, v in state.items() if k != "lin2.model.1.weight"})
    bad = dict(state)
    bad["net.slice2.5.weight"] = bad["net.slice2.5.weight"][:, :32]
    with pytest.raises(WeightsError, match="does not match"):
        model.load_checkpoint_state(bad)
    truncated = tmp_path / "alex.pth"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="not a readable"):
        PerceptualLoss.load("alex", truncated, sha256=None)


def test_cached_function(astronaut256):
    x = astronaut256[..., :64, :64]
    d = perceptual_distance(x, torch.roll(x, 1, dims=2))
    assert d.shape == (1,) and 0 < float(d) < 0.2
    assert np.isfinite(d.detach().numpy()).all()

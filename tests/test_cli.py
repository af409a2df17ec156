"""The command line through Typer's CliRunner: happy paths and exit code 2 on user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avatarsdk.cli import app
from avatarsdk.rigs.model import ARKIT_NAMES

runner = CliRunner()


@pytest.fixture(scope="module")
def glb(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "a.glb"
    r = runner.invoke(app, ["random", "--seed", "1", "-o", str(out), "--texture-size", "256"])
    assert r.exit_code == 0, r.output
    return out


def test_random_is_deterministic(glb, tmp_path):
    again = tmp_path / "b.glb"
    r = runner.invoke(app, ["random", "--seed", "1", "-o", str(again), "--texture-size", "256"])
    assert r.exit_code == 0
    assert again.read_bytes() == glb.read_bytes()
    other = tmp_path / "c.glb"
    runner.invoke(app, ["random", "--seed", "2", "-o", str(other), "--texture-size", "256"])
    assert other.read_bytes() != glb.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_random_from_the_linear_model(glb, tmp_path):
    out = tmp_path / "ict.glb"
    r = runner.invoke(app, ["random", "--source", "ict", "--seed", "1", "-o", str(out), "--texture-size", "256"])
    assert r.exit_code == 0, r.output
    assert out.read_bytes() != glb.read_bytes()


def test_info_json(glb):
    r = runner.invoke(app, ["info", str(glb), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["morph_targets"] == list(ARKIT_NAMES)
    assert info["joints"] == ["root", "neck", "head", "jaw", "eye_L", "eye_R"]
    assert len(info["materials"]) >= 4 and info["textures"]


def test_render_and_pose_changes_the_mouth(glb, tmp_path):
    neutral, posed = tmp_path / "n.png", tmp_path / "p.png"
    assert runner.invoke(app, ["render", str(glb), "-o", str(neutral), "--size", "128"]).exit_code == 0
    r = runner.invoke(app, ["render", str(glb), "-o", str(posed), "--size", "128",
                            "--pose", "jawOpen=1,eyeBlinkLeft=1,tongueOut=1"])
    assert r.exit_code == 0, r.output
    a = np.asarray(Image.open(neutral)).astype(int)
    b = np.asarray(Image.open(posed)).astype(int)
    assert a.shape == (128, 384, 3)
    diff = np.abs(a - b).sum(-1)[:, :128] > 30  # front view
    rows = np.nonzero(diff.any(1))[0]
    assert diff.sum() > 50
    assert rows.mean() > 50  # the change is in the lower half of the face, not everywhere


@pytest.mark.parametrize(
    "args, message",
    [
        (["render", "{glb}", "-o", "{tmp}/x.png", "--pose", "smile=1"], "unknown blendshape"),
        (["render", "{glb}", "-o", "{tmp}/x.png", "--pose", "jawOpen"], "bad pose entry"),
        (["render", "{glb}", "-o", "{tmp}/x.png", "--pose", "jawOpen=1e9"], "out of range"),
        (["render", "{glb}", "-o", "{tmp}/x.png", "--pose", "jawOpen=1.01"], "out of range"),
        (["render", "{glb}", "-o", "{tmp}/x.png", "--pose", "jawOpen=-0.5"], "out of range"),
        (["render", "{glb}", "-o", "{tmp}/x.png", "--pose", "jawOpen=nan"], "out of range"),
        (["render", "{glb}", "-o", "{tmp}/x.png", "--pose", "jawOpen=inf"], "out of range"),
        (["render", "{glb}", "-o", "{tmp}/x.png", "--pose", "jawOpen=-inf"], "out of range"),
        (["render", "{glb}", "-o", "{tmp}/x.png", "--size", "4"], "size"),
        (["info", "{tmp}/not_a.glb"], "not a binary glTF"),
        (["random", "-o", "{tmp}/x.glb", "--source", "ict", "--scale", "-1"], "identity_scale"),
        (["random", "-o", "{tmp}/x.glb", "--source", "stylegan"], "--source must be"),
        (["random", "-o", "{tmp}/x.glb", "--truncation", "-1"], "truncation_psi"),
        (["random", "-o", "{tmp}/x.glb", "--texture-size", "1000"], "power of two"),
        (["random", "-o", "{tmp}/x.glb", "--names", "fancy"], "names"),
        (["random", "-o", "{tmp}/x.glb", "--ict-dir", "{tmp}"], "ICT-FaceKit data not found"),
    ],
)
def test_user_errors_exit_2(glb, tmp_path, args, message):
    (tmp_path / "not_a.glb").write_bytes(b"hello")
    args = [a.format(glb=glb, tmp=tmp_path) for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.glb").exists()


def test_missing_file_is_usage_error(tmp_path):
    r = runner.invoke(app, ["info", str(tmp_path / "nope.glb")])
    assert r.exit_code == 2


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("avatarsdk ")


def test_atomic_write_mode_and_no_leftovers(tmp_path):
    import os

    from avatarsdk.files import atomic_write_bytes

    p = atomic_write_bytes(tmp_path / "sub" / "f.bin", b"abc")
    assert p.read_bytes() == b"abc"
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == 0o666 & ~umask
    assert [x.name for x in p.parent.iterdir()] == ["f.bin"]


def test_bench_unknown_method_exits_2(tmp_path):
    r = runner.invoke(app, ["bench", "fidelity", "--n", "1", "--methods", "magic", "-o", str(tmp_path)])
    assert r.exit_code == 2 and "unknown method" in r.output


def test_top_level_api_is_lazy_and_complete():
    import subprocess
    import sys

    code = "import sys, avatarsdk; assert 'torch' not in sys.modules; assert callable(avatarsdk.create)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_ict_pack_command(tmp_path):
    out = tmp_path / "pack" / "ict-pack.npz"
    r = runner.invoke(app, ["ict", "pack", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "MB" in r.output
    r = runner.invoke(app, ["ict", "where", "--ict-dir", str(out.parent)])
    assert r.exit_code == 0 and str(out.parent) in r.output


@pytest.mark.parametrize("args, message", [
    (["--parser", "pspnet"], "parser"),
    (["--parser", "bisenet", "--permissive"], "permissive"),
    (["--occluders", "wig"], "unknown occluder"),
    (["--lights", "moon"], "unknown light"),
])
def test_bench_axis_options_checked(tmp_path, args, message):
    r = runner.invoke(app, ["bench", "fidelity", "--n", "1", "--methods", "ours_fit", "-o", str(tmp_path), *args])
    assert r.exit_code == 2 and message in r.output, r.output

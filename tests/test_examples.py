"""The runnable examples in examples/ (batch_npcs.py has its own test in test_batch.py)."""

from __future__ import annotations

import json
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLE, ROOT


def _run(script: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert done.value.code == 0


def test_photo_to_package(tmp_path, monkeypatch):
    out = tmp_path / "pkg"
    _run("photo_to_unreal.py", [str(EXAMPLE), "-o", str(out), "--preset", "gltf",
                                "--texture-size", "256"], monkeypatch)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["blendshapes"]["count"] == 52
    assert list(out.glob("*.glb")) and (out / "preview.png").is_file()


def test_drive_blendshapes(tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    from avatarsdk.cli import app

    glb = tmp_path / "npc.glb"
    r = CliRunner().invoke(app, ["random", "--source", "ict", "--seed", "7", "-o", str(glb), "--texture-size", "256"])
    assert r.exit_code == 0, r.output
    png = tmp_path / "poses.png"
    _run("drive_blendshapes.py", [str(tmp_path / "npc.avatar"), "-o", str(png), "--size", "128"], monkeypatch)
    img = np.asarray(Image.open(png))
    assert img.shape == (128, 4 * 128, 3)
    tiles = [img[:, i * 128:(i + 1) * 128].astype(int) for i in range(4)]
    assert all(np.abs(t - tiles[0]).sum() > 0 for t in tiles[1:])  # every pose changes the face
    assert "smile" in capsys.readouterr().out

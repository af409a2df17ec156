"""Permissive mode: which components a run may use, and what it says it switched off."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import EXAMPLE, ROOT
from avatarsdk import pretrained
from avatarsdk.cli import app
from avatarsdk.errors import ConfigError
from avatarsdk.licensing import COMPONENTS, ENV_PERMISSIVE, permissive_from_env, resolve


def test_default_and_permissive_choice(monkeypatch):
    monkeypatch.delenv(ENV_PERMISSIVE, raising=False)
    c = resolve()
    assert (c.parser, c.perceptual, c.permissive, c.message()) == ("bisenet", True, False, "")
    assert resolve("mesh").parser == "mesh"
    p = resolve(None, True, "fit")
    assert p.parser == "mesh" and not p.perceptual and p.permissive
    assert p.message().startswith("permissive mode: switched off BiSeNet face parser")
    assert "\n" not in p.message() and "ST-LPIPS" not in p.message()
    r = resolve(None, True, "refine")
    assert len(r.switched_off) == 2 and "ST-LPIPS" in r.message()
    assert resolve("mesh", True, "infer").message().endswith("nothing switched off")
    with pytest.raises(ConfigError, match="non-commercial"):
        resolve("bisenet", True)
    with pytest.raises(ConfigError, match="parser must be one of"):
        resolve("pspnet")


def test_environment_variable(monkeypatch):
    for value, on in (("1", True), ("yes", True), ("ON", True), ("0", False), ("", False), ("false", False)):
        monkeypatch.setenv(ENV_PERMISSIVE, value)
        assert permissive_from_env() is on
        assert resolve().parser == ("mesh" if on else "bisenet")
    monkeypatch.setenv(ENV_PERMISSIVE, "maybe")
    with pytest.raises(ConfigError, match=ENV_PERMISSIVE):
        resolve()


def test_component_table_is_complete():
    """Every registered weight file belongs to one component, and every non-permissive one has a replacement."""
    named = [w for c in COMPONENTS for w in c.weights]
    assert sorted(named) == sorted(pretrained.REGISTRY)
    for c in COMPONENTS:
        assert c.permissive == (c.instead == ""), c.name
    readme = (ROOT / "README.md").read_text()
    for key in pretrained.REGISTRY:
        assert f"`{key}`" in readme, f"README's component table lacks {key}"


def test_cli_permissive_says_what_it_switched_off(tmp_path, monkeypatch):
    """The line comes first (before any work); a conflicting --parser fails with exit 2."""
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(blank)
    monkeypatch.setenv(ENV_PERMISSIVE, "1")
    r = CliRunner().invoke(app, ["create", str(blank), "-o", str(tmp_path / "out")])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert lines[0] == "permissive mode: switched off BiSeNet face parser (CelebAMask-HQ, non-commercial) -> mesh parser"
    assert "NoFaceFound" in lines[-1]
    r = CliRunner().invoke(app, ["create", str(blank), "-o", str(tmp_path / "out"), "--parser", "bisenet"])
    assert r.exit_code == 2 and "ConfigError" in r.stderr and "non-commercial" in r.stderr
    monkeypatch.delenv(ENV_PERMISSIVE)
    r = CliRunner().invoke(app, ["create", str(blank), "-o", str(tmp_path / "out"), "--parser", "bisenet",
                                 "--permissive"])
    assert r.exit_code == 2 and "ConfigError" in r.stderr
    r = CliRunner().invoke(app, ["create", str(blank), "-o", str(tmp_path / "out"), "--parser", "nope"])
    assert r.exit_code == 2 and "parser must be one of" in r.stderr
    assert not (tmp_path / "out").exists()


def test_permissive_mode_switches_the_parser(monkeypatch):
    """End to end: permissive mode fits with the mesh parser and records it; the default uses bisenet."""
    from avatarsdk.fit import FitOptions
    from avatarsdk.pipeline import create

    quick = FitOptions(rigid_steps=20, landmark_steps=30, photo_steps=((64, 8),))
    monkeypatch.setenv(ENV_PERMISSIVE, "1")
    avatar = create(EXAMPLE, texture_size=256, fit_options=quick)
    comp = avatar.meta["components"]
    assert comp["parser"] == "mesh" and comp["permissive"] is True and len(comp["switched_off"]) == 1
    assert "parse" in avatar.meta["timings_s"]
    json.dumps(avatar.meta)

"""The engine-preset table (avatarsdk.exporters.presets): one table that the CLI, batch, packages and FBX read."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from avatarsdk.batch import BATCH_PRESETS, BatchOptions
from avatarsdk.cli import app
from avatarsdk.errors import InputError
from avatarsdk.exporters import fbx, package
from avatarsdk.exporters.presets import FBX_PRESETS, PRESETS, EnginePreset, FbxPreset, get_preset, preset_names

runner = CliRunner()

# What each package is, written down independently of the table (units of the model file, up axis).
EXPECTED = {
    "unreal": (("fbx",), "centimetres", 0.01, "+Z", True),
    "unity": (("glb", "fbx"), "metres", 1.0, "+Y", True),
    "gltf": (("glb",), "metres", 1.0, "+Y", False),
    "fbx": (("fbx",), "centimetres", 0.01, "+Y", False),
    "rpm": (("glb",), "metres", 1.0, "+Y", False),
}


def test_table_entries():
    assert preset_names() == ("unreal", "unity", "gltf", "fbx", "rpm")
    for name, (formats, units, unit_metres, up, lods) in EXPECTED.items():
        p = get_preset(name)
        assert (p.name, p.formats, p.units, p.unit_metres, p.axes["up"], p.lods_default) == \
               (name, formats, units, unit_metres, up, lods)
        assert (p.fbx is not None) == ("fbx" in formats) and p.fbx_preset == (p.fbx.name if p.fbx else None)
    assert get_preset("rpm").naming == "rpm" and get_preset("rpm").visemes_default
    assert get_preset("gltf").glb_lods and not get_preset("unity").glb_lods


def test_every_reader_reads_the_one_table():
    assert package.PRESETS is PRESETS and fbx.FBX_PRESETS is FBX_PRESETS
    assert BATCH_PRESETS == tuple(PRESETS)
    assert FBX_PRESETS == {p.fbx.name: p.fbx for p in PRESETS.values() if p.fbx is not None}
    assert sorted(FBX_PRESETS) == ["fbx", "unity", "unreal"]
    for name in PRESETS:
        BatchOptions(preset=name).check()
    help_text = " ".join(runner.invoke(app, ["export", "--help"]).output.split())
    assert "--preset" in help_text and all(n in help_text for n in PRESETS)
    for flag in ("--unreal", "--unity", "--gltf", "--fbx"):
        assert flag in help_text


def test_fbx_settings_follow_the_axes():
    for p in PRESETS.values():
        if p.fbx is not None:
            assert p.fbx.unit_metres == p.unit_metres and "+" + p.fbx.up == p.axes["up"]
            s = p.fbx.exporter_settings()
            assert s["axis_up"] == p.fbx.axis_up and s["apply_scale_options"] == "FBX_SCALE_ALL"


def test_unknown_preset():
    with pytest.raises(InputError, match="unknown preset 'obj'; choose from unreal, unity, gltf, fbx, rpm"):
        get_preset("obj")
    with pytest.raises(InputError, match="preset must be one of"):
        BatchOptions(preset="obj").check()
    with pytest.raises(InputError, match="rpm preset needs ARKit"):
        BatchOptions(preset="rpm", names="ict").check()


def test_a_mistyped_entry_fails_at_import():
    with pytest.raises(ValueError, match="needs FBX settings"):
        EnginePreset("x", "X", ("fbx",), None)
    with pytest.raises(ValueError, match="disagrees"):
        EnginePreset("x", "X", ("fbx",), FbxPreset("x", 0.01, "Z", "Y", "Z"), {"up": "+Y"})
    with pytest.raises(ValueError, match="naming"):
        EnginePreset("x", "X", ("glb",), None, naming="vrm")

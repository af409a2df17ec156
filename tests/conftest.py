"""Shared paths, skips and checks of the test suite.

Test modules import these names (``from conftest import EXAMPLE, needs_bpy``):
pytest puts this folder on ``sys.path`` (rootdir-relative, no ``__init__.py``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from avatarsdk.detect import detect
from avatarsdk.errors import ConfigError
from avatarsdk.exporters.fbx import bpy_python
from avatarsdk.photo import load_photo

ROOT = Path(__file__).resolve().parents[1]
"""The repository root."""
EXAMPLE = ROOT / "examples" / "astronaut.png"
"""The example photo (public domain, NASA) every photo test starts from."""
VALIDATOR = ROOT / "node_modules" / "gltf-validator"
"""The Khronos glTF validator (npm ``gltf-validator``, pinned in package.json)."""


def has_bpy() -> bool:
    """Whether a Python with Blender's ``bpy`` is configured (FBX export and its checks)."""
    try:
        return bpy_python() is not None
    except ConfigError:
        return False


@pytest.fixture(scope="session")
def photo():
    """The example photo, loaded once."""
    return load_photo(EXAMPLE)


@pytest.fixture(scope="session")
def lm(photo):
    """The example photo's detection (478 landmarks, masks), run once."""
    return detect(photo)


needs_bpy = pytest.mark.skipif(not has_bpy(), reason="FBX needs a Python with bpy==4.5.4 and ufbx==0.0.5: run "
                                                     "`make setup-fbx` or set AVATARSDK_BPY_PYTHON")
"""Skip a test when no bpy interpreter is set up."""


# Reads the .glb from stdin, prints the validator's JSON report.
_VALIDATE_JS = r"""
const fs = require('fs');
const validator = require(process.argv[1]);
const data = new Uint8Array(fs.readFileSync(0));
validator.validateBytes(data, {maxIssues: 0, writeTimestamp: false, format: 'glb'})
  .then(report => process.stdout.write(JSON.stringify(report)),
        error => { process.stderr.write(String(error)); process.exit(3); });
"""


def validate(data: bytes) -> dict:
    """Run the Khronos glTF validator on ``data`` and return its report.

    A missing validator fails the test instead of skipping it (``make setup`` installs it).
    """
    node = shutil.which("node")
    if node is None or not (VALIDATOR / "package.json").is_file():
        pytest.fail(f"glTF validator not installed ({VALIDATOR} or node missing): run `make setup`")
    proc = subprocess.run([node, "-e", _VALIDATE_JS, str(VALIDATOR)], input=data, capture_output=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"gltf-validator failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace')[:2000]}")
    return json.loads(proc.stdout)


def assert_clean(report: dict) -> None:
    """Fail unless the validator report has 0 errors and 0 warnings."""
    issues = report["issues"]
    if issues["numErrors"] or issues["numWarnings"]:
        lines = [f"{m['severity']} {m['code']} {m.get('pointer', '')}: {m['message']}" for m in issues["messages"]]
        pytest.fail(f"validator: {issues['numErrors']} errors, {issues['numWarnings']} warnings\n" + "\n".join(lines[:50]))

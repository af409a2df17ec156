"""The one texture-size rule (avatarsdk.sizes) and where it is enforced: every CLI option, before any work."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import EXAMPLE
from avatarsdk.batch import BatchOptions
from avatarsdk.cli import app
from avatarsdk.errors import InputError
from avatarsdk.sizes import MAX_TEXTURE_SIZE, MIN_TEXTURE_SIZE, PHOTO_MIN_TEXTURE_SIZE, check_texture_size
from avatarsdk.paint import procedural_albedo

runner = CliRunner()


def test_powers_of_two_in_range_pass():
    assert check_texture_size(64) == 64 and check_texture_size(np.int64(4096)) == 4096
    assert check_texture_size(256, minimum=PHOTO_MIN_TEXTURE_SIZE) == 256
    assert (MIN_TEXTURE_SIZE, PHOTO_MIN_TEXTURE_SIZE, MAX_TEXTURE_SIZE) == (64, 256, 4096)


@pytest.mark.parametrize("bad", [0, -64, 32, 100, 1000, 8192, 128.0, "256", True, None])
def test_bad_values_raise_input_error(bad):
    with pytest.raises(InputError, match=r"power of two in \[64, 4096\]"):
        check_texture_size(bad)


def test_photo_minimum():
    with pytest.raises(InputError, match=r"\[256, 4096\], got 128"):
        check_texture_size(128, minimum=PHOTO_MIN_TEXTURE_SIZE)


def test_every_entry_point_uses_it():
    with pytest.raises(InputError, match="power of two"):
        BatchOptions(texture_size=100).check()
    with pytest.raises(InputError, match="power of two"):
        procedural_albedo(0, size=100)


@pytest.mark.parametrize("args", [
    ["random", "-o", "{tmp}/x.glb", "--texture-size", "100"],
    ["create", str(EXAMPLE), "-o", "{tmp}/out", "--texture-size", "128"],
    ["batch", "--random", "2", "-o", "{tmp}/out", "--texture-size", "8192"],
])
def test_cli_refuses_at_option_parsing(tmp_path, args):
    r = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2, r.output
    assert "InputError" in r.output and "--texture-size must be a power of two" in " ".join(r.output.split())
    assert list(tmp_path.iterdir()) == []


def test_batch_of_photos_with_128_is_refused_before_any_job(tmp_path):
    """128 is fine for generated heads but not for photos: exit 2 before a worker starts, nothing written."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "astronaut.png").write_bytes(EXAMPLE.read_bytes())
    r = runner.invoke(app, ["batch", str(photos), "-o", str(tmp_path / "out"), "--texture-size", "128"])
    assert r.exit_code == 2, r.output
    assert "InputError" in r.output and "[256, 4096], got 128" in " ".join(r.output.split())
    assert not (tmp_path / "out").exists()

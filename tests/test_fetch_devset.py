"""scripts/fetch_devset.py: the pinned table is sane, and the offline parts (the committed photo,
cached archives, turning and cropping, refusing a wrong hash) work. Nothing here downloads."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from _scripts import ROOT, load_script

fd = load_script("fetch_devset")


def test_table_is_consistent():
    ids = [p.id for p in fd.PHOTOS]
    assert len(ids) == len(set(ids))
    assert 10 <= len(ids) <= 30
    for p in fd.PHOTOS:
        src = fd.SOURCES[p.source]
        assert len(p.sha256) == 64 and int(p.sha256, 16) >= 0
        assert src.kind == "repo" or len(src.archive_sha256) == 64
        assert p.rotate_cw in (0, 90, 180, 270)
        assert p.licence in ("public-domain", "CC-BY-SA-4.0")
        assert p.attribution and p.subject and p.tags
        if p.crop is not None:
            x0, y0, x1, y1 = p.crop
            assert 0 <= x0 < x1 and 0 <= y0 < y1
    # the reserved evaluation photos are never a source
    names = {s.name for s in fd.SOURCES.values()}
    assert not names & {"insightface", "@vladmandic/face-api", "@vladmandic/human"}


def test_committed_astronaut_written_with_manifest(tmp_path):
    entries = fd.fetch(tmp_path, tmp_path / "cache", only={"astronaut"})
    assert [e["id"] for e in entries] == ["astronaut"]
    data = (tmp_path / "astronaut.png").read_bytes()
    assert hashlib.sha256(data).hexdigest() == entries[0]["sha256"] == entries[0]["file_sha256"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["photos"][0]["licence"] == "public-domain"
    assert manifest["photos"][0]["package"]["registry"] == "repo"
    sheet = fd.contact_sheet(tmp_path, entries, tile=64, cols=2)
    assert Image.open(sheet).size == (128, 64 + 30)


def test_unknown_id_refused(tmp_path):
    with pytest.raises(fd.FetchError, match="unknown photo id"):
        fd.fetch(tmp_path, tmp_path / "cache", only={"nobody"})


def test_tampered_cached_archive_refused(tmp_path):
    # A wheel of the pinned name already in the cache is used as is: its sha256 must match.
    cache = tmp_path / "cache"
    cache.mkdir()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("matplotlib/mpl-data/sample_data/grace_hopper.jpg", b"not the photo")
    (cache / "matplotlib-3.11.2-cp311-cp311-manylinux2014_x86_64.whl").write_bytes(buf.getvalue())
    with pytest.raises(fd.FetchError, match="sha256"):
        fd.fetch(tmp_path / "out", cache, only={"hopper"})
    assert not (tmp_path / "out" / "hopper.jpg").exists()


def test_main_exit_code_2_on_failure(tmp_path, capsys):
    assert fd.main(["--out", str(tmp_path), "--only", "nobody"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("FetchError:")


def _grid(w: int, h: int) -> bytes:
    """A JPEG-free test image whose pixel (x, y) encodes x and y (red = x, green = y)."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_transform_turns_clockwise_then_crops():
    data = _grid(40, 30)
    base = fd.PHOTOS[0]
    p = replace(base, member="x.png", rotate_cw=90, crop=(5, 10, 15, 30))
    out, suffix, size = fd._transform(p, data)
    assert suffix == ".png" and size == (10, 20)
    a = np.asarray(Image.open(io.BytesIO(out)))
    # 90 deg clockwise: the turned photo is 30 wide, 40 tall; turned (u, v) shows original
    # (x = v, y = 29 - u). The crop's top-left (5, 10) is original (10, 24).
    assert tuple(a[0, 0, :2]) == (10, 24)
    assert tuple(a[19, 9, :2]) == (29, 15)
    # untouched photos pass through byte for byte
    same, suffix, size = fd._transform(replace(base, member="x.png"), data)
    assert same == data and size == (40, 30)
    with pytest.raises(fd.FetchError, match="outside"):
        fd._transform(replace(base, member="x.png", crop=(0, 0, 41, 10)), data)


def test_astronaut_pin_matches_examples_readme():
    text = (ROOT / "examples" / "README.md").read_text()
    astronaut = next(p for p in fd.PHOTOS if p.id == "astronaut")
    assert astronaut.sha256 in text

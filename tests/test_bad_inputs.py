"""The generated bad-input corpus (scripts/make_bad_inputs.py) through load_photo + detect and the CLI.

Every case must end exactly as it declares: one specific AvatarError subclass
(with its message), or a valid photo in which the detector finds the face where
it is. A sample goes through ``avatarsdk create``: exit code 2, the error type
on stderr, nothing written.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avatarsdk import errors
from avatarsdk.cli import app
from avatarsdk.detect import detect
from avatarsdk.photo import load_photo
from avatarsdk.types import Photo

from _scripts import load_script

CASE_SECONDS = 10.0  # per case, load + detect; the slowest (a 36 MP decode) takes ~1 s alone


mbi = load_script("make_bad_inputs")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    cases = mbi.make_corpus(folder)
    return folder, {c.name: c for c in cases}


def _source(case):
    return case.path if case.path is not None else case.source


def _check_face(case, photo: Photo, lm) -> None:
    h, w = photo.image.shape[:2]
    assert lm.num_faces == len(case.faces), f"{lm.num_faces} faces counted, expected {len(case.faces)}"
    cx, cy = (lm.box[0] + lm.box[2]) / 2, (lm.box[1] + lm.box[3]) / 2
    side = max(lm.box[2] - lm.box[0], lm.box[3] - lm.box[1])
    dist = min(np.hypot(cx - fx, cy - fy) for fx, fy in case.faces)
    assert dist < case.face_side / 4, f"face box centre ({cx:.0f}, {cy:.0f}) is {dist:.0f} px from {case.faces}"
    assert case.face_side / 1.5 < side < case.face_side * 1.5, f"face box side {side:.0f}, expected ~{case.face_side}"
    pts = lm.points
    assert pts.shape == (478, 3) and pts.dtype == np.float32 and np.isfinite(pts).all()
    x0, y0, x1, y1 = lm.box
    pad = 0.5 * side  # the mesh includes forehead and chin beyond the detector's box
    inside = (pts[:, 0] > x0 - pad) & (pts[:, 0] < x1 + pad) & (pts[:, 1] > y0 - pad) & (pts[:, 1] < y1 + pad)
    assert inside.all(), "landmarks far from the detected face"
    assert lm.person_mask.shape == (h, w)


def run_case(case) -> str:
    """Run one case through load_photo + detect and check it; return what happened."""
    cls = errors.AvatarError if case.expect == "valid" else getattr(errors, case.expect)
    t0 = time.perf_counter()
    try:
        photo = load_photo(_source(case))
    except errors.AvatarError as e:
        assert case.stage == "load" and type(e) is cls, f"load_photo raised {type(e).__name__}: {e}"
        if case.message:
            assert re.search(case.message, str(e)), f"message {str(e)!r} does not match {case.message!r}"
        return type(e).__name__
    assert case.stage == "detect", f"load_photo accepted an input that must fail with {case.expect}"
    img = photo.image
    assert isinstance(photo, Photo) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.flags.c_contiguous
    if case.size is not None:
        assert (img.shape[1], img.shape[0]) == case.size, f"photo is {img.shape[1]}x{img.shape[0]}"
    try:
        lm = detect(photo, **case.detect_kwargs)
    except errors.AvatarError as e:
        assert type(e) is cls and case.expect != "valid", f"detect raised {type(e).__name__}: {e}"
        if case.message:
            assert re.search(case.message, str(e)), f"message {str(e)!r} does not match {case.message!r}"
        return type(e).__name__
    assert case.expect == "valid", f"detect accepted a photo that must fail with {case.expect}"
    _check_face(case, photo, lm)
    assert time.perf_counter() - t0 < CASE_SECONDS
    return "valid"


# ---------------------------------------------------------------------------
# Python API
# ---------------------------------------------------------------------------

def test_corpus_shape(corpus):
    folder, cases = corpus
    assert len(cases) >= 40
    kinds = {c.expect for c in cases.values()}
    assert {"valid", "UnreadableImage", "NoFaceFound", "MultipleFaces", "FaceTooSmall"} <= kinds
    for c in cases.values():
        assert c.expect == "valid" or issubclass(getattr(errors, c.expect), errors.AvatarError), c.name
        assert c.stage in ("load", "detect"), c.name
        assert c.path is None or c.source is None, c.name
        if c.expect == "valid":
            assert c.stage == "detect" and c.faces and c.face_side and c.size, c.name
    assert (folder / "astronaut.png").is_file()


def test_every_case_ends_as_declared(corpus, subtests):
    folder, cases = corpus
    outcomes: dict[str, int] = {}
    for case in cases.values():
        with subtests.test(msg=case.name):
            if case.skip:
                pytest.skip(case.skip)
            outcome = run_case(case)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # Nothing in the corpus may have run a shell or written next to its inputs.
    assert not (folder / "PWNED").exists() and not Path("PWNED").exists()
    assert not list(folder.rglob("*.tmp"))


def test_exif_orientations_give_the_upright_pixels(corpus):
    _, cases = corpus
    a = np.asarray(load_photo(mbi.ASTRONAUT).image)[:, 40:440].astype(np.int16)
    for o in range(1, 9):
        p = load_photo(cases[f"exif_orientation_{o}"].path)
        assert p.image.shape == (512, 400, 3), o
        diff = np.abs(p.image.astype(np.int16) - a).mean()
        assert diff < 4.0, f"orientation {o}: mean difference {diff:.1f} to the upright crop"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only meaningful as root")
def test_root_reads_mode_000_files(corpus):
    """The chmod 000 case is skipped as root; say so explicitly: root reads the file."""
    _, cases = corpus
    assert cases["no_permission"].skip and load_photo(cases["no_permission"].path).image.shape == (512, 512, 3)


# ---------------------------------------------------------------------------
# CLI: `avatarsdk create CASE -o OUT`
# ---------------------------------------------------------------------------

CLI_SAMPLE = [
    "zero_bytes", "text_named_jpg", "eps_not_accepted", "truncated_jpeg", "png_bad_crc", "bomb_png_10gp",
    "over_limit_42mp", "ztxt_bomb_png", "file_over_size_limit", "missing", "fifo", "link_to_dev_zero",
    "flat_colour", "noise", "small_face", "two_faces_refused", "shell_metachar_name", "non_utf8_name_no_face",
]

runner = CliRunner()


def _snapshot(folder: Path) -> set[str]:
    return {os.fsdecode(p.relative_to(folder)) for p in folder.rglob("*")}


def _invoke(case, out: Path):
    return runner.invoke(app, ["create", os.fsdecode(case.path), "-o", os.fsdecode(out), *case.cli_args])


@pytest.fixture(scope="module")
def cli_corpus(corpus):
    folder, cases = corpus
    # One more: a no-face photo under a name that is not UTF-8 (the error line must still print).
    extra = folder / os.fsdecode(b"no-face-\xff\xfe.png")
    extra.write_bytes((folder / "flat.png").read_bytes())
    cases = dict(cases)
    cases["non_utf8_name_no_face"] = mbi.Case(name="non_utf8_name_no_face", expect="NoFaceFound", stage="detect",
                                              what="flat photo, non-UTF-8 name", path=extra)
    return folder, cases


def test_cli_errors_exit_2_and_write_nothing(cli_corpus, tmp_path, subtests):
    folder, cases = cli_corpus
    for name in CLI_SAMPLE:
        case = cases[name]
        with subtests.test(msg=name):
            before = _snapshot(folder)
            out = tmp_path / name / "out"
            r = _invoke(case, out)
            assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
            assert r.stdout == ""
            err = " ".join(r.stderr.split())  # rich wraps at 80 columns (see test_cli_error_is_one_line)
            assert err.startswith(f"error: {case.expect}: "), r.stderr
            assert not (tmp_path / name).exists(), f"left {sorted(_snapshot(tmp_path / name))} behind"
            assert _snapshot(folder) == before, "files appeared next to the input"


def test_cli_create_in_a_subprocess_without_a_shell(cli_corpus, tmp_path):
    """The real console entry point, in its own process, on a file named with shell syntax."""
    folder, cases = cli_corpus
    case = cases["shell_metachar_name"]
    out = tmp_path / "out"
    code = "import sys; from avatarsdk.cli import main; sys.argv[0] = 'avatarsdk'; main()"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, "create", case.path.name, "-o", str(out)],
                          cwd=folder, capture_output=True, timeout=120, env=env)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert proc.stdout == b""
    # The error line (rejoined where rich wrapped it); one-line stderr is test_cli_error_is_one_line's job.
    assert f"error: NoFaceFound: {case.path.name}: no face found" in " ".join(stderr.split()), stderr
    assert "Traceback" not in stderr
    assert not out.exists() and not (folder / "PWNED").exists()


def test_cli_create_succeeds_on_an_exif_rotated_photo_with_a_unicode_name(corpus, tmp_path):
    """The one full `create` here (~10 s): EXIF orientation 6, a non-ASCII name, its files, no temp files."""
    folder, cases = corpus
    src = tmp_path / "фото повёрнутое 6.jpg"
    src.write_bytes(cases["exif_orientation_6"].path.read_bytes())
    out = tmp_path / "out dir"
    r = runner.invoke(app, ["create", str(src), "-o", str(out), "--texture-size", "256"])
    assert r.exit_code == 0, (r.output, r.exception)
    names = {p.name for p in out.iterdir()}
    assert {"avatar.glb", "fit.json", "preview.png"} <= names, names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names  # no temp files left
    assert not list(tmp_path.rglob("*.tmp"))
    import json

    report = json.loads((out / "fit.json").read_text())
    assert report["source"] == str(src) and report["fit"]["faces_detected"] == 1
    x0, y0, x1, y1 = report["fit"]["face_box"]
    assert abs((x0 + x1) / 2 - (mbi.ASTRONAUT_FACE[0] - 40)) < 26 and abs((y0 + y1) / 2 - mbi.ASTRONAUT_FACE[1]) < 26


# CLI error output: one line, the message as text, directories typed like other unreadable inputs.

def test_cli_error_is_one_line(cli_corpus, tmp_path):
    _, cases = cli_corpus
    r = _invoke(cases["zero_bytes"], tmp_path / "out")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_error_with_markup_in_the_path(cli_corpus, tmp_path):
    _, cases = cli_corpus
    case = cases["markup_in_path"]
    r = _invoke(case, tmp_path / "out")
    assert r.exit_code == 2, (r.exit_code, repr(r.exception))
    assert os.fsdecode(case.path) in "".join(r.stderr.splitlines())
    assert not (tmp_path / "out").exists()


def test_cli_directory_is_unreadable_image(cli_corpus, tmp_path):
    _, cases = cli_corpus
    r = _invoke(cases["directory"], tmp_path / "out")
    assert r.exit_code == 2 and " ".join(r.stderr.split()).startswith("error: UnreadableImage: "), r.stderr

"""`avatarsdk batch`: packages per job, typed failures, resume, SIGKILL safety, timeouts, Ray, safe names."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from conftest import EXAMPLE, ROOT
from avatarsdk.batch import BatchOptions, output_name, photo_jobs, random_jobs, run_batch
from avatarsdk.cli import app
from avatarsdk.errors import InputError
from avatarsdk.exporters.gltf_read import load_glb
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.avatarfile import load_avatar

AVATARSDK = Path(sys.executable).with_name("avatarsdk")
runner = CliRunner()
# Small and fast: ICT's linear model, 64 px skin, 32 px previews.
TINY = ["--source", "ict", "--texture-size", "64", "--preview-size", "32"]
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


def check_package(pkg: Path) -> dict:
    """Assert that a package folder is complete and valid; return its manifest."""
    manifest = json.loads((pkg / "manifest.json").read_text())
    for rel, entry in manifest["files"].items():
        data = (pkg / rel).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], rel
    glb = load_glb((pkg / f"{pkg.name}.glb").read_bytes())
    assert glb.target_names == tuple(ARKIT_NAMES) and len(glb.target_names) == 52
    assert all(p.targets.shape[0] == 52 for p in glb.primitives if p.targets.size)
    saved = (pkg / f"{pkg.name}.avatar").read_bytes()
    assert manifest["avatar"]["saved_avatar"] == {"file": f"{pkg.name}.avatar",
                                                  "sha256": hashlib.sha256(saved).hexdigest()}
    avatar = load_avatar(saved)
    assert avatar.rig.blendshape_names == tuple(ARKIT_NAMES)
    if manifest["preview"] is None:  # --preview-size 0
        assert not (pkg / "preview.png").exists()
    else:
        with Image.open(pkg / "preview.png") as im:
            assert im.size[0] > 0
    return manifest


def leftovers(out: Path) -> list[str]:
    """Temp files or folders anywhere under OUT."""
    return [str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp")]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------

NASTY = ["../../etc/passwd.jpg", "/abs/olute.png", "..jpg", "...", "-rf.jpg", " spaced  name .JPG",
         "Ünïcödé/ßtraße.png", "日本語.jpeg", "emoji😀.png", "a" * 300 + ".jpg", "A.jpg", "a.jpg", "a.png",
         "a.JPG", "sub/a.jpg", "sub_a.jpg", "con.jpg", ".hidden.jpg", "x/../y.jpg", "tab\there.png", ""]


def test_output_names_are_safe_and_distinct():
    names = [output_name(n) for n in NASTY]
    assert len(set(names)) == len(NASTY)
    assert len({n.lower() for n in names}) == len(NASTY)  # distinct on case-insensitive file systems too
    for n in names:
        assert NAME.match(n) and len(n) <= 59 and n not in (".", "..")
    assert output_name("people/Anna Smith.jpg").startswith("people_Anna_Smith-")
    assert output_name("a.jpg") == output_name("a.jpg")  # stable across runs: what resuming relies on


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=400))
def test_output_name_never_escapes(rel):
    n = output_name(rel)
    assert NAME.match(n) and len(n) <= 59
    out = Path("/tmp/out")
    assert (out / n).resolve().parent == out.resolve()


def test_photo_jobs_on_disk(tmp_path):
    photos = tmp_path / "photos"
    files = ["A.jpg", "a.jpg", "a.png", "sp ace.JPEG", "Ünï/ßtraße.webp", "deep/er/x.tif", "we..ird..jpg",
             "b" * 200 + ".png"]
    for f in files:
        (photos / f).parent.mkdir(parents=True, exist_ok=True)
        (photos / f).write_bytes(b"x")
    (photos / "notes.txt").write_text("not a photo")
    (photos / ".hidden.jpg").write_bytes(b"x")
    (photos / "..dots.jpg").write_bytes(b"x")  # hidden too
    (photos / ".git").mkdir()
    (photos / ".git" / "c.jpg").write_bytes(b"x")
    jobs = photo_jobs(photos)
    assert sorted(j.input for j in jobs) == sorted(files)
    assert len({j.name for j in jobs}) == len(files)
    for j in jobs:
        assert NAME.match(j.name) and Path(j.photo).is_file()
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no photos here")
    with pytest.raises(InputError, match="no photos"):
        photo_jobs(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder"):
        photo_jobs(photos / "A.jpg")


def test_random_jobs():
    jobs = random_jobs(3, 5, "ict")
    assert [j.seed for j in jobs] == [5, 6, 7] and jobs[0].name == "npc-ict-0000005"
    for bad in ((0, 0, "gan"), (1, -1, "gan"), (1, 0, "stylegan")):
        with pytest.raises(InputError):
            random_jobs(*bad)


# ---------------------------------------------------------------------------
# CLI: usage errors are exit code 2, before any work
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["--random", "2", "--preset", "obj"],
    ["--random", "2", "--source", "stylegan"],
    ["--random", "2", "--workers", "0"],
    ["--random", "2", "--texture-size", "100"],
    ["--random", "2", "--timeout", "-1"],
    ["--random", "2", "--backend", "dask"],
    [],
])
def test_usage_errors_exit_2(tmp_path, args):
    r = runner.invoke(app, ["batch", "-o", str(tmp_path / "out"), *args])
    assert r.exit_code == 2, r.output
    assert not any((tmp_path / "out").glob("npc-*"))


def test_photos_and_random_together_is_usage_error(tmp_path):
    r = runner.invoke(app, ["batch", str(tmp_path), "--random", "1", "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "either" in r.output


# ---------------------------------------------------------------------------
# Random batch, resume, changed options
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def random_batch(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch") / "out"
    r = runner.invoke(app, ["batch", "--random", "3", "--seed", "10", "-o", str(out), "--workers", "2", *TINY])
    assert r.exit_code == 0, r.output
    return out


def test_random_batch_packages(random_batch):
    out = random_batch
    names = ["npc-ict-0000010", "npc-ict-0000011", "npc-ict-0000012"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    for n in names:
        m = check_package(out / n)
        assert m["preset"] == "gltf" and m["avatar"]["seed"] == int(n[-2:]) and m["avatar"]["mode"] == "random"
    s = summary(out)
    assert s["complete"] and s["counts"] == {"ok": 3, "failed": 0, "skipped": 0, "timeout": 0}
    assert [r["input"] for r in s["results"]] == ["random:ict:10", "random:ict:11", "random:ict:12"]
    assert all(r["output"] == r["name"] and r["seconds"] > 0 and r["timings"]["avatar"] > 0 for r in s["results"])
    csv_rows = (out / "summary.csv").read_text().splitlines()
    assert csv_rows[0] == "name,input,output,status,error_type,error,seconds" and len(csv_rows) == 4
    assert leftovers(out) == []


def test_same_seed_same_head_as_random_command(random_batch, tmp_path):
    r = runner.invoke(app, ["random", "--source", "ict", "--seed", "11", "--texture-size", "64",
                            "-o", str(tmp_path / "h.glb")])
    assert r.exit_code == 0, r.output
    mine = load_avatar(tmp_path / "h.avatar")
    batch = load_avatar(random_batch / "npc-ict-0000011" / "npc-ict-0000011.avatar")
    np.testing.assert_array_equal(mine.vertices, batch.vertices)


def test_resume_rebuilds_only_the_missing_package(random_batch):
    import shutil

    out = random_batch
    keep = {n: (out / n / f"{n}.glb").stat().st_ino for n in ("npc-ict-0000010", "npc-ict-0000012")}
    shutil.rmtree(out / "npc-ict-0000011")
    r = runner.invoke(app, ["batch", "--random", "3", "--seed", "10", "-o", str(out), "--workers", "2", *TINY])
    assert r.exit_code == 0, r.output
    s = summary(out)
    assert s["counts"] == {"ok": 1, "failed": 0, "skipped": 2, "timeout": 0}
    assert {r["name"]: r["status"] for r in s["results"]}["npc-ict-0000011"] == "ok"
    for n, ino in keep.items():
        assert (out / n / f"{n}.glb").stat().st_ino == ino  # untouched
    check_package(out / "npc-ict-0000011")
    # Nothing left to do: every job skipped, no worker started.
    r = runner.invoke(app, ["batch", "--random", "3", "--seed", "10", "-o", str(out), *TINY])
    assert r.exit_code == 0 and summary(out)["counts"]["skipped"] == 3


def test_resume_with_other_options_is_refused(random_batch):
    r = runner.invoke(app, ["batch", "--random", "3", "--seed", "10", "-o", str(random_batch), "--source", "ict",
                            "--texture-size", "128", "--preview-size", "32"])
    assert r.exit_code == 2 and "other options" in " ".join(r.output.split())


# ---------------------------------------------------------------------------
# Photos: typed failures, exit code 1
# ---------------------------------------------------------------------------

def test_photo_batch_records_typed_failures(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "astronaut.png").write_bytes(EXAMPLE.read_bytes())
    (photos / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    rng = np.random.default_rng(0)
    sky = np.clip(rng.normal(120, 10, (256, 256, 3)), 0, 255).astype(np.uint8)  # no face anywhere
    Image.fromarray(sky).save(photos / "sky.png")
    out = tmp_path / "out"
    r = runner.invoke(app, ["batch", str(photos), "-o", str(out), "--mode", "infer", "--texture-size", "256",
                            "--preview-size", "32", "--workers", "2"])
    assert r.exit_code == 1, r.output
    rows = {row["input"]: row for row in summary(out)["results"]}
    assert rows["astronaut.png"]["status"] == "ok"
    assert (rows["notes.jpg"]["status"], rows["notes.jpg"]["error_type"]) == ("failed", "UnreadableImage")
    assert (rows["sky.png"]["status"], rows["sky.png"]["error_type"]) == ("failed", "NoFaceFound")
    assert rows["notes.jpg"]["error"] and rows["notes.jpg"]["output"] is None
    m = check_package(out / rows["astronaut.png"]["output"])
    assert m["avatar"]["source_photo_sha256"] == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [rows["astronaut.png"]["output"]]
    assert summary(out)["counts"] == {"ok": 1, "failed": 2, "skipped": 0, "timeout": 0}
    assert leftovers(out) == []
    # The failures are retried on a re-run (they left no folder); the good photo is skipped.
    r = runner.invoke(app, ["batch", str(photos), "-o", str(out), "--mode", "infer", "--texture-size", "256",
                            "--preview-size", "32", "--workers", "1"])
    assert r.exit_code == 1 and summary(out)["counts"] == {"ok": 0, "failed": 2, "skipped": 1, "timeout": 0}


# ---------------------------------------------------------------------------
# Timeouts and SIGKILL
# ---------------------------------------------------------------------------

def test_timeout_kills_the_job_and_the_batch_goes_on(tmp_path):
    out = tmp_path / "out"
    opts = BatchOptions(source="ict", texture_size=64, preview_size=32)
    t0 = time.monotonic()
    s = run_batch(random_jobs(2, 0, "ict"), out, opts, workers=2, timeout=0.2)
    assert [r.status for r in s.results] == ["timeout", "timeout"]
    assert all(r.error_type == "Timeout" and r.output is None for r in s.results)
    assert not s.all_ok and time.monotonic() - t0 < 60
    assert not any(p.is_dir() for p in out.iterdir()) and leftovers(out) == []
    assert summary(out)["counts"]["timeout"] == 2


def test_a_kill_that_lands_after_the_rename_counts_the_job_as_done(tmp_path):
    from avatarsdk.batch import killed_job_result

    job = random_jobs(2, 0, "ict")
    (tmp_path / f".tmp-{job[0].name}-x1").mkdir()  # the killed worker's temp folder
    (tmp_path / job[0].name).mkdir()  # ...and the folder it had already published
    done = killed_job_result(tmp_path, job[0], 1.5, 1.0)
    assert (done.status, done.output, done.error_type) == ("ok", job[0].name, None)
    late = killed_job_result(tmp_path, job[1], 1.5, 1.0)
    assert (late.status, late.output, late.error_type) == ("timeout", None, "Timeout")
    assert sorted(p.name for p in tmp_path.iterdir()) == [job[0].name]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _packages(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) if out.exists() else []


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and /proc")
def test_sigkill_mid_batch_then_resume(tmp_path):
    """Quick version (default suite): one SIGKILL while workers are busy, after the first package."""
    out = tmp_path / "out"
    cmd = [str(AVATARSDK), "batch", "--random", "4", "--seed", "0", "-o", str(out), "--workers", "2", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _packages(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(7).uniform(0.0, 1.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _packages(out)
    assert 1 <= len(before) <= 4
    for n in before:
        check_package(out / n)  # whatever exists after a kill is complete
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _packages(out) == [f"npc-ict-{i:07d}" for i in range(4)]
    for n in _packages(out):
        check_package(out / n)
    assert leftovers(out) == [] and summary(out)["counts"]["skipped"] == len(before)


@pytest.mark.slow  # about 100 s on 2 shared cores: seven process start-ups
@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and /proc")
def test_sigkill_at_random_moments_then_resume(tmp_path):
    out = tmp_path / "out"
    cmd = [str(AVATARSDK), "batch", "--random", "12", "--seed", "0", "-o", str(out), "--workers", "2", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(1234)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 12.0))
        children = _children(proc.pid)
        if proc.poll() is not None:
            break  # it finished before this kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        # Workers die with the batch (PR_SET_PDEATHSIG): none keeps writing into OUT.
        deadline = time.monotonic() + 10
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(c) for c in children)
        if (out / "summary.json").exists():
            s = summary(out)  # always parses: written atomically
            assert {r["status"] for r in s["results"]} <= {"ok", "skipped"}
        for pkg in (p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) if out.exists() else ():
            assert (pkg / "manifest.json").is_file() and (pkg / f"{pkg.name}.avatar").is_file()
    assert kills >= 5
    assert 0 < len(_packages(out)) < 12  # the kills landed while heads were being built
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = [f"npc-ict-{s:07d}" for s in range(12)]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    for n in names:
        check_package(out / n)
    assert leftovers(out) == []
    s = summary(out)
    assert s["complete"] and s["counts"]["ok"] + s["counts"]["skipped"] == 12


# ---------------------------------------------------------------------------
# Ray backend and the example script
# ---------------------------------------------------------------------------

def test_ray_backend(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'avatarsdk[cluster]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "out"
        opts = BatchOptions(source="ict", texture_size=64, preview_size=32)
        s = run_batch(random_jobs(3, 0, "ict"), out, opts, workers=2, backend="ray")
        assert s.counts["ok"] == 3, s.results
        for r in s.results:
            check_package(out / r.output)
        assert summary(out)["backend"] == "ray" and leftovers(out) == []
        # Same resumability: one package removed, one rebuilt.
        import shutil

        shutil.rmtree(out / "npc-ict-0000001")
        s = run_batch(random_jobs(3, 0, "ict"), out, opts, workers=2, backend="ray")
        assert s.counts == {"ok": 1, "failed": 0, "skipped": 2, "timeout": 0}
        check_package(out / "npc-ict-0000001")
    finally:
        ray.shutdown()


def test_example_script(tmp_path):
    out = tmp_path / "npcs"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "batch_npcs.py"), "--random", "2", "--source", "ict",
                        "--texture-size", "64", "--preview-size", "0", "--workers", "1", "-o", str(out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[2/2]" in r.stdout
    for n in ("npc-ict-0000000", "npc-ict-0000001"):
        assert check_package(out / n)["preview"] is None

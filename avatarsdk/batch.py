"""Batch NPC heads: a job list in, one engine package folder per job out.

A job is a photo (built with :func:`avatarsdk.pipeline.create`) or a seed
(:func:`~avatarsdk.pipeline.generated_avatar` or
:func:`~avatarsdk.pipeline.random_avatar`). Each job writes one folder
``OUT/<name>/``: the preset's package (:func:`avatarsdk.exporters.package.export_package`)
plus ``<name>.avatar``, the saved avatar it can be re-exported from. The folder
is built in a hidden ``OUT/.tmp-<name>-*`` folder and renamed into place last,
so a package folder that exists is complete by construction. That makes a
batch resumable: a job whose folder exists is skipped, and temp folders left
by a killed run are removed when the next run starts.

Jobs run in worker processes that this module starts itself (``spawn``, one
torch thread each, models loaded once per worker), so a job past its time
limit can be killed without losing the others: the worker is killed, the job
recorded as a timeout, and a fresh worker started. ``backend="ray"`` runs the
same job function as Ray tasks instead.

``OUT/summary.json`` and ``OUT/summary.csv`` record every job (input,
output, status, error type and message, seconds); they are rewritten
atomically each time a job finishes, so a killed run still leaves a valid
summary of what it finished.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
import tempfile
import time
import traceback
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

import torch

from avatarsdk import __version__, pipeline
from avatarsdk.errors import AvatarError, ConfigError, InputError
from avatarsdk.exporters.presets import PRESETS
from avatarsdk.sizes import PHOTO_MIN_TEXTURE_SIZE, check_texture_size
from avatarsdk.exporters import gltf, gltf_read, package  # noqa: F401  (loaded once per worker, before its first job)
from avatarsdk.exporters.package import export_package
from avatarsdk.files import atomic_write_bytes
from avatarsdk.pipeline import MODES, create, generated_avatar, random_avatar
from avatarsdk.rigs import load_ict
from avatarsdk.avatarfile import SUFFIX, save_avatar
from avatarsdk.files import check_output_dir
from avatarsdk.hair import choose_hair, hair_for, with_hair

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_PRESETS", "PHOTO_SUFFIXES", "SOURCES", "BatchOptions", "BatchSummary", "Job", "JobResult",
    "build_job", "killed_job_result", "output_name", "photo_jobs", "random_jobs", "run_batch",
]

BATCH_PRESETS = tuple(PRESETS)
"""The package presets a batch can build: every engine preset (:mod:`avatarsdk.exporters.presets`)."""
SOURCES = ("gan", "ict")
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
"""Files (case-insensitive suffix) a photo batch picks up; others are ignored."""
STATUSES = ("ok", "failed", "skipped", "timeout")
TMP_PREFIX = ".tmp-"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
LOCK_FILE = ".batch.lock"
CSV_FIELDS = ("name", "input", "output", "status", "error_type", "error", "seconds")
_STEM_CHARS = 48  # of the sanitized stem; with "-" and the hash a name stays far below 255 bytes
_HASH_CHARS = 10  # hex digits of sha256(relative path): 40 bits


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One head to build.

    Attributes:
        name: the output folder's name inside OUT (see :func:`output_name`);
            only ``[A-Za-z0-9_-]``, never empty, never starting with "." or "-".
        input: what the summary shows as the input: the photo's path relative
            to the photo folder (POSIX separators), or ``"random:<source>:<seed>"``.
        photo: absolute path of the photo, or None for a random head.
        seed: the random head's seed (``avatarsdk random --seed`` gives the same
            head), or None for a photo.
    """

    name: str
    input: str
    photo: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class BatchOptions:
    """What every job of a batch builds.

    Attributes:
        preset: package preset, one of :data:`BATCH_PRESETS` (FBX presets need
            ``make setup-fbx``).
        mode: photo jobs: "fit", "infer" or "refine" (see :func:`avatarsdk.pipeline.create`).
        source: random jobs: "gan" (the UV StyleGAN2) or "ict" (ICT's linear model).
        texture_size: skin texture side in pixels (power of two; photo modes need >= 256).
        preview_size: pixel size of each of the package preview's three views; 0
            writes no preview.png (about 0.4 s of CPU less per head).
        names: blendshape names, "arkit" (52) or "ict" (53).
        truncation: random gan jobs: truncation psi.
        identity_scale: random ict jobs: identity scale.
        save_compresslevel: deflate level of the saved ``.avatar`` arrays (0: stored;
            see :func:`avatarsdk.avatarfile.save_avatar`).
    """

    preset: str = "gltf"
    mode: str = "fit"
    source: str = "gan"
    texture_size: int = 1024
    preview_size: int = 256
    hair: str = "none"  # random jobs: "none", "random" or a style name (avatarsdk.hair)
    names: str = "arkit"
    truncation: float = 0.7
    identity_scale: float = 1.0
    save_compresslevel: int = 0

    def check(self) -> None:
        """Raise InputError for a value no job could build with.

        Raises:
            InputError: unknown preset, mode, source or names; bad sizes.
        """
        if self.preset not in BATCH_PRESETS:
            raise InputError(f"preset must be one of {', '.join(BATCH_PRESETS)}, got {self.preset!r}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.source not in SOURCES:
            raise InputError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.names not in ("arkit", "ict"):
            raise InputError(f"names must be arkit or ict, got {self.names!r}")
        if PRESETS[self.preset].naming == "rpm" and self.names != "arkit":
            raise InputError("the rpm preset needs ARKit blendshape names (names='arkit')")
        check_texture_size(self.texture_size, name="texture size")
        if self.preview_size != 0 and not 16 <= self.preview_size <= 2048:
            raise InputError(f"preview size must be 0 (none) or in [16, 2048], got {self.preview_size}")
        if not 0 <= self.save_compresslevel <= 9:
            raise InputError(f"save_compresslevel must be in [0, 9], got {self.save_compresslevel}")


@dataclass(frozen=True)
class JobResult:
    """What became of one job (one row of the summary).

    Attributes:
        name: the job's output name.
        input: the job's input (see :attr:`Job.input`).
        output: the package folder relative to OUT (the name), or None when none was written.
        status: "ok", "failed", "skipped" (the folder existed) or "timeout".
        error_type: the error's class name (``NoFaceFound``, ``UnreadableImage``,
            ``Timeout``, ``WorkerDied``, ...), or None.
        error: the error message, or None.
        seconds: wall time of the job in its worker (0 when skipped).
        timings: seconds per step of an ok job: "avatar" (photo fit or random
            generation, rig included), "save" (.avatar encoding), "glb",
            "preview" (glb parse and render), "package" (the whole package
            step: glb, textures, preview, manifest, files), "sync" (fsync of the
            folder).
    """

    name: str
    input: str
    output: str | None
    status: str
    error_type: str | None = None
    error: str | None = None
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BatchSummary:
    """The outcome of :func:`run_batch`.

    Attributes:
        out_dir: the output folder.
        results: one per job, in job order.
        counts: {status: number of jobs} for every status in :data:`STATUSES`.
        seconds: wall time of the whole run.
    """

    out_dir: Path
    results: tuple[JobResult, ...]
    counts: dict
    seconds: float

    @property
    def all_ok(self) -> bool:
        """True when no job failed or timed out."""
        return self.counts["failed"] == 0 and self.counts["timeout"] == 0


def output_name(relative: str) -> str:
    """The output folder name of a photo: a sanitized stem plus a hash of its relative path.

    The name holds only ``[A-Za-z0-9_-]``, starts with a letter, digit or "_",
    and is at most ``48 + 1 + 10`` characters, so no input name (unicode,
    spaces, ``..``, absolute-looking, very long) can make it escape OUT or
    collide with the batch's own files. The hash covers the exact relative path,
    so names that differ only in case or extension get different folders even
    on case-insensitive file systems.

    Args:
        relative: the photo's path relative to the photo folder, POSIX separators.

    Returns:
        e.g. ``"people_anna_smith-3f2a9c1b0d"`` for ``"people/Anna Smith.jpg"``
        (the stem keeps the case: ``"people_Anna_Smith-..."``).
    """
    digest = hashlib.sha256(relative.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    stem = relative.rsplit(".", 1)[0] if "." in relative.rsplit("/", 1)[-1] else relative
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    clean = re.sub(r"[^A-Za-z0-9]+", "_", ascii_stem).strip("_")[:_STEM_CHARS].strip("_")
    return f"{clean or 'photo'}-{digest}"


def photo_jobs(photos_dir: str | os.PathLike) -> list[Job]:
    """List the photos under a folder (recursively) as jobs, in sorted path order.

    Files whose suffix is in :data:`PHOTO_SUFFIXES` (any case) are taken; hidden
    files and folders (names starting with ".") are ignored. Whether a file
    really is an image is the job's business (an unreadable one fails with
    ``UnreadableImage``).

    Args:
        photos_dir: the folder.

    Returns:
        One :class:`Job` per photo.

    Raises:
        InputError: the folder does not exist, is not a folder, or holds no photo.
    """
    root = Path(photos_dir)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder of photos")
    jobs = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith(".") or os.path.splitext(f)[1].lower() not in PHOTO_SUFFIXES:
                continue
            path = Path(dirpath) / f
            if not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            jobs.append(Job(name=output_name(rel), input=rel, photo=str(path.resolve())))
    if not jobs:
        raise InputError(f"no photos ({', '.join(PHOTO_SUFFIXES)}) in {root}")
    return sorted(jobs, key=lambda j: j.input)


def random_jobs(count: int, seed: int, source: str = "gan") -> list[Job]:
    """Jobs for ``count`` random heads with seeds ``seed, seed + 1, ...``.

    Args:
        count: number of heads (1..1_000_000).
        seed: first seed (>= 0); head i is what ``avatarsdk random --seed <seed + i>`` makes.
        source: "gan" or "ict" (part of the name, so both can share OUT without clashing).

    Returns:
        Jobs named ``npc-<source>-<seed, 7 digits>``.

    Raises:
        InputError: count or seed out of range, unknown source.
    """
    if not 1 <= int(count) <= 1_000_000:
        raise InputError(f"--random count must be in [1, 1000000], got {count}")
    if int(seed) < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")
    if source not in SOURCES:
        raise InputError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return [Job(name=f"npc-{source}-{s:07d}", input=f"random:{source}:{s}", seed=s)
            for s in range(int(seed), int(seed) + int(count))]


# ---------------------------------------------------------------------------
# One job (runs in a worker)
# ---------------------------------------------------------------------------

def _make_avatar(job: Job, options: BatchOptions):
    if job.photo is not None:
        return create(job.photo, mode=options.mode, texture_size=options.texture_size, names=options.names)
    if options.source == "gan":
        return generated_avatar(job.seed, truncation_psi=options.truncation, names=options.names,
                                texture_size=options.texture_size)
    return random_avatar(job.seed, identity_scale=options.identity_scale, names=options.names,
                         texture_size=options.texture_size)


def _with_hair_option(avatar, job: Job, options: BatchOptions):
    """Random jobs: the avatar with ``options.hair`` grown (seeded by the job's seed); photo jobs unchanged."""
    if job.photo is not None or options.hair == "none":
        return avatar

    style, colour = choose_hair(options.hair, job.seed)
    return with_hair(avatar, style, colour, job.seed)


def _remove_job_temps(out_dir: Path, name: str) -> None:
    """Remove the temp folders of job ``name`` (left by a worker that was killed)."""
    for entry in out_dir.glob(f"{TMP_PREFIX}{name}-*"):
        shutil.rmtree(entry, ignore_errors=True)


def killed_job_result(out_dir: Path, job: Job, seconds: float, timeout: float) -> JobResult:
    """The result of ``job`` once its worker was killed for passing ``timeout``.

    The kill can land after the job renamed its package into place (the rename
    is the job's last step and publishes a complete, flushed folder): then the
    job is recorded as done. Otherwise its temp folders are removed and it is a
    timeout, with nothing left in OUT.
    """
    _remove_job_temps(out_dir, job.name)
    if (out_dir / job.name).is_dir():
        return JobResult(job.name, job.input, job.name, "ok", seconds=round(seconds, 3))
    return JobResult(job.name, job.input, None, "timeout", "Timeout",
                     f"job exceeded the time limit of {timeout:g} s and was killed", round(seconds, 3))


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk (so the rename publishes complete data)."""
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):  # folders cannot be fsynced everywhere
            fd = os.open(dirpath, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def build_job(job: Job, out_dir: str | os.PathLike, options: BatchOptions) -> JobResult:
    """Build one job's package folder ``out_dir/<job.name>`` (skip it if it exists).

    Every failure of the job is caught and returned as a result (the batch goes
    on): an :class:`~avatarsdk.errors.AvatarError` keeps its type (``NoFaceFound``,
    ``UnreadableImage``, ...); anything else is recorded with its type name and
    logged with its traceback.

    Args:
        job: the job.
        out_dir: the batch's output folder (must exist).
        options: what to build.

    Returns:
        The job's :class:`JobResult` ("ok", "failed" or "skipped").
    """
    out_dir = Path(out_dir)
    target = out_dir / job.name
    if target.is_dir():
        return JobResult(job.name, job.input, job.name, "skipped")
    t0 = time.perf_counter()
    tmp = None
    steps: dict[str, float] = {}
    try:
        avatar = _with_hair_option(_make_avatar(job, options), job, options)
        steps["avatar"] = time.perf_counter() - t0
        t = time.perf_counter()
        saved = save_avatar(avatar, compresslevel=options.save_compresslevel)
        steps["save"] = time.perf_counter() - t
        t = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f"{TMP_PREFIX}{job.name}-"))
        source = {"file": f"{job.name}{SUFFIX}", "sha256": hashlib.sha256(saved).hexdigest()}

        pkg = export_package(avatar, options.preset, tmp / job.name, name=job.name,
                             preview_size=options.preview_size, source=source, hair=hair_for(avatar))
        (pkg.path / f"{job.name}{SUFFIX}").write_bytes(saved)
        steps |= {"package": time.perf_counter() - t, "glb": pkg.seconds.get("glb", 0.0),
                  "preview": pkg.seconds.get("preview", 0.0)}
        t = time.perf_counter()
        _fsync_tree(pkg.path)
        try:
            os.rename(pkg.path, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another run (e.g. an orphaned worker of a killed one) published it first: that one is complete too.
            log.info("%s appeared while building it; keeping the existing folder", target)
        with contextlib.suppress(OSError):
            fd = os.open(out_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        steps["sync"] = time.perf_counter() - t
        return JobResult(job.name, job.input, job.name, "ok", seconds=round(time.perf_counter() - t0, 3),
                         timings={k: round(v, 3) for k, v in steps.items()})
    except AvatarError as e:
        return JobResult(job.name, job.input, None, "failed", type(e).__name__, str(e),
                         round(time.perf_counter() - t0, 3))
    except Exception as e:  # a bug or the system (MemoryError, disk full): record it, go on with the others
        log.warning("job %s (%s) raised:\n%s", job.name, job.input, traceback.format_exc())
        return JobResult(job.name, job.input, None, "failed", type(e).__name__, str(e) or repr(e),
                         round(time.perf_counter() - t0, 3))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Worker processes (local backend)
# ---------------------------------------------------------------------------

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_env() -> Iterator[None]:
    """Children started inside get one BLAS/OpenMP thread (they read these at import)."""
    old = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphans after a SIGKILL of the batch)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _warm_up(options: BatchOptions, photos: bool) -> None:
    """Load what every job needs once per worker (torch, ICT model, networks)."""
    torch.set_num_threads(1)

    load_ict()
    if (not photos and options.source == "gan") or (photos and options.mode in ("infer", "refine")):
        pipeline._generator(None)
        if photos:
            pipeline._regressor(None)


def _worker_main(conn, out_dir: str, options: BatchOptions, photos: bool, parent_pid: int) -> None:
    """Worker loop: warm up, say "ready", then build each job sent until None arrives."""
    _die_with_parent()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    try:
        _warm_up(options, photos)
    except AvatarError as e:  # missing ICT data, bad weights: no job can run
        conn.send(("fatal", type(e).__name__, str(e)))
        return
    conn.send(("ready", None, None))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        conn.send(("result", build_job(job, out_dir, options), None))


class _Worker:
    """One spawned worker process and its pipe."""

    def __init__(self, ctx, out_dir: Path, options: BatchOptions, photos: bool) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, str(out_dir), options, photos, os.getpid()),
                                   daemon=True, name="avatarsdk-batch-worker")
        with _single_threaded_env():
            self.process.start()
        child.close()
        self.ready = False
        self.job: Job | None = None
        self.started = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()


def _run_local(jobs: Sequence[Job], out_dir: Path, options: BatchOptions, workers: int, timeout: float | None,
               photos: bool, on_result: Callable[[JobResult], None]) -> None:
    """Run ``jobs`` on ``workers`` spawned worker processes; kill and replace a worker whose job times out."""
    ctx = multiprocessing.get_context("spawn")
    pending = deque(jobs)
    pool = [_Worker(ctx, out_dir, options, photos) for _ in range(min(workers, len(pending)))]
    try:
        while pending or any(w.job is not None for w in pool):
            for w in pool:
                if w.ready and w.job is None and pending:
                    w.job, w.started = pending.popleft(), time.monotonic()
                    w.conn.send(w.job)
            deadlines = [w.started + timeout for w in pool if w.job is not None and timeout]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = set(wait([w.conn for w in pool] + [w.process.sentinel for w in pool], timeout=wait_s))
            survivors = []
            for w in pool:
                result, dead = None, False
                if w.conn in ready:
                    try:
                        kind, a, b = w.conn.recv()
                    except (EOFError, OSError):
                        kind, a, b = "died", None, None
                    if kind == "ready":
                        w.ready = True
                    elif kind == "result":
                        result, w.job = a, None
                    elif kind == "fatal":
                        raise ConfigError(f"a batch worker could not start: {a}: {b}")
                    else:
                        dead = True
                elif w.process.sentinel in ready:
                    dead = True
                elif w.job is not None and timeout and time.monotonic() - w.started > timeout:
                    w.kill()  # at once: a grace period would let the job publish its folder meanwhile
                    result = killed_job_result(out_dir, w.job, time.monotonic() - w.started, timeout)
                    dead = True
                if dead:
                    w.process.join(timeout=1)
                    if result is None:
                        if not w.ready:
                            raise ConfigError(f"a batch worker exited with code {w.process.exitcode} while "
                                              f"starting (run with -v for its log)")
                        if w.job is not None:
                            result = JobResult(w.job.name, w.job.input, None, "failed", "WorkerDied",
                                               f"the worker process exited with code {w.process.exitcode} "
                                               f"(crash or out of memory)", round(time.monotonic() - w.started, 3))
                    w.kill()
                    if w.job is not None:
                        _remove_job_temps(out_dir, w.job.name)
                    if pending:
                        survivors.append(_Worker(ctx, out_dir, options, photos))
                else:
                    survivors.append(w)
                if result is not None:
                    on_result(result)
            pool = survivors
    finally:
        for w in pool:
            with contextlib.suppress(Exception):
                w.conn.send(None)  # idle workers exit; a busy one (only after an error here) is killed below
        for w in pool:
            w.process.join(timeout=2 if w.job is None else 0)
            w.kill()


# ---------------------------------------------------------------------------
# Ray backend
# ---------------------------------------------------------------------------

def _ray_task(job: Job, out_dir: str, options: BatchOptions) -> JobResult:
    torch.set_num_threads(1)
    return build_job(job, out_dir, options)


def _run_ray(jobs: Sequence[Job], out_dir: Path, options: BatchOptions, workers: int, timeout: float | None,
             address: str | None, on_result: Callable[[JobResult], None]) -> None:
    try:
        import ray  # local: optional dependency (the cluster extra); only --backend ray needs it
    except ImportError:
        raise ConfigError("--backend ray needs Ray: pip install 'avatarsdk[cluster]' (ray==2.60.0)") from None
    started_here = False
    if not ray.is_initialized():
        env = {"env_vars": {k: "1" for k in _THREAD_VARS}}
        kwargs = {"address": address} if address else {"num_cpus": workers, "include_dashboard": False}
        try:
            ray.init(runtime_env=env, log_to_driver=False, **kwargs)
        except Exception as e:  # Ray raises ConnectionError, RuntimeError, ... on a bad address or no room
            raise ConfigError(f"cannot start or reach Ray ({type(e).__name__}: {e})") from None
        started_here = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        pending = deque(jobs)
        running: dict = {}  # ObjectRef -> (job, start time)
        while pending or running:
            while pending and len(running) < workers:
                job = pending.popleft()
                running[task.remote(job, str(out_dir), options)] = (job, time.monotonic())
            wait_s = None
            if timeout:
                wait_s = max(0.0, min(t for _, t in running.values()) + timeout - time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=wait_s)
            for ref in done:
                job, t0 = running.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as e:  # the task's process died (ray.exceptions.WorkerCrashedError, ...)
                    result = JobResult(job.name, job.input, None, "failed", "WorkerDied",
                                       f"{type(e).__name__}: {e}", round(time.monotonic() - t0, 3))
                on_result(result)
            if timeout:
                now = time.monotonic()
                for ref, (job, t0) in list(running.items()):
                    if now - t0 > timeout:
                        ray.cancel(ref, force=True)
                        del running[ref]
                        with contextlib.suppress(Exception):  # let the killed task's process go first
                            ray.wait([ref], timeout=10)
                        on_result(killed_job_result(out_dir, job, now - t0, timeout))
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------
# The batch
# ---------------------------------------------------------------------------

def _lock(out_dir: Path):
    """Hold an exclusive lock on OUT (released by the kernel if the process dies)."""
    try:
        import fcntl  # local: POSIX only; elsewhere the batch runs without a lock
    except ImportError:  # not POSIX: no lock
        return None
    f = open(out_dir / LOCK_FILE, "a+b")  # noqa: SIM115 (held until the batch ends)
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise InputError(f"another batch is writing to {out_dir}") from None
    return f


def clean_stale(out_dir: str | os.PathLike) -> list[str]:
    """Remove what a killed run left in OUT: temp package folders and temp summary files.

    Call only while holding the batch lock (no other run is writing there).

    Args:
        out_dir: the batch's output folder.

    Returns:
        The names removed.
    """
    out_dir = Path(out_dir)
    removed = []
    for entry in out_dir.iterdir():
        n = entry.name
        stale = n.startswith(TMP_PREFIX) or (n.startswith((f".{SUMMARY_JSON}.", f".{SUMMARY_CSV}."))
                                             and n.endswith(".tmp"))
        if stale:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(n)
    if removed:
        log.info("removed %d stale temp entries from %s", len(removed), out_dir)
    return removed


def _options_record(options: BatchOptions, kind: str) -> dict:
    """The options that decide what a package holds (a resumed run must use the same)."""
    return {"kind": kind, **dataclasses.asdict(options)}


def _write_summary(out_dir: Path, header: dict, results: dict[str, JobResult], order: Sequence[Job],
                   complete: bool) -> None:
    rows = [dataclasses.asdict(results[j.name]) for j in order if j.name in results]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    built = [r["timings"] for r in rows if r["status"] == "ok" and r["timings"]]
    mean = {k: round(sum(t.get(k, 0.0) for t in built) / len(built), 3) for k in built[0]} if built else {}
    doc = {**header, "complete": complete, "jobs": len(order), "finished": len(rows),
           "pending": len(order) - len(rows), "counts": counts, "mean_timings_s": mean, "results": rows}
    atomic_write_bytes(out_dir / SUMMARY_JSON, json.dumps(doc, indent=1).encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out_dir / SUMMARY_CSV, buf.getvalue().encode())


def run_batch(
    jobs: Sequence[Job],
    out_dir: str | os.PathLike,
    options: BatchOptions = BatchOptions(),
    *,
    workers: int = 1,
    timeout: float | None = 600.0,
    backend: str = "local",
    ray_address: str | None = None,
    progress: Callable[[JobResult, int, int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> BatchSummary:
    """Build every job's package into ``out_dir``, skipping those already there.

    Args:
        jobs: from :func:`photo_jobs` or :func:`random_jobs` (names must be unique).
        out_dir: output folder (created if needed). Holds one folder per job,
            ``summary.json``, ``summary.csv`` and a lock file.
        options: what to build; a resumed run must use the options of the first
            one (they are recorded in summary.json).
        workers: jobs at once (worker processes, or Ray tasks in flight).
        timeout: seconds one job may take before it is killed and recorded as
            a timeout (None or 0: no limit). With the local backend the clock
            starts when the job reaches its warmed-up worker.
        backend: "local" (worker processes on this machine) or "ray".
        ray_address: Ray cluster address (default: start Ray locally with
            ``workers`` CPUs); OUT must then be on a file system every node sees.
        progress: called as each job ends, with (result, jobs ended, jobs in all).
        on_start: called once with the number of jobs when every check has passed
            (options, OUT, its lock) and work begins: where a progress display
            starts, so that a refused batch prints only its error.

    Returns:
        The :class:`BatchSummary` (also in summary.json).

    Raises:
        InputError: bad options, duplicate job names, OUT used by a running
            batch or made with other options.
        OutputError: OUT (or a folder above it) is a file, or cannot be written.
        ConfigError: Ray missing or unreachable; a worker cannot start (e.g. the
            ICT-FaceKit data or the weights are missing).
    """
    options.check()
    if backend not in ("local", "ray"):
        raise InputError(f"backend must be local or ray, got {backend!r}")
    if int(workers) < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if timeout is not None and (timeout < 0 or timeout != timeout):
        raise InputError(f"timeout must be >= 0 seconds, got {timeout}")
    timeout = float(timeout) if timeout else None
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise InputError("job names must be unique")
    photos = any(j.photo is not None for j in jobs)
    if photos:
        check_texture_size(options.texture_size, minimum=PHOTO_MIN_TEXTURE_SIZE, name="photo jobs' texture size")

    out_dir = check_output_dir(out_dir)  # OutputError: a file in the way, no permission, read-only
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lock = _lock(out_dir)
    try:
        record = _options_record(options, "photos" if photos else "random")
        previous = out_dir / SUMMARY_JSON
        if previous.is_file():
            try:
                before = json.loads(previous.read_text()).get("options")
            except (OSError, ValueError, AttributeError) as e:
                raise InputError(f"{previous} is unreadable ({e}); move it away to start over") from None
            if before is not None and before != record:
                diff = {k: (before.get(k), v) for k, v in record.items() if before.get(k) != v}
                raise InputError(f"{out_dir} holds a batch made with other options {diff} (was, now); "
                                 f"use another output folder")
        clean_stale(out_dir)
        header = {"format": "avatarsdk.batch", "format_version": 1, "sdk_version": __version__,
                  "options": record, "backend": backend, "workers": int(workers), "timeout_s": timeout,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        results: dict[str, JobResult] = {}
        todo = []
        for j in jobs:
            if (out_dir / j.name).is_dir():
                results[j.name] = JobResult(j.name, j.input, j.name, "skipped")
            else:
                todo.append(j)
        total = len(jobs)
        if on_start:
            on_start(total)
        log.info("batch: %d jobs, %d already done, %d to build with %d %s workers", total, total - len(todo),
                 len(todo), workers, backend)
        for r in list(results.values()):
            if progress:
                progress(r, len(results), total)
        _write_summary(out_dir, header, results, jobs, complete=not todo)

        def on_result(r: JobResult) -> None:
            results[r.name] = r
            if r.status in ("failed", "timeout"):
                log.warning("%s (%s): %s: %s", r.name, r.input, r.error_type, r.error)
            _write_summary(out_dir, header, results, jobs, complete=len(results) == total)
            if progress:
                progress(r, len(results), total)

        if todo:
            if backend == "local":
                _run_local(todo, out_dir, options, int(workers), timeout, photos, on_result)
            else:
                _run_ray(todo, out_dir, options, int(workers), timeout, ray_address, on_result)
        seconds = round(time.perf_counter() - t_start, 3)
        header["seconds"] = seconds
        _write_summary(out_dir, header, results, jobs, complete=True)
    finally:
        if lock is not None:
            lock.close()
    ordered = tuple(results[j.name] for j in jobs)
    counts = {s: sum(r.status == s for r in ordered) for s in STATUSES}
    return BatchSummary(out_dir, ordered, counts, seconds)

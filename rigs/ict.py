"""ICT-FaceKit Light: the one module that reads the ICT data files.

The ICT Face Model (MIT, USC Institute for Creative Technologies) ships as 154
OBJ files on one topology: the generic neutral mesh, 100 identity PCA shapes and
53 expression shapes (plus unused extras). We parse them once, vectorised, into
a compact ``.npz`` cache keyed by the sha256 of the source files, in metres.

Where the data is found, in order:

1. the ``ict_dir`` argument (the CLI's ``--ict-dir``);
2. the ``AVATARSDK_ICT_DIR`` environment variable;
3. ``../shared/ict-facekit`` beside the source checkout or the working
   directory (how this project's machines and CI hold it);
4. the user data folder where ``avatarsdk ict fetch`` puts it.

Each folder may hold the files plain (``*.obj``, as in the public repository)
or gzipped (``*.obj.gz``), directly or under ``FaceXModel/``, or only a
*pack* (``ict-pack.npz``, written by ``avatarsdk ict pack``): the parsed model
in float16, about 25 MB instead of 117 MB, for machines that get no copy of the
OBJs (a training box). A pack carries the checksum of the files it came from;
float16 rounds the offsets by at most ~10 micrometres.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarsdk.errors import DataError
from avatarsdk.files import atomic_write_bytes

log = logging.getLogger(__name__)

ENV_DIR = "AVATARSDK_ICT_DIR"
ENV_CACHE = "AVATARSDK_CACHE_DIR"
CACHE_FORMAT = 1
PACK_NAME = "ict-pack.npz"
CM_TO_M = 0.01
NUM_IDENTITY = 100
NUM_VERTICES = 26719

# ICT's 53 expression shapes in the order of vertex_indices.json["expressions"].
ICT_EXPRESSIONS: tuple[str, ...] = (
    "browDown_L", "browDown_R", "browInnerUp_L", "browInnerUp_R", "browOuterUp_L",
    "browOuterUp_R", "cheekPuff_L", "cheekPuff_R", "cheekSquint_L", "cheekSquint_R",
    "eyeBlink_L", "eyeBlink_R", "eyeLookDown_L", "eyeLookDown_R", "eyeLookIn_L",
    "eyeLookIn_R", "eyeLookOut_L", "eyeLookOut_R", "eyeLookUp_L", "eyeLookUp_R",
    "eyeSquint_L", "eyeSquint_R", "eyeWide_L", "eyeWide_R", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimple_L", "mouthDimple_R",
    "mouthFrown_L", "mouthFrown_R", "mouthFunnel", "mouthLeft", "mouthLowerDown_L",
    "mouthLowerDown_R", "mouthPress_L", "mouthPress_R", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmile_L", "mouthSmile_R", "mouthStretch_L", "mouthStretch_R",
    "mouthUpperUp_L", "mouthUpperUp_R", "noseSneer_L", "noseSneer_R",
)

# Vertex ranges of the named parts, (start, stop) with stop exclusive.
PARTS: dict[str, tuple[int, int]] = {
    "face": (0, 9409),
    "head_neck": (9409, 11248),
    "mouth_socket": (11248, 13294),
    "eye_sockets": (13294, 14062),
    "gums_tongue": (14062, 17039),
    "teeth": (17039, 21451),
    "eyeballs": (21451, 24591),
    "lacrimal_fluid": (24591, 24999),
    "eye_blend": (24999, 25047),
    "eye_occlusion": (25047, 25351),
    "eyelashes": (25351, 26719),
}

# The 68 Multi-PIE landmarks as ICT vertex indices.
LANDMARKS68: tuple[int, ...] = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608,
    3272, 4088, 3443, 268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978,
    4527, 4942, 4857, 1140, 2075, 1147, 4269, 3360, 1507, 1542, 1537, 1528, 1518,
    1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081, 0, 4275, 6200, 6213,
    6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
)

_NEUTRAL = "generic_neutral_mesh"


@dataclass(frozen=True, eq=False)
class IctData:
    """The parsed ICT model, in metres, +Y up, +Z forward.

    Attributes:
        neutral: [V, 3] float32 generic neutral vertex positions.
        identity: [100, V, 3] float32 identity PCA deltas (coefficient 1 = one std).
        expression: [53, V, 3] float32 expression deltas in ``ICT_EXPRESSIONS`` order.
        uv: [T, 2] float32 ICT texture coordinates (tiled: the integer part of u
            names the tile), OBJ convention (v up).
        poly_vertices: [P, 4] int32 polygon vertex indices (triangles repeat their last index).
        poly_uv: [P, 4] int32 polygon texture-coordinate indices, same padding.
        poly_material: [P] int8 index into ``materials``.
        materials: ICT material names in file order.
        source_sha256: checksum of the source files the cache was built from.
    """

    neutral: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    uv: np.ndarray
    poly_vertices: np.ndarray
    poly_uv: np.ndarray
    poly_material: np.ndarray
    materials: tuple[str, ...]
    source_sha256: str


def _candidate_dirs(ict_dir: str | os.PathLike | None) -> list[Path]:
    if ict_dir is not None:
        return [Path(ict_dir)]
    env = os.environ.get(ENV_DIR)
    if env:
        return [Path(env)]
    here = Path(__file__).resolve()
    dirs = [p / "shared" / "ict-facekit" for p in (here.parents[1].parent, Path.cwd().parent, Path.cwd())]
    dirs.append(user_data_dir() / "ict-facekit")
    return dirs


def user_data_dir() -> Path:
    """Return the per-user data folder (``$XDG_DATA_HOME/avatarsdk``)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "avatarsdk"


def cache_dir() -> Path:
    """Return the cache folder (``$AVATARSDK_CACHE_DIR`` or ``$XDG_CACHE_HOME/avatarsdk``)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "avatarsdk"


def _find_file(root: Path, name: str) -> Path | None:
    for folder in (root / "FaceXModel", root):
        for suffix in (".obj.gz", ".obj"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def _source_files(root: Path) -> dict[str, Path] | None:
    names = [_NEUTRAL] + [f"identity{i:03d}" for i in range(NUM_IDENTITY)] + list(ICT_EXPRESSIONS)
    found = {}
    for n in names:
        p = _find_file(root, n)
        if p is None:
            return None
        found[n] = p
    return found


def locate(ict_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder that holds the ICT-FaceKit files.

    Args:
        ict_dir: explicit folder; overrides the environment and defaults.

    Raises:
        DataError: no candidate folder holds the 154 OBJ files.
    """
    tried = _candidate_dirs(ict_dir)
    for d in tried:
        if d.is_dir() and (_source_files(d) is not None or (d / PACK_NAME).is_file()):
            return d
    raise DataError(
        "ICT-FaceKit data not found (need generic_neutral_mesh, identity000-099 and 53 "
        f"expression OBJs, or an {PACK_NAME}); looked in: {', '.join(str(d) for d in tried)}. Set {ENV_DIR} or "
        "--ict-dir, or run `avatarsdk ict fetch`."
    )


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _vertex_block(text: bytes, path: Path) -> np.ndarray:
    """Parse the contiguous ``v x y z`` block of an OBJ in one vectorised step."""
    start = text.find(b"\nv ") + 1 if not text.startswith(b"v ") else 0
    end = text.find(b"\nvt ", start)
    if start <= 0 and not text.startswith(b"v ") or end < 0:
        raise DataError(f"{path}: no vertex block followed by texture coordinates")
    tokens = text[start:end].split()
    if len(tokens) != 4 * NUM_VERTICES:
        raise DataError(f"{path}: expected {NUM_VERTICES} vertices, found {len(tokens) / 4:g}")
    arr = np.array(tokens).reshape(-1, 4)
    if not (arr[:, 0] == b"v").all():
        raise DataError(f"{path}: vertex block is interleaved with other records")
    return arr[:, 1:].astype(np.float64)


def _topology_records(text: bytes, path: Path):
    """Parse ``vt``, ``usemtl`` and ``f`` records of the neutral mesh."""
    lines = text.split(b"\n")
    vt = np.array([ln.split()[1:3] for ln in lines if ln.startswith(b"vt ")]).astype(np.float32)
    materials: list[str] = []
    polys_v, polys_t, polys_m = [], [], []
    current = -1
    for ln in lines:
        if ln.startswith(b"usemtl "):
            materials.append(ln.split()[1].decode())
            current = len(materials) - 1
        elif ln.startswith(b"f "):
            corners = [c.split(b"/") for c in ln.split()[1:]]
            if len(corners) not in (3, 4) or current < 0:
                raise DataError(f"{path}: unsupported face record {ln[:60]!r}")
            if len(corners) == 3:
                corners.append(corners[-1])
            polys_v.append([int(c[0]) - 1 for c in corners])
            polys_t.append([int(c[1]) - 1 for c in corners])
            polys_m.append(current)
    return (
        vt,
        np.asarray(polys_v, np.int32),
        np.asarray(polys_t, np.int32),
        np.asarray(polys_m, np.int8),
        tuple(materials),
    )


def _checksum(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        h.update(hashlib.sha256(files[name].read_bytes()).digest())
    return h.hexdigest()


def _parse(files: dict[str, Path], checksum: str) -> IctData:
    text = _read_bytes(files[_NEUTRAL])
    neutral = _vertex_block(text, files[_NEUTRAL])
    uv, pv, pt, pm, mats = _topology_records(text, files[_NEUTRAL])
    identity = np.stack([_vertex_block(_read_bytes(files[f"identity{i:03d}"]), files[f"identity{i:03d}"]) - neutral
                         for i in range(NUM_IDENTITY)])
    expression = np.stack([_vertex_block(_read_bytes(files[n]), files[n]) - neutral for n in ICT_EXPRESSIONS])
    f32 = lambda a: np.ascontiguousarray(a * CM_TO_M, dtype=np.float32)  # noqa: E731
    return IctData(f32(neutral), f32(identity), f32(expression), uv, pv, pt, pm, mats, checksum)


def _npz_fields(data: IctData, offsets_dtype) -> dict:
    return dict(format=np.int64(CACHE_FORMAT), neutral=data.neutral, identity=data.identity.astype(offsets_dtype),
                expression=data.expression.astype(offsets_dtype), uv=data.uv, poly_vertices=data.poly_vertices,
                poly_uv=data.poly_uv, poly_material=data.poly_material,
                materials=np.array(json.dumps(list(data.materials))), source_sha256=np.array(data.source_sha256))


def _save_cache(path: Path, data: IctData) -> None:
    buf = io.BytesIO()
    np.savez(buf, **_npz_fields(data, np.float32))
    atomic_write_bytes(path, buf.getvalue())


def _load_cache(path: Path, checksum: str) -> IctData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != CACHE_FORMAT or str(z["source_sha256"]) != checksum:
                return None
            return IctData(
                z["neutral"], z["identity"], z["expression"], z["uv"], z["poly_vertices"],
                z["poly_uv"], z["poly_material"], tuple(json.loads(str(z["materials"]))), checksum,
            )
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable ICT cache %s: %s", path, e)
        return None


def write_pack(path: str | os.PathLike, data: IctData) -> Path:
    """Write ``data`` as a float16 pack (see the module docstring); atomic. Returns the path."""
    buf = io.BytesIO()
    np.savez_compressed(buf, pack=np.int64(1), **_npz_fields(data, np.float16))
    return atomic_write_bytes(path, buf.getvalue())


def _load_pack(path: Path) -> IctData:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != CACHE_FORMAT or "pack" not in z.files:
                raise DataError(f"{path}: not an ICT pack of format {CACHE_FORMAT}")
            f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
            data = IctData(
                f32(z["neutral"]), f32(z["identity"]), f32(z["expression"]), z["uv"], z["poly_vertices"],
                z["poly_uv"], z["poly_material"], tuple(json.loads(str(z["materials"]))), str(z["source_sha256"]),
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"unreadable ICT pack {path}: {e}") from e
    if data.identity.shape != (NUM_IDENTITY, NUM_VERTICES, 3) or data.neutral.shape != (NUM_VERTICES, 3):
        raise DataError(f"{path}: ICT pack is not on the expected topology")
    log.info("loaded ICT pack %s (float16 offsets)", path)
    return data


def load_data(ict_dir: str | os.PathLike | None = None, *, use_cache: bool = True) -> IctData:
    """Load the ICT model, from the checksum-keyed cache when it is current.

    Args:
        ict_dir: folder holding the ICT-FaceKit files (see module docstring).
        use_cache: read and write the compact cache.

    Raises:
        DataError: files missing, or not on the expected topology.
    """
    root = locate(ict_dir)
    files = _source_files(root)
    if files is None:  # locate() found a pack
        return _load_pack(root / PACK_NAME)
    checksum = _checksum(files)
    cache = cache_dir() / f"ict-{checksum[:16]}.npz"
    if use_cache and cache.is_file():
        hit = _load_cache(cache, checksum)
        if hit is not None:
            return hit
    log.info("parsing ICT-FaceKit OBJs from %s", root)
    data = _parse(files, checksum)
    if data.poly_vertices.max() >= NUM_VERTICES:
        raise DataError(f"{files[_NEUTRAL]}: face indices exceed {NUM_VERTICES} vertices")
    if use_cache:
        try:
            _save_cache(cache, data)
        except OSError as e:  # a read-only cache folder must not stop the SDK
            log.warning("could not write ICT cache %s: %s", cache, e)
    return data


# ---------------------------------------------------------------------------
# Fetching the public data (for users whose machines do not hold it)
# ---------------------------------------------------------------------------

ICT_ARCHIVE_URL = "https://github.com/ICT-VGL/ICT-FaceKit/archive/refs/heads/master.zip"
MAX_ARCHIVE_BYTES = 2 * 1024**3


def fetch(dest: str | os.PathLike | None = None, *, url: str = ICT_ARCHIVE_URL, progress=None) -> Path:
    """Download ICT-FaceKit (MIT) and keep only the files the SDK reads.

    The public repository's archive is streamed to a temp file; its
    ``FaceXModel/*.obj``, ``vertex_indices.json``, material file and licence
    are extracted (paths checked, nothing outside ``dest``), then the folder is
    moved into place, so an interrupted fetch leaves nothing half-written.

    Args:
        dest: target folder (default: ``user_data_dir()/ict-facekit``).
        url: archive URL (``https://`` or ``file://``).
        progress: optional callable(bytes_done, bytes_total_or_None).

    Returns:
        The folder now holding ``FaceXModel/``.

    Raises:
        DataError: download failed, archive too large or without the model files.
    """
    dest = Path(dest) if dest is not None else user_data_dir() / "ict-facekit"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".ict-fetch-") as tmp:
        archive = Path(tmp) / "ict.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:  # noqa: S310 (fixed scheme list)
                total = r.headers.get("Content-Length")
                total = int(total) if total else None
                done = 0
                while chunk := r.read(1 << 20):
                    done += len(chunk)
                    if done > MAX_ARCHIVE_BYTES:
                        raise DataError(f"ICT archive exceeds {MAX_ARCHIVE_BYTES} bytes")
                    f.write(chunk)
                    if progress:
                        progress(done, total)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DataError(f"could not download ICT-FaceKit from {url}: {e}") from None
        staging = Path(tmp) / "ict-facekit"
        (staging / "FaceXModel").mkdir(parents=True)
        try:
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    parts = Path(info.filename).parts
                    name = parts[-1] if parts else ""
                    if info.is_dir() or ".." in parts or not name:
                        continue
                    keep_model = "FaceXModel" in parts and (name.endswith((".obj", ".mtl")) or name == "vertex_indices.json")
                    if keep_model:
                        target = staging / "FaceXModel" / name
                    elif name == "LICENSE" and len(parts) == 2:
                        target = staging / "LICENSE"
                    else:
                        continue
                    with z.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        except zipfile.BadZipFile as e:
            raise DataError(f"downloaded ICT archive is not a zip: {e}") from None
        if _source_files(staging) is None:
            raise DataError(f"archive from {url} does not hold the ICT-FaceKit model OBJs")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest

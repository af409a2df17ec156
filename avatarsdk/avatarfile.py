"""The saved avatar: one ``.avatar`` file that holds everything needed to re-export.

``avatarsdk create`` and ``avatarsdk random`` write one next to their ``.glb``;
``avatarsdk export`` reads it, so packaging for an engine never re-runs the
networks or the fitting.

Format (version 1): a ZIP archive, members stored in this order::

    avatar.json              # format tag, version, metadata, names, member checksums
    arrays/<name>.npy        # numpy arrays, loaded with allow_pickle=False
    textures/<material>.png  # 8-bit sRGB(A) PNG, lossless

``avatar.json``::

    {"format": "avatarsdk.avatar", "version": 1, "sdk_version": "0.1.0",
     "meta": {...},                                    # Avatar.meta, JSON-safe
     "topology": {"num_vertices": V, "materials": [...], "parts": {name: [start, stop]},
                  "sha256": ...},                      # checksum of the topology arrays
     "rig": {"joint_names": [...], "blendshape_names": [...]},
     "textures": {material: "textures/<material>.png"},
     "members": {path: {"bytes": n, "sha256": hex}}}   # every other member

The whole topology is stored (about 1.5 MB compressed), so a saved avatar
re-exports without the ICT-FaceKit files; ``topology.sha256`` (see
:func:`topology_sha256`) identifies the topology it was built on, and
``meta["ict_sha256"]`` the ICT-FaceKit release where the pipeline recorded it.

Files are deterministic: the same avatar gives the same bytes (fixed member
order and timestamps). Reading checks sizes before decompressing, every
checksum, every array's dtype and shape, and index ranges; any failure is an
:class:`~avatarsdk.errors.InputError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from avatarsdk import __version__
from avatarsdk.errors import InputError
from avatarsdk.files import json_safe, png_bytes
from avatarsdk.datatypes import Avatar, Rig, Skeleton, Topology

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "SUFFIX", "VERSION", "load_avatar", "save_avatar", "topology_sha256"]

FORMAT = "avatarsdk.avatar"
VERSION = 1
SUFFIX = ".avatar"

MAX_FILE_BYTES = 1 << 30
"""Largest ``.avatar`` file read (1 GiB; a 4K-texture avatar is about 40 MB)."""
MAX_MEMBER_BYTES = 512 << 20
"""Largest uncompressed member (the [K, V, 3] blendshapes are 17 MB for ICT)."""
MAX_TOTAL_BYTES = 1 << 30
"""Largest sum of uncompressed members (guards against ZIP bombs)."""
MAX_MEMBERS = 64
MAX_JSON_BYTES = 4 << 20
MAX_TEXTURE_SIDE = 8192
MAX_VERTICES = 1 << 24
MAX_BLENDSHAPES = 1024

_JSON = "avatar.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

# name -> (dtype, shape with "V", "F", "K", "J" placeholders)
_ARRAYS: dict[str, tuple[str, tuple]] = {
    "vertices": ("float32", ("V", 3)),
    "triangles": ("int32", ("F", 3)),
    "corner_uv": ("float32", ("F", 3, 2)),
    "tri_material": ("int8", ("F",)),
    "landmarks68": ("int32", (68,)),
    "head_uv": ("float32", ("V", 2)),
    "joint_parents": ("int32", ("J",)),
    "joint_positions": ("float32", ("J", 3)),
    "skin_joints": ("uint8", ("V", 4)),
    "skin_weights": ("float32", ("V", 4)),
    "blendshapes": ("float32", ("K", "V", 3)),
}
_TOPOLOGY_ARRAYS = ("triangles", "corner_uv", "tri_material", "landmarks68", "head_uv")


def topology_sha256(topology: Topology) -> str:
    """Checksum of a topology: its arrays (as stored), vertex count, materials and parts.

    Args:
        topology: any topology.

    Returns:
        64 hex digits; equal for equal topologies.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"num_vertices": int(topology.num_vertices), "materials": list(topology.materials),
                         "parts": {k: [int(a), int(b)] for k, (a, b) in topology.parts.items()}},
                        sort_keys=True).encode())
    for name in _TOPOLOGY_ARRAYS:
        dtype = _ARRAYS[name][0]
        a = np.ascontiguousarray(np.asarray(getattr(topology, name)).astype(dtype, copy=False))
        h.update(name.encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def _npy(array: np.ndarray, dtype: str) -> bytes:
    a = np.asarray(array).astype(dtype, copy=False)
    if a.dtype.kind == "f":
        a = a + a.dtype.type(0.0)  # -0.0 -> +0.0: equal values, equal bytes (the file is deterministic)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _png(image: np.ndarray) -> bytes:
    return png_bytes(image)


def _json_safe(obj):
    """JSON-compatible copy of ``obj`` (:func:`avatarsdk.files.json_safe`); meta deeper than 32 levels is refused."""
    return json_safe(obj, max_depth=32, strict=True)


def save_avatar(avatar: Avatar, *, compresslevel: int = 6) -> bytes:
    """Encode an avatar as a ``.avatar`` file (see the module docstring for the format).

    Args:
        avatar: the avatar; every texture must be uint8 [H, W, 3 or 4].
        compresslevel: deflate level (1-9) of the arrays and avatar.json; 0 stores them
            uncompressed (20 MB instead of 14 MB for an ICT head, whose blendshape deltas
            barely compress, and 0.2 s instead of 0.6 s of CPU: what ``avatarsdk batch``
            uses). Readers handle both; the PNG textures are unaffected.

    Returns:
        The file contents, deterministic for a given avatar.

    Raises:
        InputError: the avatar's arrays have shapes or dtypes the format cannot
            hold (wrong ranks, non-finite values, textures that are not 8-bit), or
            compresslevel is outside [0, 9].
    """
    if not 0 <= int(compresslevel) <= 9:
        raise InputError(f"compresslevel must be in [0, 9], got {compresslevel}")
    topo, rig, sk = avatar.topology, avatar.rig, avatar.rig.skeleton
    arrays = {
        "vertices": avatar.vertices,
        "triangles": topo.triangles,
        "corner_uv": topo.corner_uv,
        "tri_material": topo.tri_material,
        "landmarks68": topo.landmarks68,
        "head_uv": topo.head_uv,
        "joint_parents": sk.parents,
        "joint_positions": sk.positions,
        "skin_joints": rig.skin_joints,
        "skin_weights": rig.skin_weights,
        "blendshapes": rig.blendshapes,
    }
    dims = {"V": int(topo.num_vertices), "F": int(np.asarray(topo.triangles).shape[0]),
            "K": len(rig.blendshape_names), "J": len(sk.names)}
    members: list[tuple[str, bytes]] = []
    for name, (dtype, shape) in _ARRAYS.items():
        a = np.asarray(arrays[name])
        want = tuple(dims[d] if isinstance(d, str) else d for d in shape)
        if a.shape != want:
            raise InputError(f"cannot save avatar: {name} has shape {a.shape}, expected {want}")
        if a.dtype.kind == "f" and name != "head_uv" and not np.isfinite(a).all():
            raise InputError(f"cannot save avatar: {name} has non-finite values")
        members.append((f"arrays/{name}.npy", _npy(a, dtype)))
    textures = {}
    for mat, img in sorted(avatar.textures.items()):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
            raise InputError(f"cannot save avatar: texture {mat!r} must be uint8 [H, W, 3 or 4], got "
                             f"{img.dtype} {img.shape}")
        if not _safe_name(mat):
            raise InputError(f"cannot save avatar: texture name {mat!r} is not a plain name")
        path = f"textures/{mat}.png"
        textures[mat] = path
        members.append((path, _png(img)))
    header = {
        "format": FORMAT,
        "version": VERSION,
        "sdk_version": __version__,
        "meta": _json_safe(dict(avatar.meta)),
        "topology": {"num_vertices": dims["V"], "materials": list(topo.materials),
                     "parts": {k: [int(a), int(b)] for k, (a, b) in topo.parts.items()},
                     "sha256": topology_sha256(topo)},
        "rig": {"joint_names": list(sk.names), "blendshape_names": list(rig.blendshape_names)},
        "textures": textures,
        "members": {p: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in members},
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in [(_JSON, json.dumps(header, indent=1).encode()), *members]:
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            # PNGs are already compressed; deflate everything else.
            stored = path.endswith(".png") or int(compresslevel) == 0
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            z.writestr(info, data, compresslevel=None if stored else int(compresslevel))
    return buf.getvalue()


def _safe_name(name: str) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 64 and name not in (".", "..")
            and all(c.isalnum() or c in "_-." for c in name))


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

def load_avatar(source: bytes | bytearray | str | os.PathLike) -> Avatar:
    """Decode a ``.avatar`` file written by :func:`save_avatar`.

    Args:
        source: the file's bytes, or its path.

    Returns:
        The avatar, with the arrays, names, textures and meta that were saved
        (meta as JSON gives it back: tuples become lists, non-finite floats None).

    Raises:
        InputError: missing or unreadable file, not a ``.avatar`` file (e.g. a
            .glb), a newer format version, a size over the limits, a checksum
            mismatch, or arrays with the wrong dtype, shape or index range.
    """
    label = "<bytes>"
    if not isinstance(source, (bytes, bytearray)):
        path = Path(source)
        label = str(path)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise InputError(f"cannot read avatar file {path}: {e.strerror or e}") from None
        if size > MAX_FILE_BYTES:
            raise InputError(f"{path}: {size} bytes, limit {MAX_FILE_BYTES}")
        if not path.is_file():
            raise InputError(f"{path} is not a file")
        source = path.read_bytes()
    data = bytes(source)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(f"{label}: {len(data)} bytes, limit {MAX_FILE_BYTES}")
    if data[:4] != b"PK\x03\x04":
        kind = "a binary glTF file" if data[:4] == b"glTF" else "not a ZIP archive"
        raise InputError(f"{label} is not a saved avatar ({kind}); expected a {SUFFIX} file written by "
                         f"`avatarsdk create` or `avatarsdk random`")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return _read(z, label)
    except zipfile.BadZipFile as e:
        raise InputError(f"{label}: corrupt avatar file ({e})") from None
    except (zipfile.LargeZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as e:
        raise InputError(f"{label}: unreadable avatar file ({type(e).__name__}: {e})") from None


def _member(z: zipfile.ZipFile, name: str, limit: int, label: str) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise InputError(f"{label}: member {name!r} is missing") from None
    if info.file_size > limit:
        raise InputError(f"{label}: member {name!r} is {info.file_size} bytes uncompressed, limit {limit}")
    with z.open(info) as f:
        out = f.read(limit + 1)
    if len(out) > limit:
        raise InputError(f"{label}: member {name!r} exceeds {limit} bytes")
    return out


def _read(z: zipfile.ZipFile, label: str) -> Avatar:
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise InputError(f"{label}: {len(infos)} members, limit {MAX_MEMBERS}")
    total = sum(i.file_size for i in infos)
    if total > MAX_TOTAL_BYTES:
        raise InputError(f"{label}: {total} bytes uncompressed, limit {MAX_TOTAL_BYTES}")
    if _JSON not in z.namelist():
        raise InputError(f"{label} is not a saved avatar (no {_JSON} inside the archive)")
    try:
        header = json.loads(_member(z, _JSON, MAX_JSON_BYTES, label))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{label}: {_JSON} is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        fmt = header.get("format") if isinstance(header, dict) else None
        raise InputError(f"{label} is not a saved avatar (format {fmt!r}, expected {FORMAT!r})")
    version = header.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise InputError(f"{label}: format version {version!r} is not supported (this SDK reads 1..{VERSION}; "
                         f"written by avatarsdk {header.get('sdk_version')!r})")
    try:
        topo_h, rig_h, tex_h, members = header["topology"], header["rig"], header["textures"], header["members"]
        nv = int(topo_h["num_vertices"])
        materials = tuple(str(m) for m in topo_h["materials"])
        parts = {str(k): (int(a), int(b)) for k, (a, b) in topo_h["parts"].items()}
        joint_names = tuple(str(n) for n in rig_h["joint_names"])
        bs_names = tuple(str(n) for n in rig_h["blendshape_names"])
        meta = header.get("meta", {})
        if not isinstance(meta, dict) or not isinstance(tex_h, dict) or not isinstance(members, dict):
            raise TypeError("meta, textures and members must be objects")
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{label}: {_JSON} is incomplete or malformed ({type(e).__name__}: {e})") from None
    if not 0 < nv <= MAX_VERTICES:
        raise InputError(f"{label}: num_vertices {nv} outside [1, {MAX_VERTICES}]")
    if len(bs_names) > MAX_BLENDSHAPES or len(set(bs_names)) != len(bs_names):
        raise InputError(f"{label}: {len(bs_names)} blendshape names (limit {MAX_BLENDSHAPES}, no repeats)")
    if not 0 < len(joint_names) <= 256:
        raise InputError(f"{label}: {len(joint_names)} joints, need 1..256")

    def checked(path: str, limit: int) -> bytes:
        entry = members.get(path)
        if not isinstance(entry, dict):
            raise InputError(f"{label}: member {path!r} is not listed in {_JSON}")
        raw = _member(z, path, limit, label)
        if len(raw) != entry.get("bytes") or hashlib.sha256(raw).hexdigest() != entry.get("sha256"):
            raise InputError(f"{label}: member {path!r} is corrupt (size or sha256 differs from {_JSON})")
        return raw

    arrays: dict[str, np.ndarray] = {}
    for name, (dtype, _) in _ARRAYS.items():
        raw = checked(f"arrays/{name}.npy", MAX_MEMBER_BYTES)
        try:
            a = np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{label}: arrays/{name}.npy is not a plain numpy array ({e})") from None
        if a.dtype != np.dtype(dtype):
            raise InputError(f"{label}: {name} has dtype {a.dtype}, expected {dtype}")
        arrays[name] = np.ascontiguousarray(a)
    nf = arrays["triangles"].shape[0] if arrays["triangles"].ndim == 2 else -1
    dims = {"V": nv, "F": nf, "K": len(bs_names), "J": len(joint_names)}
    for name, (_, shape) in _ARRAYS.items():
        want = tuple(dims[d] if isinstance(d, str) else d for d in shape)
        if arrays[name].shape != want:
            raise InputError(f"{label}: {name} has shape {arrays[name].shape}, expected {want}")
    _check_ranges(arrays, nv, len(materials), len(joint_names), label)

    textures: dict[str, np.ndarray] = {}
    for mat, path in tex_h.items():
        if not _safe_name(mat) or path != f"textures/{mat}.png":
            raise InputError(f"{label}: bad texture entry {mat!r}: {path!r}")
        textures[mat] = _decode_png(checked(path, MAX_MEMBER_BYTES), f"{label}: {path}")
    if "skin" not in textures:
        raise InputError(f"{label}: the 'skin' texture is missing")

    topology = Topology(num_vertices=nv, triangles=arrays["triangles"], corner_uv=arrays["corner_uv"],
                        tri_material=arrays["tri_material"], materials=materials, parts=parts,
                        landmarks68=arrays["landmarks68"], head_uv=arrays["head_uv"])
    expected = topo_h.get("sha256")
    if expected is not None and topology_sha256(topology) != expected:
        raise InputError(f"{label}: topology checksum differs from the one recorded in {_JSON}")
    skeleton = Skeleton(names=joint_names, parents=arrays["joint_parents"], positions=arrays["joint_positions"])
    rig = Rig(skeleton=skeleton, skin_joints=arrays["skin_joints"], skin_weights=arrays["skin_weights"],
              blendshape_names=bs_names, blendshapes=arrays["blendshapes"])
    log.debug("loaded %s: %d vertices, %d blendshapes, textures %s", label, nv, len(bs_names), sorted(textures))
    return Avatar(vertices=arrays["vertices"], topology=topology, textures=textures, rig=rig, meta=meta)


def _check_ranges(a: dict[str, np.ndarray], nv: int, nmat: int, nj: int, label: str) -> None:
    tri = a["triangles"]
    if tri.size and (tri.min() < 0 or tri.max() >= nv):
        raise InputError(f"{label}: triangle indices in [{tri.min()}, {tri.max()}], need [0, {nv})")
    tm = a["tri_material"]
    if tm.size and (tm.min() < 0 or tm.max() >= nmat):
        raise InputError(f"{label}: triangle materials in [{tm.min()}, {tm.max()}], need [0, {nmat})")
    lm = a["landmarks68"]
    if lm.min() < 0 or lm.max() >= nv:
        raise InputError(f"{label}: landmark indices outside [0, {nv})")
    par = a["joint_parents"]
    if par[0] != -1 or any(not 0 <= par[j] < j for j in range(1, nj)):
        raise InputError(f"{label}: joint parents {par.tolist()} do not list parents before children")
    sj = a["skin_joints"]
    if sj.max() >= nj:
        raise InputError(f"{label}: skin joint indices up to {sj.max()}, need < {nj}")
    for name in ("vertices", "corner_uv", "joint_positions", "skin_weights", "blendshapes"):
        if not np.isfinite(a[name]).all():
            raise InputError(f"{label}: {name} has non-finite values")


def _decode_png(raw: bytes, label: str) -> np.ndarray:
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise InputError(f"{label} is not a PNG")
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            if not (0 < w <= MAX_TEXTURE_SIDE and 0 < h <= MAX_TEXTURE_SIDE):
                raise InputError(f"{label} is {w}x{h}, limit {MAX_TEXTURE_SIDE} per side")
            if im.mode not in ("RGB", "RGBA"):
                raise InputError(f"{label} has mode {im.mode}, expected RGB or RGBA")
            im.load()
            return np.ascontiguousarray(np.asarray(im, np.uint8))
    except InputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"{label} is not a readable PNG ({e})") from None

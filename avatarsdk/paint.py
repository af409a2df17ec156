"""Procedural de-lit skin albedo in the unified head UV.

A random but plausible *diffuse albedo* (no light, no shading, no specular) for
the ICT head, used as ground truth by the fidelity benchmark and as a prior
texture for random avatars. ``procedural_albedo(seed)`` returns an sRGB image;
the same seed always gives the same image.

How it is painted:

* **Where**: every texel of the two skin charts is mapped once (per texture
  size, cached) to the point of the generic ICT neutral it shows, through
  :func:`avatarsdk.uvmap.rasterize_uv` (triangle and barycentrics per texel).
  Colour fields are functions of that 3D point, so the face chart and the
  back-of-head chart agree along their seam (and at the mouth and eye-socket
  islands). Features that lie well inside the face chart (lips, brows,
  freckles, wrinkles) are drawn in UV, placed from the 68 landmark vertices
  (``LANDMARKS68``) through their ``head_uv``, with sizes in millimetres
  converted by the local texel scale.
* **What colour**: linear-light albedo ``base * exp(-(m * K_MEL + h * K_HEM))``,
  a two-chromophore model: ``m`` (melanin optical density) darkens and
  yellows, ``h`` (blood) reddens; the base tone comes from
  :data:`ALBEDO_TONES`. Redder cheeks, nose, ears and chin, darker periorbital
  skin, freckles, age spots and uneven tone are changes of ``m`` and ``h``;
  lips add blood and a little melanin; hair (brows, stubble, scalp hair) is
  composited over the skin with its own colour.
* **Not albedo** (deliberately absent): cast shadows, ambient occlusion,
  specular highlights, subsurface glow.

Cost: the first call for a texture size builds that size's texel map (about
1 s for 512, 3-9 s for 1024 on two busy CPU cores; cached for the process);
each albedo after that takes ~0.1 s at 512 and ~0.4 s at 1024.

Base tones: :data:`materials.SKIN_TONES <avatarsdk.materials.SKIN_TONES>` are the
Monk Skin Tone swatches, i.e. how skin *looks* in a photo: exposure and the
camera's tone curve lift light skin toward white and flatten its colour, and a
specular sheen adds grey. Measured diffuse albedo is darker and more saturated
than that for light and medium skin (the lightest skins are ~0.6 reflectance in
red and clearly pink-orange, not near-white), and slightly lighter than the
darkest swatches (dark skin still reflects 5-8% in red). :data:`ALBEDO_TONES`
holds one albedo per Monk swatch with that correction; tones are sampled as a
continuous position on the scale, so the whole Fitzpatrick I-VI range appears.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import cKDTree

from avatarsdk.cache import cached_arrays, code_digest
from avatarsdk.colour import linear_to_srgb as _linear_to_srgb
from avatarsdk.colour import srgb_to_linear as _srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.sizes import check_texture_size
from avatarsdk.render.shading import vertex_normals
from avatarsdk.rigs import LANDMARKS68, PARTS, load_ict
from avatarsdk.rigs.model import FACE_CHART_SCALE
from avatarsdk.uvmap import rasterize_uv

__all__ = [
    "ALBEDO_TONES",
    "HAIR_COLOURS",
    "HAIR_STYLES",
    "SkinParams",
    "face_region_mask",
    "face_region_vertices",
    "mean_albedo_srgb",
    "paint_albedo",
    "procedural_albedo",
    "sample_skin_params",
    "tone_for_luminance",
]

# ---------------------------------------------------------------------------
# Palettes
# ---------------------------------------------------------------------------

ALBEDO_TONES: tuple[tuple[int, int, int], ...] = (
    (222, 184, 166), (214, 173, 150), (212, 170, 136), (200, 154, 116), (182, 134, 98),
    (146, 100, 70), (120, 80, 57), (94, 61, 46), (70, 48, 38), (54, 38, 31),
)
"""sRGB diffuse albedo of cheek skin for each Monk swatch in ``materials.SKIN_TONES``
(same order, lightest first): darker and more saturated than the photographed
swatch for light and medium skin, slightly lighter for the two darkest."""

HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (24, 20, 18), "dark_brown": (45, 32, 24), "brown": (78, 54, 36),
    "light_brown": (118, 86, 58), "dark_blonde": (150, 116, 78), "blonde": (190, 158, 110),
    "auburn": (112, 52, 30), "red": (150, 70, 36), "grey": (140, 136, 132), "white": (196, 192, 186),
}
"""sRGB albedo of hair fibres (scalp hair, brows, stubble)."""

HAIR_STYLES: tuple[str, ...] = ("bald", "buzz", "short")
"""Scalp styles: bare skin, clipped stubble over skin, short hair painted on the scalp."""

# Optical density spectra (natural log per unit density) of the two chromophores
# over (R, G, B): melanin absorbs more toward the blue, oxygenated blood mostly
# green and blue (its absorption in red is small).
K_MEL = np.array([0.55, 0.85, 1.25], np.float32)
K_HEM = np.array([0.06, 0.90, 0.55], np.float32)

_MOUTH_SOCKET = np.array([0.20, 0.035, 0.035], np.float32)  # linear albedo deep in the mouth
_EYE_SOCKET = np.array([0.30, 0.09, 0.08], np.float32)  # conjunctiva behind the lids




def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _tone_at(position: float) -> np.ndarray:
    """Linear albedo at a continuous position in [0, 9] on the tone scale (linear interpolation)."""
    lin = _srgb_to_linear(np.asarray(ALBEDO_TONES, np.float32) / 255.0)
    i = int(min(max(math.floor(position), 0), len(ALBEDO_TONES) - 2))
    t = float(np.clip(position - i, 0.0, 1.0))
    return (1 - t) * lin[i] + t * lin[i + 1]


LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)
"""Relative luminance Y of linear sRGB (Rec. 709 weights)."""


def tone_for_luminance(y: float) -> float:
    """The position on the tone scale (0 lightest .. 9 darkest) whose linear albedo has luminance ``y``.

    The swatches' luminance falls monotonically along the scale, so the answer is
    unique; ``y`` outside their range gives the end of the scale.

    Args:
        y: relative luminance of a linear skin albedo, in [0, 1].

    Returns:
        The position in [0, 9] (for ``procedural_albedo(tone=...)``).
    """
    pos = np.linspace(0.0, len(ALBEDO_TONES) - 1, 901)
    lum = np.array([float(_tone_at(p) @ LUMA) for p in pos])  # decreasing
    return float(np.interp(-float(y), -lum, pos))


def mean_albedo_srgb() -> tuple[float, float, float]:
    """Return the mean base tone of the model as sRGB in [0, 1].

    The expectation of the base tone over the sampled tone positions (uniform
    on the scale, linear interpolation between swatches, averaged in linear
    light), i.e. a constant mid skin tone: what a method that knows nothing
    about the photo should predict for the skin colour.
    """
    lin = _srgb_to_linear(np.asarray(ALBEDO_TONES, np.float32) / 255.0)
    w = np.ones(len(lin))
    w[[0, -1]] = 0.5  # trapezoid rule of the piecewise-linear tone curve
    mean = (w[:, None] * lin).sum(0) / w.sum()
    return tuple(float(x) for x in _linear_to_srgb(mean))


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SkinParams:
    """Everything that varies between procedural albedos (all sampled from a seed).

    Attributes:
        tone: base cheek albedo, sRGB (r, g, b) in [0, 1].
        redness: blood in cheeks, nose, ears, chin, in [0, 1].
        undertone: -1 pink .. +1 olive/yellow.
        lip_redness: blood added to the lips, in [0, 1].
        lip_fullness: vertical scale of the lip outline about the mouth line, ~[0.85, 1.2].
        brow_density: eyebrow hair coverage in [0, 1].
        brow_thickness: height of the brow at its head (medial end) in mm.
        hair_colour: sRGB hair colour (brows, stubble, scalp hair) in [0, 1].
        hair_style: one of :data:`HAIR_STYLES`.
        forehead: hairline height above the brows at the midline, mm.
        recession: temple recession of the hairline in [0, 1].
        beard: stubble / beard shadow strength in [0, 1] (0: none).
        freckles: freckle amount in [0, 1].
        age: ageing in [0, 1]: wrinkle lines, uneven tone, age spots, greyer hair.
        pattern_seed: seed of every noise and placement pattern.
    """

    tone: tuple[float, float, float]
    redness: float = 0.5
    undertone: float = 0.0
    lip_redness: float = 0.6
    lip_fullness: float = 1.0
    brow_density: float = 0.7
    brow_thickness: float = 9.0
    hair_colour: tuple[float, float, float] = (0.18, 0.13, 0.09)
    hair_style: str = "short"
    forehead: float = 55.0
    recession: float = 0.2
    beard: float = 0.0
    freckles: float = 0.0
    age: float = 0.3
    pattern_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tone", "hair_colour"):
            c = np.asarray(getattr(self, name), np.float64)
            if c.shape != (3,) or not np.isfinite(c).all() or (c < 0).any() or (c > 1).any():
                raise InputError(f"{name} must be three sRGB values in [0, 1], got {getattr(self, name)!r}")
        ranges = {"redness": (0, 1), "undertone": (-1, 1), "lip_redness": (0, 1), "lip_fullness": (0.6, 1.5),
                  "brow_density": (0, 1), "brow_thickness": (2, 20), "forehead": (30, 90), "recession": (0, 1),
                  "beard": (0, 1), "freckles": (0, 1), "age": (0, 1)}
        for name, (lo, hi) in ranges.items():
            x = getattr(self, name)
            if not isinstance(x, (int, float)) or not math.isfinite(x) or not lo <= x <= hi:
                raise InputError(f"{name} must be a number in [{lo}, {hi}], got {x!r}")
        if self.hair_style not in HAIR_STYLES:
            raise InputError(f"hair_style must be one of {', '.join(HAIR_STYLES)}, got {self.hair_style!r}")
        if isinstance(self.pattern_seed, bool) or not isinstance(self.pattern_seed, (int, np.integer)) \
                or self.pattern_seed < 0:
            raise InputError(f"pattern_seed must be a non-negative integer, got {self.pattern_seed!r}")


def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, bool) or not isinstance(seed_or_rng, (int, np.integer)) or seed_or_rng < 0:
        raise InputError(f"seed must be a non-negative integer or a numpy Generator, got {seed_or_rng!r}")
    return np.random.default_rng(int(seed_or_rng))


def _resolve_tone(tone) -> tuple[np.ndarray, float | None]:
    """(linear base albedo, position on the scale or None) from the ``tone`` argument."""
    if isinstance(tone, (int, float, np.integer, np.floating)) and not isinstance(tone, bool):
        if not 0 <= float(tone) <= len(ALBEDO_TONES) - 1:
            raise InputError(f"tone position must be in [0, {len(ALBEDO_TONES) - 1}], got {tone!r}")
        return _tone_at(float(tone)), float(tone)
    c = np.asarray(tone, np.float64)
    if c.shape != (3,) or not np.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise InputError(f"tone must be a scale position in [0, 9] or three sRGB values in [0, 1], got {tone!r}")
    return _srgb_to_linear(c), None


def sample_skin_params(seed_or_rng, *, tone=None) -> SkinParams:
    """Draw the parameters of one procedural albedo.

    Args:
        seed_or_rng: non-negative int seed, or a ``numpy.random.Generator``
            (advanced by this call).
        tone: None (sampled uniformly along the whole tone scale), a position
            in [0, 9] on :data:`ALBEDO_TONES` (0 lightest; ints are the Monk
            swatches), or an explicit sRGB albedo (r, g, b) in [0, 1].

    Returns:
        The sampled :class:`SkinParams`.

    Raises:
        InputError: bad seed or tone.
    """
    rng = _rng(seed_or_rng)
    pos = rng.uniform(0.0, len(ALBEDO_TONES) - 1)  # always drawn: same stream with or without ``tone``
    bright = rng.uniform(0.93, 1.07)
    if tone is None:
        base, position = _tone_at(pos) * bright, pos
    else:
        base, position = _resolve_tone(tone)
    dark = 0.0 if position is None else position / (len(ALBEDO_TONES) - 1)  # 0 light .. 1 dark
    redness = float(np.clip(rng.beta(2.2, 2.2), 0, 1))
    undertone = float(rng.uniform(-1, 1))
    lip_redness = float(rng.uniform(0.35, 0.9))
    lip_fullness = float(rng.uniform(0.88, 1.18))
    age = float(np.clip(rng.beta(1.6, 2.4), 0, 1))
    male = rng.random() < 0.5
    beard = float(rng.uniform(0.25, 1.0)) if (male and rng.random() < 0.6) else 0.0
    brow_density = float(rng.uniform(0.55, 1.0) if male else rng.uniform(0.4, 0.85))
    brow_thickness = float(rng.uniform(8.0, 12.0) if male else rng.uniform(6.0, 9.5))
    # Hair colour: dark hair dominates for darker skin; the lightest skins get the whole range.
    names = list(HAIR_COLOURS)
    p = np.array([3.0, 3.0, 1.5, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    light_only = np.array([0, 0, 1.0, 1.3, 1.6, 1.8, 0.8, 0.6, 0, 0])
    p = p + (1 - dark) ** 3 * light_only * 1.5
    p = p / p.sum()
    hair = np.asarray(HAIR_COLOURS[names[rng.choice(len(names), p=p)]], np.float64) / 255.0
    grey = _smoothstep(0.45, 0.95, age) * rng.uniform(0.3, 1.0)
    hair = (1 - grey) * hair + grey * np.asarray(HAIR_COLOURS["grey"], np.float64) / 255.0
    styles = rng.choice(len(HAIR_STYLES), p=[0.2, 0.3, 0.5] if male else [0.05, 0.15, 0.8])
    style = HAIR_STYLES[int(styles)]
    forehead = float(rng.uniform(38.0, 55.0))
    recession = float(np.clip(rng.beta(1.2, 3.0) + (0.35 * age if male else 0.0), 0, 1))
    freckles = float(rng.uniform(0.2, 1.0) * (1 - dark) ** 2) if rng.random() < 0.3 else 0.0
    pattern_seed = int(rng.integers(2**31 - 1))
    return SkinParams(
        tone=tuple(float(x) for x in _linear_to_srgb(np.clip(base, 0, 1))),
        redness=redness, undertone=undertone, lip_redness=lip_redness, lip_fullness=lip_fullness,
        brow_density=brow_density, brow_thickness=brow_thickness,
        hair_colour=tuple(float(x) for x in np.clip(hair, 0, 1)), hair_style=style,
        forehead=forehead, recession=recession, beard=beard, freckles=freckles, age=age,
        pattern_seed=pattern_seed,
    )


def procedural_albedo(seed_or_rng, *, size: int = 1024, tone=None, **params) -> np.ndarray:
    """Paint a random de-lit skin albedo in the unified head UV.

    Args:
        seed_or_rng: non-negative int seed (same seed, same image) or a
            ``numpy.random.Generator``.
        size: texture side in pixels, a power of two in [64, 4096].
        tone: see :func:`sample_skin_params` (None: sampled across the whole range).
        **params: overrides of any :class:`SkinParams` field, e.g.
            ``beard=0.0, hair_style="bald", age=0.8``.

    Returns:
        [size, size, 3] uint8 sRGB albedo; texels outside the charts repeat the
        nearest chart texel (clean mipmaps and bilinear lookups).

    Raises:
        InputError: bad seed, size, tone or parameter names/values.
    """
    p = sample_skin_params(seed_or_rng, tone=tone)
    unknown = sorted(set(params) - {f.name for f in dataclasses.fields(SkinParams)})
    if unknown:
        raise InputError(f"unknown skin parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(f.name for f in dataclasses.fields(SkinParams))}")
    if params:
        p = dataclasses.replace(p, **params)
    return paint_albedo(p, size=size)


# ---------------------------------------------------------------------------
# Geometry shared by every albedo (cached)
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Head:
    """Seed-independent per-vertex data of the generic neutral."""

    verts: np.ndarray  # [V, 3] float32 metres
    normals: np.ndarray  # [V, 3] float32
    lm: np.ndarray  # [68, 3] float32 landmark positions
    lm_uv: np.ndarray  # [68, 2] float32 landmark head UVs
    ear: np.ndarray  # [V] float32 ear weight in [0, 1]
    mouth_socket: np.ndarray  # [V] float32 1 on the mouth socket part
    eye_socket: np.ndarray  # [V] float32 1 on the eye socket part
    skin_tris: np.ndarray  # [F] indices of skin triangles
    face_chart_vertices: np.ndarray  # vertex ids of the face chart


@functools.lru_cache(maxsize=1)
def _head() -> _Head:
    model = load_ict()
    topo = model.topology
    v = np.asarray(model.neutral, np.float32)
    n = vertex_normals(torch.from_numpy(v.copy()), torch.from_numpy(topo.triangles.astype(np.int64))).numpy()
    lm_ids = np.asarray(LANDMARKS68)
    uv = topo.head_uv
    # Ears: ICT's ears sit in the side lobes of the face chart (measured on the
    # generic head: |u - chart edge| < 0.06 for v in [0.2, 0.45] in unified UV).
    face_chart = np.isfinite(uv[:, 0]) & (uv[:, 0] <= FACE_CHART_SCALE)
    edge = np.where(face_chart, np.minimum(uv[:, 0], FACE_CHART_SCALE - uv[:, 0]), 1.0)
    band = _smoothstep(0.19, 0.22, np.nan_to_num(uv[:, 1], nan=0)) * (
        1 - _smoothstep(0.44, 0.47, np.nan_to_num(uv[:, 1], nan=1)))
    ear = (1 - _smoothstep(0.055, 0.068, edge)) * band * face_chart
    mouth = np.zeros(len(v), np.float32)
    mouth[slice(*PARTS["mouth_socket"])] = 1
    eyes = np.zeros(len(v), np.float32)
    eyes[slice(*PARTS["eye_sockets"])] = 1
    skin = np.nonzero(topo.tri_material == topo.materials.index("skin"))[0]
    fc = np.nonzero(face_chart)[0]
    return _Head(verts=v, normals=n.astype(np.float32), lm=v[lm_ids], lm_uv=uv[lm_ids].astype(np.float32),
                 ear=ear.astype(np.float32), mouth_socket=mouth, eye_socket=eyes, skin_tris=skin,
                 face_chart_vertices=fc)


@dataclass(frozen=True, eq=False)
class _Atlas:
    """Per-texel data of one texture size (covered texels only, flattened)."""

    size: int
    index: np.ndarray  # [N] flat texel index of covered texels (charts + a 1.5 texel gutter)
    fill: np.ndarray  # [size * size] flat index of the nearest covered texel (for the empty area)
    tri_v: np.ndarray  # [N, 3] vertex ids of the texel's triangle
    bary: np.ndarray  # [N, 3] float32 barycentrics (may be slightly outside [0, 1] in the gutter)
    pos: np.ndarray  # [N, 3] float32 generic-neutral position, metres
    nrm: np.ndarray  # [N, 3] float32 unit normal
    uv: np.ndarray  # [N, 2] float32 texel centre UV
    face: np.ndarray  # [N] bool, texel on the face chart
    mm_per_texel: np.ndarray  # [N] float32 texel size in mm, continuous across seams (coarser chart wins)
    fields: dict  # name -> [N] float32 seed-independent fields (see _region_fields; plus socket_depth,
    #               mouth_socket and eye_socket: 1 on the back chart's socket islands)


_ATLAS_ARRAYS = ("index", "fill", "tri_v", "bary", "pos", "nrm", "uv", "face", "mm_per_texel")


@functools.lru_cache(maxsize=4)
def _atlas(size: int) -> _Atlas:
    """The atlas of one texture size: computed once (~2 s at 1024 px) and kept in the disk cache.

    See :mod:`avatarsdk.cache`: the key covers the ICT files, the size and the
    code that computes it, so a cached atlas equals a fresh one.
    """
    def compute() -> dict[str, np.ndarray]:
        a = _compute_atlas(size)
        return {k: getattr(a, k) for k in _ATLAS_ARRAYS} | {f"field_{k}": v for k, v in a.fields.items()}

    key = {"ict": load_ict().data.source_sha256, "size": int(size),
           "code": code_digest("avatarsdk.paint", "avatarsdk.uvmap", "avatarsdk.render.raster",
                               "avatarsdk.rigs.model", "avatarsdk.rigs.ict")}
    arrays = cached_arrays(f"atlas{int(size)}", key, compute)
    fields = {k.removeprefix("field_"): v for k, v in arrays.items() if k.startswith("field_")}
    return _Atlas(size=size, **{k: arrays[k] for k in _ATLAS_ARRAYS}, fields=fields)


def _compute_atlas(size: int) -> _Atlas:
    head = _head()
    topo = load_ict().topology
    tris = head.skin_tris
    num = len(tris)
    # Per-corner one-hot barycentrics and the triangle id: interpolating them
    # gives each texel's barycentrics and (exactly, as sum(bary) = 1) its triangle.
    corner = torch.zeros(1, num, 3, 4, dtype=torch.float64)
    corner[0, :, :, :3] = torch.eye(3, dtype=torch.float64)
    corner[0, :, :, 3] = torch.arange(num, dtype=torch.float64)[:, None]
    vals, _ = rasterize_uv(corner, torch.from_numpy(topo.corner_uv[tris].astype(np.float64)), size)
    vals = vals[0].reshape(-1, 4).numpy()
    covered = np.abs(vals[:, :3].sum(1) - 1.0) < 1e-6
    index = np.nonzero(covered)[0]
    bary = vals[index, :3].astype(np.float32)
    tri = np.rint(vals[index, 3]).astype(np.int64)
    tri_v = topo.triangles[tris][tri]
    pos = (head.verts[tri_v] * bary[..., None]).sum(1)
    nrm = (head.normals[tri_v] * bary[..., None]).sum(1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-9)
    ys, xs = np.divmod(index, size)
    uv = np.stack([(xs + 0.5) / size, (ys + 0.5) / size], 1).astype(np.float32)
    face = topo.corner_uv[tris][tri][:, :, 0].max(1) <= FACE_CHART_SCALE + 1e-6
    # Local texel size: sqrt(3D area / UV area) of the texel's triangle.
    p3 = head.verts[topo.triangles[tris]].astype(np.float64)
    a3 = 0.5 * np.linalg.norm(np.cross(p3[:, 1] - p3[:, 0], p3[:, 2] - p3[:, 0]), axis=1)
    q = topo.corner_uv[tris].astype(np.float64)
    a2 = 0.5 * np.abs((q[:, 1, 0] - q[:, 0, 0]) * (q[:, 2, 1] - q[:, 0, 1])
                      - (q[:, 2, 0] - q[:, 0, 0]) * (q[:, 1, 1] - q[:, 0, 1]))
    m_per_uv = np.sqrt(a3 / np.maximum(a2, 1e-12))
    m_per_uv = np.clip(m_per_uv, 0.1 * np.median(m_per_uv), 10 * np.median(m_per_uv))
    # Per vertex the coarsest incident triangle, so the field (and the detail
    # band-limit it drives) is continuous across chart seams.
    per_vertex = np.zeros(len(head.verts))
    np.maximum.at(per_vertex, topo.triangles[tris].ravel(), np.repeat(m_per_uv, 3))
    mm_per_texel = ((per_vertex[tri_v] * bary).sum(1) * 1000.0 / size).astype(np.float32)
    # Nearest covered texel for every texel (fills the empty area of the square).
    _, (iy, ix) = ndimage.distance_transform_edt(~covered.reshape(size, size), return_indices=True)
    fill = (iy * size + ix).ravel()
    pos, nrm = pos.astype(np.float32), nrm.astype(np.float32)

    def gather(per_vertex):
        return (per_vertex[tri_v] * bary).sum(1).astype(np.float32)

    fields = _region_fields(pos, nrm, uv, face, gather(head.ear))
    # Depth into the sockets: distance to the nearest face-chart vertex (0 on the seam).
    depth = cKDTree(head.verts[head.face_chart_vertices]).query(head.verts)[0]
    fields["socket_depth"] = gather(depth)
    # The socket islands of the back chart (texels of triangles touching those parts).
    fields["mouth_socket"] = (~face & (head.mouth_socket[tri_v].max(1) > 0)).astype(np.float32)
    fields["eye_socket"] = (~face & (head.eye_socket[tri_v].max(1) > 0)).astype(np.float32)
    return _Atlas(size=size, index=index, fill=fill, tri_v=tri_v, bary=bary, pos=pos, nrm=nrm, uv=uv, face=face,
                  mm_per_texel=mm_per_texel, fields=fields)


def texel_fields(size: int) -> _Atlas:
    """Per-texel geometry and region fields of the unified head UV at ``size`` (cached).

    The atlas of :func:`paint_albedo` (generic-head position, normal, texel size,
    face-chart flag and the fields of :func:`_region_fields`) with one more field,
    ``lips``: 1 inside the outer lip contour (landmarks 48-59) on the face chart.
    """
    atlas = _atlas(size)
    if "lips" not in atlas.fields:
        lips = _points_in_polygon(atlas.uv, _head().lm_uv[48:60]) & atlas.face
        atlas.fields["lips"] = lips.astype(np.float32)
    return atlas


def _polyline_distance(points: np.ndarray, line: np.ndarray, closed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each point [N, D] to a polyline [K, D]; also the arc position in [0, 1] of the closest point."""
    a, b = (line, np.roll(line, -1, axis=0)) if closed else (line[:-1], line[1:])
    seg = b - a  # [S, D]
    seg_len = np.linalg.norm(seg, axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    best = np.full(len(points), np.inf, np.float32)
    arc = np.zeros(len(points), np.float32)
    for s in range(len(seg)):
        t = np.clip(((points - a[s]) @ seg[s]) / max(seg_len[s] ** 2, 1e-18), 0.0, 1.0)
        d = np.linalg.norm(points - (a[s] + t[:, None] * seg[s]), axis=1)
        closer = d < best
        best = np.where(closer, d, best)
        arc = np.where(closer, (cum[s] + t * seg_len[s]) / cum[-1], arc)
    return best, arc


def _catmull_rom(points: np.ndarray, samples: int = 8, closed: bool = False) -> np.ndarray:
    """Sample a Catmull-Rom spline through ``points`` [K, D] (``samples`` per span)."""
    p = np.asarray(points, np.float64)
    if closed:
        ext = np.concatenate([p[-1:], p, p[:2]])
        spans = len(p)
    else:
        ext = np.concatenate([2 * p[:1] - p[1:2], p, 2 * p[-1:] - p[-2:-1]])
        spans = len(p) - 1
    t = np.linspace(0, 1, samples, endpoint=False)[:, None]
    out = []
    for i in range(spans):
        p0, p1, p2, p3 = ext[i], ext[i + 1], ext[i + 2], ext[i + 3]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    if not closed:
        out.append(p[-1:])
    return np.concatenate(out)


def _head_frame(lm: np.ndarray) -> dict:
    """Reference heights and points of the generic head, metres."""
    return {
        "brow_y": float(lm[[19, 24], 1].mean()),
        "eye_y": float(lm[36:48, 1].mean()),
        "nose_base_y": float(lm[33, 1]),
        "mouth_y": float(lm[[48, 54], 1].mean()),
        "chin_y": float(lm[8, 1]),
        "ear_front_y": float(lm[[0, 16], 1].mean()),
        "ear_top_y": _ear_top_y(),
    }


@functools.lru_cache(maxsize=1)
def _ear_top_y() -> float:
    head = _head()
    return float(head.verts[head.ear > 0.5, 1].max())


def _region_fields(pos, nrm, uv, face, ear) -> dict:
    """Seed-independent fields at points (texels or vertices) of the generic head.

    Args:
        pos: [N, 3] generic-neutral positions; nrm: [N, 3] normals; uv: [N, 2]
        unified UV; face: [N] bool on the face chart; ear: [N] ear weight.

    Returns:
        name -> [N] float32: ``ear``; ``d_eye`` (m, distance to the nearer eye
        opening), ``below_eye`` (1 under the eye line); ``d_mouth`` (m, distance
        to the inner lip line); ``phi`` (azimuth about the vertical axis through
        the head centre, radians, 0 = front); ``cheek``, ``nose``, ``chin``,
        ``forehead`` blob weights; ``nostril`` weight; ``front`` (face front
        weight for freckles); ``region`` (1 inside the benchmark face region).
    """
    lm = _head().lm
    fr = _head_frame(lm)
    x, y, z = pos[:, 0], pos[:, 1], pos[:, 2]
    out = {"ear": ear.astype(np.float32)}
    d_r, _ = _polyline_distance(pos, lm[36:42], closed=True)
    d_l, _ = _polyline_distance(pos, lm[42:48], closed=True)
    out["d_eye"] = np.minimum(d_r, d_l)
    out["below_eye"] = _smoothstep(0.002, -0.004, y - fr["eye_y"])
    out["d_mouth"], _ = _polyline_distance(pos, lm[60:68], closed=True)
    out["phi"] = np.arctan2(x, z).astype(np.float32)

    def blob(c, sigma):
        return np.exp(-((pos - c) ** 2).sum(1) / (2 * sigma**2)).astype(np.float32)

    cheek_r = 0.5 * (lm[2] + lm[31]) + np.array([0.0, 0.010, 0.0])
    cheek_l = 0.5 * (lm[14] + lm[35]) + np.array([0.0, 0.010, 0.0])
    out["cheek"] = np.maximum(blob(cheek_r, 0.017), blob(cheek_l, 0.017)) * face
    out["nose"] = np.maximum(blob(lm[30], 0.010), np.maximum(blob(lm[31], 0.007), blob(lm[35], 0.007))) * face
    out["chin"] = blob(lm[8] + np.array([0, 0.008, 0]), 0.014) * face
    out["forehead"] = blob(np.array([0, fr["brow_y"] + 0.03, lm[27, 2]]), 0.03) * face
    # Nostrils: skin near the nose base that faces down or inward.
    near_nose = blob(0.5 * (lm[31] + lm[35]) + np.array([0, 0.003, -0.008]), 0.009)
    out["nostril"] = (near_nose * _smoothstep(-0.2, -0.6, nrm[:, 1] + 0.3 * nrm[:, 2])).astype(np.float32) * face
    # Front of the face (freckle placement): central face between brows and mouth.
    front = _smoothstep(0.9, 0.6, np.abs(out["phi"])) * _smoothstep(fr["mouth_y"] - 0.01, fr["nose_base_y"] + 0.01, y)
    front *= 1 - _smoothstep(fr["brow_y"] + 0.035, fr["brow_y"] + 0.05, y)
    out["front"] = (front * face).astype(np.float32)
    out["region"] = _face_region(pos, uv, face, ear, out).astype(np.float32)
    return out


def _face_region(pos, uv, face, ear, f) -> np.ndarray:
    """Boolean benchmark region: front-facing face skin a photo sees (see :func:`face_region_mask`)."""
    head = _head()
    lm = head.lm
    # Outline in UV: the jaw contour (landmarks 0..16) closed over the forehead
    # 25 mm above the brows (below any sampled hairline, >= 38 mm above them).
    jaw_uv = head.lm_uv[0:17]
    tops = []
    for i in (26, 24, 22, 21, 19, 17):
        p = lm[i] + np.array([0.0, 0.025, -0.004])
        d = np.linalg.norm(head.verts[head.face_chart_vertices] - p, axis=1)
        tops.append(_vertex_uv(head.face_chart_vertices[np.argmin(d)]))
    poly = np.concatenate([jaw_uv, np.asarray(tops)])
    inside = _points_in_polygon(uv, poly) & face
    inside &= ear < 0.05
    inside &= f["d_eye"] > 0.003  # eyes, lid margins and lashes line
    inside &= f["d_mouth"] > 0.002  # mouth interior and wet inner lips
    inside &= _points_in_polygon(uv, head.lm_uv[60:68]) == 0
    inside &= f["nostril"] < 0.3
    return inside


def _vertex_uv(vertex: int) -> np.ndarray:
    return load_ict().topology.head_uv[vertex]


def _points_in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon for [N, 2] points and a closed [K, 2] polygon."""
    x, y = points[:, 0], points[:, 1]
    inside = np.zeros(len(points), bool)
    px, py = poly[:, 0], poly[:, 1]
    j = len(poly) - 1
    for i in range(len(poly)):
        cond = (py[i] > y) != (py[j] > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = (px[j] - px[i]) * (y - py[i]) / (py[j] - py[i]) + px[i]
        inside ^= cond & (x < xc)
        j = i
    return inside


def face_region_mask(size: int = 256) -> np.ndarray:
    """Texels of the unified head UV where albedo is compared in the benchmark.

    The front-facing face skin a photo of a face sees: inside the jaw contour
    (landmarks 0-16) and below a forehead line 25 mm above the brows (under any
    hairline this model paints), on the face chart, excluding the ears, 3 mm
    around the eye openings (lid margins, lash line), the mouth opening and 2 mm
    of wet inner lip, and the nostrils. Brows, lips, stubble and freckles are in.

    Args:
        size: texture side (power of two in [64, 4096]).

    Returns:
        [size, size] bool.
    """
    _check_size(size)
    atlas = _atlas(size)
    out = np.zeros(size * size, bool)
    out[atlas.index] = atlas.fields["region"] > 0.5
    return out.reshape(size, size)


@functools.lru_cache(maxsize=1)
def face_region_vertices() -> np.ndarray:
    """ICT vertex ids inside the benchmark face region (see :func:`face_region_mask`).

    Returns:
        [M] int64 sorted vertex indices of the face part (about 4,000 vertices).
    """
    head = _head()
    uv = load_ict().topology.head_uv
    ids = np.arange(*PARTS["face"])
    ids = ids[np.isfinite(uv[ids, 0]) & (uv[ids, 0] <= 0.75)]
    f = _region_fields(head.verts[ids], head.normals[ids], uv[ids].astype(np.float32), np.ones(len(ids), bool),
                       head.ear[ids])
    return ids[f["region"] > 0.5].astype(np.int64)


def _check_size(size) -> None:
    check_texture_size(size, name="size")


# ---------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------

_LATTICE = 32


def _noise(points: np.ndarray, cell: float, channels: int, rng: np.random.Generator,
           stretch: np.ndarray | None = None) -> np.ndarray:
    """Smooth periodic value noise of 3D points, zero mean, unit variance per channel.

    A random 32^3 lattice (Gaussian-smoothed, wrapped) sampled trilinearly at
    ``R p / cell`` for a random rotation R, so the lattice axes do not show.

    Args:
        points: [N, 3] float32 metres.
        cell: lattice spacing in metres (feature size is ~2 cells).
        channels: independent noise channels.
        rng: source of the lattice and rotation.
        stretch: optional [3] per-axis scale of the points before the rotation:
            < 1 stretches the features along that head axis.

    Returns:
        [N, channels] float32.
    """
    r = _LATTICE
    vol = rng.standard_normal((channels, r, r, r)).astype(np.float32)
    vol = ndimage.gaussian_filter(vol, sigma=(0, 0.8, 0.8, 0.8), mode="wrap")
    vol /= vol.std(axis=(1, 2, 3), keepdims=True)
    vol = np.pad(vol, ((0, 0), (0, 1), (0, 1), (0, 1)), mode="wrap")
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    offset = rng.uniform(0, r, 3)
    m = q.T / cell
    if stretch is not None:
        m = np.asarray(stretch, np.float64)[:, None] * m
    # Lattice coordinates mod r, mapped to [-1, 1] (align_corners=True on the (r + 1) padded lattice).
    c = torch.from_numpy(np.ascontiguousarray(points, np.float32)) @ torch.from_numpy(m.astype(np.float32))
    c = torch.remainder(c + torch.from_numpy(offset.astype(np.float32)), r) * (2.0 / r) - 1.0
    grid = c.view(1, 1, 1, -1, 3)
    out = F.grid_sample(torch.from_numpy(vol)[None], grid, mode="bilinear", align_corners=True)
    return out[0, :, 0, 0].T.contiguous().numpy()


# ---------------------------------------------------------------------------
# Painting
# ---------------------------------------------------------------------------

def paint_albedo(params: SkinParams, *, size: int = 1024) -> np.ndarray:
    """Paint the albedo described by ``params`` (deterministic).

    Args:
        params: from :func:`sample_skin_params` (or built by hand).
        size: texture side, a power of two in [64, 4096].

    Returns:
        [size, size, 3] uint8 sRGB albedo in the unified head UV.

    Raises:
        InputError: bad size.
    """
    _check_size(size)
    atlas = _atlas(size)
    head = _head()
    rng = np.random.default_rng(params.pattern_seed)
    f = atlas.fields
    pos = atlas.pos
    n = len(pos)
    fr = _head_frame(head.lm)
    base = _srgb_to_linear(np.asarray(params.tone, np.float32))
    lum = float(base @ np.array([0.2126, 0.7152, 0.0722], np.float32))
    light = float(np.clip(lum / 0.45, 0.15, 1.0))  # how visible blood is (less under melanin)
    hair_lin = _srgb_to_linear(np.asarray(params.hair_colour, np.float32))
    hair_lum = float(hair_lin @ np.array([0.2126, 0.7152, 0.0722], np.float32))

    # Smooth noise of the 3D position at three scales (continuous across seams).
    low = _noise(pos, 0.012, 4, rng)  # [N, 4]
    mid = _noise(pos, 0.0025, 3, rng)  # [N, 3]
    pore_cell = max(0.0005, 1.6e-3 * float(np.median(atlas.mm_per_texel)))
    fine = _noise(pos, pore_cell, 2, rng) * _band_limit(atlas, pore_cell)[:, None]  # [N, 2]

    mel = np.zeros(n, np.float32)
    hem = np.zeros(n, np.float32)
    # Undertone: yellow/olive carotene-like density (absorbs blue) or pinker.
    under = params.undertone * np.array([0.0, 0.03, 0.10], np.float32)
    # Regional blood: cheeks, nose, ears, chin, forehead a little.
    hem += light * params.redness * (0.45 * f["cheek"] + 0.35 * f["nose"] + 0.45 * f["ear"] + 0.2 * f["chin"]
                                     + 0.08 * f["forehead"])
    hem += light * 0.10 * f["ear"]
    # Periorbital: darker (melanin + deoxygenated blood), most under the eyes.
    peri = np.exp(-(f["d_eye"] / 0.009) ** 2) * (0.5 + 0.5 * f["below_eye"])
    mel += 0.20 * peri
    hem += 0.10 * peri * light
    # Uneven tone: low-frequency blotches grow with age.
    uneven = 0.04 + 0.06 * params.age
    mel += uneven * low[:, 0] + 0.03 * mid[:, 0]
    hem += light * (0.06 * low[:, 1] + 0.04 * mid[:, 1] * (0.5 + params.redness))
    # Nostrils: a little darker and redder inside.
    mel += 0.25 * f["nostril"]
    hem += 0.30 * f["nostril"] * light

    overlay = _UVOverlays(size, atlas, head, params, rng)
    mel += overlay.freckles() + overlay.wrinkles()

    # Lips (drawn in UV); the mouth socket island is lip all over, darkened
    # below with depth, so the colour is continuous across the island's seam.
    lips = np.maximum(overlay.lips(), f["mouth_socket"])
    lip_hem = 0.25 + 0.75 * params.lip_redness
    hem += lips * (light * lip_hem + (1 - light) * 0.25) * (1 - 0.35 * params.age)
    lines = _stripes(atlas, rng) * atlas.face * _smoothstep(0.001, 0.003, f["d_mouth"])
    mel += lips * (0.08 + 0.25 * (1 - light) + 0.04 * lines)

    density = mel[:, None] * K_MEL + hem[:, None] * K_HEM + under
    rgb = base * np.exp(-density)
    rgb *= (1.0 + 0.035 * fine[:, :1] * (1 - lips[:, None]))  # pores and grain

    # Stubble: grey-blue shadow of cut hair in and under the skin, and fine
    # dark follicle dots (a texel or two).
    if params.beard > 0:
        beard = _beard_weight(pos, f, fr, lips, low[:, 2]) * params.beard
        # Fair hair barely shows; dark hair gives the blue-grey "five o'clock shadow".
        show = float(np.clip(1.0 - hair_lum / 0.35, 0.15, 1.0))
        rgb *= np.exp(-beard[:, None] * show * np.array([0.42, 0.36, 0.26], np.float32) * (0.5 + 0.5 * light))
        dots = _smoothstep(0.3, 1.5, fine[:, 1]) * beard * 0.3 * show
        rgb = rgb * (1 - dots[:, None]) + hair_lin * dots[:, None]

    # Scalp hair.
    hair_cov = _scalp_hair(pos, f, fr, params, low[:, 3], mid[:, 2], fine[:, 1])
    if params.hair_style == "short":
        strands = _noise(pos, 0.0004, 1, rng, stretch=np.array([1.0, 0.15, 1.0]))[:, 0] * _band_limit(atlas, 0.0004)
        hair_rgb = hair_lin * np.exp(0.22 * strands + 0.08 * mid[:, 2])[:, None]
        rgb = rgb * (1 - hair_cov[:, None]) + hair_rgb * hair_cov[:, None]
    elif params.hair_style == "buzz":
        # Clipped hair: skin shows through a dense mat of short dark stubs.
        mat = 0.55 + 0.2 * _smoothstep(-1.0, 1.0, fine[:, 1])
        rgb *= np.exp(-hair_cov[:, None] * np.array([0.30, 0.28, 0.22], np.float32))
        rgb = rgb * (1 - hair_cov[:, None] * mat[:, None]) + hair_lin * (hair_cov * mat)[:, None]

    # Brows over everything on the face.
    brows = overlay.brows()
    brow_rgb = hair_lin * 0.85
    rgb = rgb * (1 - brows[:, None]) + brow_rgb * brows[:, None]

    # Sockets: the lip / lid colour turns into wet dark mucosa with depth
    # (distance from the mouth or eye opening), starting just past the seam.
    # The ramps start two texels in, so bilinear lookups at the seam see no mucosa.
    texel = 2e-3 * atlas.mm_per_texel
    k = f["mouth_socket"] * _smoothstep(0.0, 0.008, f["socket_depth"] - texel)
    rgb = rgb * (1 - k[:, None]) + _MOUTH_SOCKET * (0.5 + 0.5 * light) * k[:, None]
    k = f["eye_socket"] * _smoothstep(0.0, 0.004, f["socket_depth"] - texel)
    rgb = rgb * (1 - k[:, None]) + _EYE_SOCKET * (0.5 + 0.5 * light) * k[:, None]

    img = np.zeros((size * size, 3), np.float32)
    img[atlas.index] = _linear_to_srgb(rgb)
    img = img[atlas.fill]
    return np.ascontiguousarray(np.round(img * 255).astype(np.uint8).reshape(size, size, 3))


def _band_limit(atlas: _Atlas, cell: float) -> np.ndarray:
    """[N] amplitude for noise of lattice ``cell`` (m): 1 where texels resolve it, fading where they cannot."""
    return np.clip(cell * 1000.0 / (1.5 * atlas.mm_per_texel), 0.0, 1.0).astype(np.float32)


def _stripes(atlas: _Atlas, rng: np.random.Generator) -> np.ndarray:
    """Vertical lip lines: noise varying fast along u, slowly along v (UV space, face chart)."""
    k = rng.uniform(0, 2 * np.pi)
    u, v = atlas.uv[:, 0], atlas.uv[:, 1]
    return (np.sin(u * 900 + 2 * np.sin(v * 120 + k)) * np.sin(u * 370 + k)).astype(np.float32)


def _beard_weight(pos, f, fr, lips, jitter) -> np.ndarray:
    x, y = np.abs(pos[:, 0]), pos[:, 1]
    # Upper boundary: under the nose at the midline, rising over the cheeks to the sideburns.
    top = np.interp(x, [0.0, 0.012, 0.022, 0.035, 0.05, 0.065, 0.08],
                    [fr["nose_base_y"] - 0.003, fr["nose_base_y"] - 0.004, fr["nose_base_y"] - 0.010,
                     fr["nose_base_y"] - 0.010, fr["nose_base_y"] - 0.006, fr["ear_front_y"] - 0.025,
                     fr["ear_front_y"] - 0.005])
    top = top + 0.005 * jitter
    w = _smoothstep(0.008, -0.006, y - top)
    # Lower boundary on the neck, ~45 mm under the chin.
    w *= _smoothstep(fr["chin_y"] - 0.06, fr["chin_y"] - 0.035, y)
    w *= 1 - _smoothstep(0.5, 0.9, lips + 0.6 * np.exp(-(f["d_mouth"] / 0.004) ** 2))
    w *= (1 - f["ear"]) * (1 - f["nostril"]) * (1 - f["mouth_socket"])
    w *= _smoothstep(1.9, 1.6, np.abs(f["phi"]))  # not round the back of the neck
    return w.astype(np.float32)


def _scalp_hair(pos, f, fr, params, jitter, mid, fine) -> np.ndarray:
    """Coverage in [0, 1] of scalp hair (0 for bald).

    The hairline is a height per azimuth about the vertical axis (0 = front):
    forehead, temple corners (raised by ``recession``), the sideburn down in
    front of the ear, over the ear, behind it and down to the nape; jittered by
    low-frequency noise and thinned at its edge by fine noise.
    """
    if params.hair_style == "bald":
        return np.zeros(len(pos), np.float32)
    phi = np.degrees(np.abs(f["phi"]))
    y_front = fr["brow_y"] + params.forehead / 1000.0
    rec = params.recession * 0.03
    knots = [0, 20, 38, 50, 60, 68, 76, 80, 100, 112, 135, 180]
    heights = [y_front, y_front + 0.003 + 0.5 * rec, y_front + rec, fr["brow_y"] + 0.022 + 0.6 * rec,
               fr["eye_y"] + 0.018, fr["ear_front_y"] - 0.008, fr["ear_front_y"] - 0.006, fr["ear_top_y"] + 0.008,
               fr["ear_top_y"] + 0.008, fr["ear_front_y"] - 0.02, fr["mouth_y"], fr["mouth_y"] - 0.01]
    line = np.interp(phi, knots, heights) + 0.0025 * jitter + 0.0012 * mid
    soft = 0.005
    cov = _smoothstep(-soft, soft, pos[:, 1] - line)
    cov *= 1 - _smoothstep(0.02, 0.3, f["ear"])
    cov *= 1 - f["mouth_socket"]
    cov *= 1 - f["eye_socket"]
    # Wispy edge: fine noise thins the hair where coverage is partial.
    edge = 1 - np.abs(2 * cov - 1)
    cov = np.clip(cov - 0.5 * edge * np.clip(fine, 0, None), 0, 1)
    return cov.astype(np.float32)


class _UVOverlays:
    """Features drawn in UV on the face chart: lips, brows, freckles, wrinkles.

    Each returns a per-texel field [N] (sampled at the atlas' covered texels).
    """

    def __init__(self, size: int, atlas: _Atlas, head: _Head, params: SkinParams, rng: np.random.Generator):
        self.size, self.atlas, self.head, self.p = size, atlas, head, params
        self.rng = np.random.default_rng(rng.integers(2**31 - 1))
        self.lm_uv = head.lm_uv.astype(np.float64)
        # mm per UV unit around the eyes (the scale most features are drawn at).
        d3 = np.linalg.norm(head.lm[17] - head.lm[26])
        d2 = np.linalg.norm(self.lm_uv[17] - self.lm_uv[26])
        self.mm_per_uv = 1000.0 * d3 / d2

    def _sample(self, img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """Sample a crop image placed at ``box`` = (x0, y0, x1, y1) texels at the covered texels."""
        x0, y0, x1, y1 = box
        full = np.zeros((self.size, self.size), np.float32)
        full[y0:y1, x0:x1] = img
        return full.ravel()[self.atlas.index] * self.atlas.face

    def _box(self, uv_points: np.ndarray, margin_mm: float) -> tuple[int, int, int, int]:
        m = margin_mm / self.mm_per_uv
        lo = np.floor((uv_points.min(0) - m) * self.size).astype(int).clip(0, self.size)
        hi = np.ceil((uv_points.max(0) + m) * self.size).astype(int).clip(0, self.size)
        return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])

    def lips(self) -> np.ndarray:
        lm = self.lm_uv
        outer = lm[48:60].copy()
        centre = lm[60:68].mean(0)
        # Fullness: scale the outline vertically about the mouth line, more for the lower lip.
        full = self.p.lip_fullness
        dv = outer[:, 1] - centre[1]
        outer[:, 1] = centre[1] + dv * np.where(dv < 0, full, 1 + (full - 1) * 1.3)
        outer[:, 0] = centre[0] + (outer[:, 0] - centre[0]) * (0.98 + 0.04 * self.rng.random())
        curve = _catmull_rom(outer, 10, closed=True)
        ss = 4
        box = self._box(curve, 4.0)
        x0, y0, x1, y1 = box
        im = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
        pts = [((u * self.size - x0) * ss, (v * self.size - y0) * ss) for u, v in curve]
        ImageDraw.Draw(im).polygon(pts, fill=255)
        a = np.asarray(im.resize((x1 - x0, y1 - y0), Image.BOX), np.float32) / 255.0
        sigma = 0.45 / (self.mm_per_uv / self.size)  # ~0.45 mm soft vermilion border
        a = ndimage.gaussian_filter(a, sigma)
        return self._sample(a, box)

    def brows(self) -> np.ndarray:
        """Hair-like strokes along each brow, alpha in [0, 1]."""
        p, rng = self.p, self.rng
        out = np.zeros(len(self.atlas.index), np.float32)
        if p.brow_density <= 0:
            return out
        mm = self.mm_per_uv
        for ids in ((21, 20, 19, 18, 17), (22, 23, 24, 25, 26)):  # medial (head) to lateral (tail)
            pts = self.lm_uv[list(ids)].copy()
            # Extend the tail a little beyond the last landmark.
            pts = np.concatenate([pts, pts[-1:] + 0.35 * (pts[-1:] - pts[-2:-1])])
            curve = _catmull_rom(pts, 12)
            seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
            arc = np.concatenate([[0], np.cumsum(seg)]) / seg.sum()
            tangent = np.gradient(curve, axis=0)
            tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
            up = np.stack([tangent[:, 1], -tangent[:, 0]], 1)  # perpendicular
            if up[:, 1].mean() > 0:  # v grows downward: "up" on the face is -v
                up = -up
            box = self._box(curve, 10.0)
            x0, y0, x1, y1 = box
            ss = 3
            scale = self.size * ss
            im = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
            draw = ImageDraw.Draw(im)
            n_hairs = int(650 * p.brow_density * (p.brow_thickness / 9.0))
            width = max(1, int(round(0.12 / (mm / scale))))
            t = rng.random(n_hairs) ** 1.15  # denser at the head
            k = np.searchsorted(arc, t).clip(1, len(arc) - 1)
            c, tg, nu = curve[k], tangent[k], up[k]
            # Thickness profile: full at the head, tapering to ~35% at the tail.
            half = 0.5 * p.brow_thickness * (1.0 - 0.65 * t) / mm
            o = rng.uniform(-1, 1, n_hairs) * half * (1 - 0.15 * rng.random(n_hairs))
            root = c + nu * (o - 0.15 * half)[:, None]
            # Direction: upward at the head, along the tail, converging to the middle line.
            ang = np.radians(75 * (1 - _smoothstep(0.05, 0.35, t)) + 12 + rng.normal(0, 8, n_hairs)) \
                - 0.5 * np.sign(o) * (np.abs(o) / np.maximum(half, 1e-9)) * np.radians(15)
            d = tg * np.cos(ang)[:, None] + nu * np.sin(ang)[:, None]
            length = (rng.uniform(4.0, 7.5, n_hairs) / mm * (1 - 0.3 * t))[:, None]
            bend = -0.12 * length * nu
            hairs = np.stack([root, root + 0.5 * length * d + 0.5 * bend, root + length * d + 1.5 * bend], 1)
            hairs = (hairs * self.size - np.array([x0, y0])) * ss  # [n, 3, 2] pixels of the crop
            shade = rng.integers(120, 256, n_hairs)
            for xy, fill in zip(hairs.tolist(), shade.tolist()):
                draw.line([tuple(q) for q in xy], fill=fill, width=width)
            a = np.asarray(im.resize((x1 - x0, y1 - y0), Image.BOX), np.float32) / 255.0
            a = 1 - np.exp(-2.2 * a)  # overlapping hairs saturate
            # A faint tint under the hairs where they are dense.
            a = np.clip(a + 0.25 * ndimage.gaussian_filter(a, 3.0 / (mm / self.size)), 0, 1)
            out = np.maximum(out, self._sample(a * (0.55 + 0.45 * p.brow_density), box))
        return out

    def freckles(self) -> np.ndarray:
        """Melanin density of freckles and (with age) larger age spots."""
        p, rng = self.p, self.rng
        out = np.zeros(len(self.atlas.index), np.float32)
        spots = []
        if p.freckles > 0:
            f = self.atlas.fields
            w = f["front"] * (0.25 + f["cheek"] + 1.5 * f["nose"])
            spots.append((int(450 * p.freckles), (0.35, 1.0), (0.15, 0.55), w))
        if p.age > 0.55:
            k = (p.age - 0.55) / 0.45
            w = self.atlas.fields["front"] + 0.5 * self.atlas.fields["forehead"]
            spots.append((int(25 * k), (1.2, 3.0), (0.15, 0.35), w))
        texel_mm = self.mm_per_uv / self.size
        for count, (r0, r1), (s0, s1), weight in spots:
            if count <= 0:
                continue
            prob = weight / max(float(weight.sum()), 1e-9)
            picks = rng.choice(len(prob), size=count, p=prob)
            radius_mm = rng.uniform(r0, r1, count)
            strength = rng.uniform(s0, s1, count)
            # Stamp one Gaussian (peak = strength, sigma = radius / 1.5) per spot.
            img = np.zeros((self.size, self.size), np.float32)
            ys, xs = np.divmod(self.atlas.index[picks], self.size)
            for x, y, r, a in zip(xs.tolist(), ys.tolist(), radius_mm.tolist(), strength.tolist()):
                sigma = max(r / texel_mm / 1.5, 0.5)
                h = int(math.ceil(3 * sigma))
                ya, yb, xa, xb = max(y - h, 0), min(y + h + 1, self.size), max(x - h, 0), min(x + h + 1, self.size)
                gy = np.exp(-0.5 * ((np.arange(ya, yb) - y) / sigma) ** 2)
                gx = np.exp(-0.5 * ((np.arange(xa, xb) - x) / sigma) ** 2)
                img[ya:yb, xa:xb] += a * np.outer(gy, gx)
            out += img.ravel()[self.atlas.index] * self.atlas.face
        return out

    def wrinkles(self) -> np.ndarray:
        """Faint darker lines (forehead, crow's feet, nasolabial, glabella) growing with age."""
        p, rng = self.p, self.rng
        if p.age < 0.25:
            return np.zeros(len(self.atlas.index), np.float32)
        amount = (p.age - 0.25) / 0.75
        lm = self.lm_uv
        mm = self.mm_per_uv
        lines = []
        # Forehead: horizontal arcs above the brows.
        brow_v = lm[17:27, 1].min()
        for k in range(rng.integers(2, 5)):
            v = brow_v - (10 + 6.5 * k + rng.normal(0, 1.5)) / mm
            u0, u1 = lm[18, 0] + rng.normal(0, 0.01), lm[25, 0] + rng.normal(0, 0.01)
            us = np.linspace(u0, u1, 12)
            arc = 0.012 * np.sin(np.linspace(0, np.pi, 12)) + 0.002 * rng.standard_normal(12).cumsum() / 3
            lines.append((np.stack([us, v - arc], 1), 0.35 + 0.3 * rng.random()))
        # Crow's feet: short rays from the outer eye corners.
        for corner, sign in ((36, -1), (45, 1)):
            c = lm[corner] + np.array([sign * 3.5 / mm, 0])
            for ang in rng.uniform(-40, 40, rng.integers(2, 5)):
                d = np.array([sign * np.cos(np.radians(ang)), -np.sin(np.radians(ang))])
                lines.append((np.stack([c + d * s / mm for s in (0, 5, 10)]), 0.5))
        # Nasolabial folds: from beside the nose wing to beyond the mouth corner.
        for wing, corner, sign in ((31, 48, -1), (35, 54, 1)):
            a = lm[wing] + np.array([sign * 4 / mm, -2 / mm])
            b = lm[corner] + np.array([sign * 5 / mm, 5 / mm])
            mid = 0.5 * (a + b) + np.array([sign * 2.5 / mm, 0])
            lines.append((_catmull_rom(np.stack([a, mid, b]), 6), 0.6))
        # Glabella: short vertical lines between the brows.
        for s in (-1, 1):
            c = 0.5 * (lm[21] + lm[22]) + np.array([s * 2.5 / mm, 0])
            lines.append((np.stack([c + np.array([0, 2 / mm]), c - np.array([0, 8 / mm])]), 0.4))
        allpts = np.concatenate([pts for pts, _ in lines])
        box = self._box(allpts, 3.0)
        x0, y0, x1, y1 = box
        im = Image.new("L", (x1 - x0, y1 - y0), 0)
        draw = ImageDraw.Draw(im)
        width = max(1, int(round(0.6 / (mm / self.size))))
        for pts, strength in lines:
            xy = [(u * self.size - x0, v * self.size - y0) for u, v in pts]
            draw.line(xy, fill=int(255 * strength), width=width, joint="curve")
        a = np.asarray(im, np.float32) / 255.0
        a = ndimage.gaussian_filter(a, 0.5 / (mm / self.size))
        return self._sample(a, box) * 0.22 * amount

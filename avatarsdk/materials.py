"""Procedural default textures for the non-skin materials of the ICT head.

Every texture is painted in the UV layout that :func:`avatarsdk.rigs.model.build_topology`
gives its material (glTF convention: origin top-left, v down), from measurements
of ICT-FaceKit's own UVs (the numbers are in the comments and checked against the
data in ``tests/test_gltf.py``):

* ``eyes`` atlas, 512 x 256: the left half is the sclera tile, the right half the
  iris tile. The sclera mesh is the whole outer eyeball *including the cornea
  bulge*, so an opaque sclera hides the iris mesh behind it; the iris is therefore
  painted twice with the same function of the distance ``rho`` from the optical
  axis: onto the cornea in the sclera tile (what an opaque renderer shows) and
  onto the iris tile (for renderers that make the cornea transparent).
* ``teeth`` atlas, 512 x 256: gums and tongue in the left half, teeth in the right.
* ``eyelashes``, 256 x 256 RGBA: twelve lash cards, one row of two cards per
  sixth of the texture; in each card u runs along the lid and v from the lash
  root (top) to the tip (bottom).

``eye_wet`` gets no texture: its three meshes (tear line, eye blend, eye
occlusion) share one UV square, the tear line lies over the lid-margin skin and
the occlusion sheet pokes through the lids at its edges, so no single texture
can shadow the eye without darkening the lids; the exporter gives it a nearly
transparent plain colour instead.

All functions are deterministic for a given ``seed`` and return C-contiguous
uint8 arrays in sRGB.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial import cKDTree

from avatarsdk.colour import linear_to_srgb, srgb_to_linear
from avatarsdk.errors import InputError

__all__ = ["IRIS_COLOURS", "MOUTH_INTERIOR", "SKIN_TONES", "default_textures", "paint_mouth_interior", "plain_skin_albedo"]

# Monk Skin Tone scale (Google, CC-BY 4.0), 10 sRGB swatches from lightest to darkest:
# a perceptually even range across the Fitzpatrick types I-VI.
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (246, 237, 228), (243, 231, 219), (247, 234, 208), (234, 218, 186), (215, 189, 150),
    (160, 126, 86), (130, 92, 67), (96, 65, 52), (58, 49, 42), (41, 36, 32),
)
IRIS_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.30, 0.18, 0.08), (0.20, 0.12, 0.06), (0.45, 0.33, 0.16), (0.28, 0.38, 0.22),
    (0.30, 0.45, 0.60), (0.45, 0.50, 0.55),
)
"""Iris base colours (sRGB in [0, 1]) that random and synthetic heads draw from."""

# --- Measured eye geometry (ICT generic neutral, millimetres) ----------------
# Iris tile: a planar projection along the eye's optical axis, centred on
# (0.5, 0.5): rho = 15.08 mm * |uv - centre|; the rim of the iris disc (radius
# 7.48 mm) is at uv radius 0.496 and the pupil hole of the mesh at 0.090 (1.36 mm).
_IRIS_UV_TO_MM = 15.08
_IRIS_DISC_MM = 7.48
# The visible iris is painted smaller than ICT's 15 mm disc, whose outer ring
# lies just under the cornea-sclera surface: a 7.48 mm radius makes the iris
# fill ~60% of the eye opening's width; a human iris is ~11.8 mm across (~40%).
_LIMBUS_MM = 5.9
_PUPIL_MM = 1.9  # painted pupil; the mesh hole (1.36 mm) reads too small
# Sclera tile: a disc map centred on the cornea apex; uv radius -> rho (mm) at
# the rings of the mesh (medians over both eyes). The painted limbus falls at uv
# radius ~0.11; beyond ~0.3 the disc wraps round the back of the eyeball, and the
# small disc in the tile's top-left corner is the back of the eyeball.
_SCLERA_UV_R = np.array([0.0, 0.0175, 0.0355, 0.053, 0.071, 0.089, 0.106, 0.122, 0.139, 0.170, 0.200, 0.250, 0.300])
_SCLERA_RHO = np.array([0.0, 1.1, 1.9, 2.8, 3.6, 4.55, 5.45, 6.25, 7.05, 8.6, 10.2, 12.6, 14.2])

# --- Eyelash cards: 6 rows (0-2 upper lid, 3-5 lower lid) x 2 cards ---------
_LASH_ROWS = 6
_LASH_CARD_V = (0.012, 0.152)  # v extent of a card inside its row band of height 1/6

_EYES_HW = (256, 512)
_TEETH_HW = (256, 512)
_LASH_SIZE = 256


def default_textures(*, iris_rgb: tuple[float, float, float] = (0.35, 0.25, 0.15), seed: int = 0) -> dict[str, np.ndarray]:
    """Paint the default textures of the non-skin materials.

    Args:
        iris_rgb: iris base colour, three sRGB values in [0, 1].
        seed: seed of the fibre, vein, lash and noise patterns.

    Returns:
        ``{"eyes": [256, 512, 3], "teeth": [256, 512, 3], "eyelashes": [256, 256, 4]}``
        uint8 sRGB images (see the module docstring for their layouts).

    Raises:
        InputError: ``iris_rgb`` is not three finite values in [0, 1], or ``seed``
            is not a non-negative integer.
    """
    iris = np.asarray(iris_rgb, np.float64)
    if iris.shape != (3,) or not np.isfinite(iris).all() or (iris < 0).any() or (iris > 1).any():
        raise InputError(f"iris_rgb must be three values in [0, 1], got {iris_rgb!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    # Painting takes ~0.1 s and every generated head asks for the same ones: paint once, hand out copies.
    return {k: v.copy() for k, v in _painted(tuple(float(c) for c in iris), int(seed)).items()}


@functools.lru_cache(maxsize=8)
def _painted(iris_rgb: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    iris = np.asarray(iris_rgb, np.float64)
    root = np.random.SeedSequence(int(seed))
    eyes_rng, teeth_rng, lash_rng = (np.random.default_rng(s) for s in root.spawn(3))
    return {
        "eyes": _eyes(iris, eyes_rng),
        "teeth": _teeth(teeth_rng),
        "eyelashes": _eyelashes(lash_rng),
    }


def plain_skin_albedo(rgb: tuple[float, float, float], size: int = 1024) -> np.ndarray:
    """Return a uniform skin albedo for the unified head UV.

    Args:
        rgb: skin tone, three sRGB values in [0, 1].
        size: side in pixels, a power of two >= 1.

    Returns:
        [size, size, 3] uint8 image filled with ``rgb``.

    Raises:
        InputError: ``rgb`` is not three values in [0, 1], or ``size`` is not a power of two.
    """
    colour = np.asarray(rgb, np.float64)
    if colour.shape != (3,) or not np.isfinite(colour).all() or (colour < 0).any() or (colour > 1).any():
        raise InputError(f"rgb must be three values in [0, 1], got {rgb!r}")
    if not isinstance(size, (int, np.integer)) or size < 1 or size & (size - 1):
        raise InputError(f"size must be a power of two >= 1, got {size!r}")
    out = np.empty((size, size, 3), np.uint8)
    out[:] = np.round(colour * 255).astype(np.uint8)
    return out


MOUTH_INTERIOR = (0.20, 0.035, 0.035)
"""Linear albedo of the mucosa deep in the mouth socket (as :mod:`avatarsdk.paint` paints it)."""

MOUTH_INTERIOR_DEPTH = 0.008
"""Metres into the mouth socket (from the lip seam) over which the skin turns into mucosa."""


def paint_mouth_interior(skin: np.ndarray, topology, neutral: np.ndarray) -> np.ndarray:
    """Paint the mouth socket's texels of a skin albedo as dark mucosa.

    ICT's mouth socket (the inner cheeks, floor and roof around the teeth) is
    skin material on small islands of the back-of-head chart. A skin albedo made
    from a photo or a plain tone gives those islands skin colour, so an open
    mouth shows a bright inside against which the teeth read as a loose strip.
    Each socket triangle is filled with the lip-to-mucosa blend at its depth
    (its vertices' mean distance to the nearest face vertex on ``neutral``,
    smoothstep over :data:`MOUTH_INTERIOR_DEPTH`), so the colour is continuous
    at the lip seam and dark deep inside, as in :mod:`avatarsdk.paint`.

    Args:
        skin: [S, S, 3] uint8 sRGB albedo in the unified head UV.
        topology: the ICT :class:`~avatarsdk.datatypes.Topology`.
        neutral: [V, 3] float neutral vertices (metres) that set the depth.

    Returns:
        A new [S, S, 3] uint8 albedo.

    Raises:
        InputError: ``skin`` is not a square [S, S, 3] uint8 image.
    """
    skin = np.asarray(skin)
    if skin.ndim != 3 or skin.shape[2] != 3 or skin.shape[0] != skin.shape[1] or skin.dtype != np.uint8:
        raise InputError(f"skin must be a square [S, S, 3] uint8 image, got {skin.dtype} {skin.shape}")
    size = skin.shape[0]
    a, b = topology.parts["mouth_socket"]
    f0, f1 = topology.parts["face"]
    tris = np.asarray(topology.triangles, np.int64)
    skin_id = topology.materials.index("skin")
    sel = np.nonzero((np.asarray(topology.tri_material) == skin_id) & ((tris >= a) & (tris < b)).all(1))[0]
    if len(sel) == 0:
        return skin.copy()
    pos = np.asarray(neutral, np.float64)
    depth = cKDTree(pos[f0:f1]).query(pos[a:b])[0]
    t = np.clip(depth / MOUTH_INTERIOR_DEPTH, 0.0, 1.0)
    weight = t * t * (3 - 2 * t)  # smoothstep, per socket vertex
    tri_w = weight[tris[sel] - a].mean(1)
    mask = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(mask)
    uv = np.asarray(topology.corner_uv, np.float64)[sel] * size - 0.5  # pixel centres at integers
    for corners, w in zip(uv, tri_w):
        draw.polygon([tuple(c) for c in corners], fill=float(w), outline=float(w))
    k = np.asarray(mask, np.float32)[..., None]
    lin = srgb_to_linear(skin.astype(np.float32) / 255.0)
    out = lin * (1 - k) + np.asarray(MOUTH_INTERIOR, np.float32) * k
    return np.round(linear_to_srgb(out) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8))


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _value_noise(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """[H, W] smooth noise in [0, 1]: a random grid of ``cells`` values upsampled bicubically."""
    grid = rng.random((cells[0] + 1, cells[1] + 1)).astype(np.float32)
    big = Image.fromarray(grid).resize((shape[1], shape[0]), Image.BICUBIC)
    return np.clip(np.asarray(big, np.float64), 0.0, 1.0)


def _periodic_noise(n: int, harmonics: int, rng: np.random.Generator) -> np.ndarray:
    """[n] samples of a random 2*pi-periodic signal with ``harmonics`` harmonics, scaled to [0, 1]."""
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    k = np.arange(1, harmonics + 1)
    amp = rng.normal(size=harmonics) / np.sqrt(k)
    phase = rng.uniform(0, 2 * np.pi, size=harmonics)
    sig = (amp[:, None] * np.cos(k[:, None] * theta[None] + phase[:, None])).sum(0)
    return (sig - sig.min()) / max(float(np.ptp(sig)), 1e-9)


def _polar(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius and angle of each texel centre of an [h, w] tile about the tile centre, in tile units."""
    y, x = np.mgrid[0:h, 0:w]
    du, dv = (x + 0.5) / w - 0.5, (y + 0.5) / h - 0.5
    return np.hypot(du, dv), np.arctan2(-dv, du)


# ---------------------------------------------------------------------------
# Eyes
# ---------------------------------------------------------------------------

_SCLERA_WHITE = np.array([0.93, 0.91, 0.88])
SCLERA_SRGB: tuple[float, float, float] = (0.93, 0.91, 0.88)
"""sRGB albedo of the white of the eye (default eye texture; the photo exposure cue in :mod:`avatarsdk.albedo`)."""
_SCLERA_PINK = np.array([0.88, 0.70, 0.68])
_VEIN = np.array([0.72, 0.22, 0.22])


class _IrisPainter:
    """The iris as a function of (rho in mm from the optical axis, angle)."""

    def __init__(self, colour: np.ndarray, rng: np.random.Generator) -> None:
        self.colour = colour
        # Radial fibres: two periodic profiles blended along the radius, so the
        # fibres wander a little instead of being perfectly straight spokes.
        self.fibres = [_periodic_noise(2048, 160, rng) for _ in range(2)]
        self.crypts = _periodic_noise(2048, 24, rng)

    def __call__(self, rho: np.ndarray, theta: np.ndarray) -> np.ndarray:
        idx = ((theta % (2 * np.pi)) / (2 * np.pi) * 2048).astype(np.int64) % 2048
        t = np.clip((rho - _PUPIL_MM) / (_LIMBUS_MM - _PUPIL_MM), 0.0, 1.0)  # 0 at pupil, 1 at limbus
        fib = (1 - t) * self.fibres[0][idx] + t * self.fibres[1][idx]
        shade = 0.70 + 0.55 * fib
        # Collarette: a lighter ring at ~35% of the way out, crypts darker patches.
        shade += 0.25 * np.exp(-(((t - 0.33) / 0.08) ** 2)) * (0.5 + self.crypts[idx])
        shade *= 1.0 - 0.35 * _smoothstep(0.55, 1.0, t) * self.crypts[idx]
        rgb = self.colour * shade[..., None]
        # Dark limbal ring, blending into the sclera just outside the limbus.
        limbal = _smoothstep(_LIMBUS_MM - 1.3, _LIMBUS_MM - 0.1, rho)
        rgb = rgb * (1.0 - 0.75 * limbal[..., None])
        # Pupil: black with a soft 0.15 mm edge.
        pupil = 1.0 - _smoothstep(_PUPIL_MM - 0.15, _PUPIL_MM + 0.15, rho)
        rgb = rgb * (1.0 - pupil[..., None]) + 0.015 * pupil[..., None]
        return rgb


def _sclera_base(r_uv: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """White sclera that turns pink towards the corners of the eye (larger uv radius)."""
    pink = _smoothstep(0.18, 0.40, r_uv) * 0.45
    noise = _value_noise((h, w), (16, 16), rng)
    rgb = _SCLERA_WHITE * (1 - pink[..., None]) + _SCLERA_PINK * pink[..., None]
    return rgb * (0.97 + 0.05 * noise[..., None])


def _veins(h: int, w: int, rng: np.random.Generator, n: int = 22, ss: int = 4) -> np.ndarray:
    """[h, w] float vein coverage: thin wandering lines from the edge towards the limbus."""
    canvas = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(n):
        ang = rng.uniform(0, 2 * np.pi)
        r0, r1 = rng.uniform(0.30, 0.36), rng.uniform(0.17, 0.24)
        steps = 24
        rs = np.linspace(r0, r1, steps)
        angs = ang + np.cumsum(rng.normal(0, 0.012, steps))
        pts = [((0.5 + r * np.cos(a)) * w * ss, (0.5 - r * np.sin(a)) * h * ss) for r, a in zip(rs, angs)]
        for i in range(steps - 1):
            width = max(1, int(round(ss * (1.4 - 1.0 * i / steps))))
            draw.line([pts[i], pts[i + 1]], fill=int(255 * (0.8 - 0.6 * i / steps)), width=width)
        if rng.random() < 0.5:  # one branch
            j = int(rng.integers(4, steps - 6))
            b_ang = angs[j] + rng.choice([-1, 1]) * rng.uniform(0.05, 0.15)
            br = np.linspace(rs[j], rs[j] - rng.uniform(0.03, 0.06), 8)
            bp = [((0.5 + r * np.cos(b_ang)) * w * ss, (0.5 - r * np.sin(b_ang)) * h * ss) for r in br]
            draw.line(bp, fill=90, width=ss)
    small = canvas.resize((w, h), Image.BOX)
    return np.asarray(small, np.float64) / 255.0


def _eyes(iris: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, half = _EYES_HW[0], _EYES_HW[1] // 2
    painter = _IrisPainter(iris, rng)

    # Sclera tile: cornea disc painted with the iris, sclera outside.
    r_uv, theta = _polar(h, half)
    rho = np.interp(r_uv, _SCLERA_UV_R, _SCLERA_RHO)
    sclera = _sclera_base(r_uv, rng, h, half)
    veins = _veins(h, half, rng) * 0.3
    sclera = sclera * (1 - veins[..., None]) + _VEIN * veins[..., None]
    # Soft grey shadow ring just outside the limbus (the limbus is not a hard edge).
    sclera *= 1.0 - 0.12 * (1.0 - _smoothstep(_LIMBUS_MM, _LIMBUS_MM + 1.2, rho))[..., None]
    inside = _smoothstep(_LIMBUS_MM + 0.1, _LIMBUS_MM - 0.2, rho)[..., None]  # 1 inside the limbus
    left = painter(rho, theta) * inside + sclera * (1 - inside)

    # Iris tile: the same iris, sclera white between the limbus and the rim of
    # the disc; outside the disc (back of the iris, pupil tube) dark.
    rho = r_uv * _IRIS_UV_TO_MM
    inside = _smoothstep(_LIMBUS_MM + 0.1, _LIMBUS_MM - 0.2, rho)[..., None]
    right = painter(rho, theta) * inside + _SCLERA_WHITE * (1 - inside)
    outside = _smoothstep(_IRIS_DISC_MM - 0.05, _IRIS_DISC_MM + 0.3, rho)[..., None]
    right = right * (1 - outside) + np.array([0.05, 0.04, 0.035]) * outside

    return _to_u8(np.concatenate([left, right], axis=1))


# ---------------------------------------------------------------------------
# Teeth and lashes
# ---------------------------------------------------------------------------

_GUMS = np.array([0.78, 0.42, 0.44])
_TEETH = np.array([0.93, 0.90, 0.82])


def _teeth(rng: np.random.Generator) -> np.ndarray:
    h, half = _TEETH_HW[0], _TEETH_HW[1] // 2
    n1 = _value_noise((h, half), (12, 12), rng)
    n2 = _value_noise((h, half), (40, 40), rng)
    gums = _GUMS * (0.90 + 0.12 * n1[..., None] + 0.06 * n2[..., None])
    n3 = _value_noise((h, half), (10, 10), rng)
    teeth = _TEETH * (0.93 + 0.07 * n3[..., None])
    return _to_u8(np.concatenate([gums, teeth], axis=1))


_LASH_RGB = np.array([0.06, 0.045, 0.04])


def _eyelashes(rng: np.random.Generator, ss: int = 4) -> np.ndarray:
    size = _LASH_SIZE
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    band = size * ss / _LASH_ROWS
    v0, v1 = _LASH_CARD_V
    for row in range(_LASH_ROWS):
        upper = row < 3
        top = row * band + v0 * size * ss * 0.8  # roots a little above the card's top edge
        card_h = (v1 - v0) * size * ss
        count = 110 if upper else 70
        for _ in range(count):
            x0 = rng.uniform(0.0, size * ss)
            length = card_h * (rng.uniform(0.70, 1.0) if upper else rng.uniform(0.5, 0.9))
            # Neighbouring lashes lean the same way (a slow trend along the lid) with a little scatter.
            tilt = (0.18 * np.sin(2 * np.pi * x0 / (size * ss) * 2 + row) + rng.normal(0.0, 0.04)) * length
            curl = rng.normal(0.0, 0.04) * length
            root_w = rng.uniform(1.1, 1.7) * ss
            steps = 10
            ts = np.linspace(0.0, 1.0, steps + 1)
            xs = x0 + tilt * ts + curl * ts**2
            ys = top + length * ts
            for i in range(steps):
                width = max(1, int(round(root_w * (1.0 - 0.8 * ts[i]))))
                draw.line([(xs[i], ys[i]), (xs[i + 1], ys[i + 1])], fill=255, width=width)
    alpha = np.asarray(canvas.resize((size, size), Image.BOX), np.float64) / 255.0
    out = np.empty((size, size, 4))
    # Colour everywhere (not only under the strands) so filtering never mixes in a light fringe.
    out[..., :3] = _LASH_RGB
    out[..., 3] = np.clip(alpha * 1.15, 0.0, 1.0)
    return _to_u8(out)

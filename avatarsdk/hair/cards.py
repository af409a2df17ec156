"""Hair cards (polystrips) from guide strands, their levels of detail and the strand atlas.

Each strand becomes one card: a ribbon of ``segments`` quads that lies along
the head (its width direction is perpendicular to the strand and to the scalp
normal at the root), tapering from root to tip. Cards map onto one of four
tiles of a procedurally drawn strand atlas (RGBA: alpha strands, colour from
root to tip): tile 0 dense, 1 medium, 2 wispy, 3 wavy; inner layers use the
dense tiles and the outer layers the wispy ones, so the silhouette breaks up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from avatarsdk.cache import cached_arrays, code_digest
from avatarsdk.hair.colour import HairColour
from avatarsdk.hair.grow import HeadSurface, Strands, push_out

__all__ = ["Cards", "ATLAS_SIZE", "LOD_CARD_SHARE", "make_cards", "strand_atlas"]

ATLAS_SIZE = 512
TILES = 4
LOD_CARD_SHARE = (1.0, 0.5, 0.25)  # share of the cards each level keeps (matches rigs.lod's three levels)
LOD_SEGMENT_SHARE = (1.0, 0.6, 0.4)


@dataclass(frozen=True, eq=False)
class Cards:
    """One level of detail of a head's hair cards.

    Attributes:
        level: 0 for the full set.
        positions: [N, 3] float32 metres.
        normals: [N, 3] float32 unit shading normals (outward from the head).
        uv: [N, 2] float32 atlas coordinates (glTF convention, v down; root at small v).
        triangles: [F, 3] int32.
        joints: [N, 4] uint8 joint indices into ``types.JOINT_NAMES``.
        weights: [N, 4] float32 skin weights, rows sum to 1.
    """

    level: int
    positions: np.ndarray
    normals: np.ndarray
    uv: np.ndarray
    triangles: np.ndarray
    joints: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        for a in (self.positions, self.normals, self.uv, self.triangles, self.joints, self.weights):
            a.setflags(write=False)

    @property
    def num_triangles(self) -> int:
        """F, the card triangles."""
        return int(len(self.triangles))


def _normalize(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(n > 1e-12, n, 1.0)


def _resample(points: np.ndarray, k_new: int) -> np.ndarray:
    """[S, K+1, 3] -> [S, k_new+1, 3] by linear interpolation in the point index."""
    k_old = points.shape[1] - 1
    if k_new == k_old:
        return points
    x = np.linspace(0, k_old, k_new + 1)
    i0 = np.minimum(np.floor(x).astype(int), k_old - 1)
    f = (x - i0)[None, :, None]
    return points[:, i0] * (1 - f) + points[:, i0 + 1] * f


def make_cards(head: HeadSurface, strands: Strands, level: int, *, head_joint: int, neck_joint: int,
               head_joint_y: float, tiles: np.ndarray | None = None, push: bool = True) -> Cards:
    """Turn strands into the cards of LOD ``level`` (fewer, wider, coarser cards at higher levels).

    Args:
        head: collision surface (card corners are pushed out of the skin too).
        strands: guide strands.
        level: 0, 1 or 2.
        head_joint, neck_joint: joint indices for skinning.
        head_joint_y: height of the head joint; card points well below it follow the neck.
        tiles: [S] atlas tile per strand (default: from the layer).
        push: push the card corners 1 mm out of the skin (every card that is shipped); False only for the
            hair search's stand-in cards, whose silhouette the push hardly changes (about 60 % of the
            search's distance queries).
    """
    share = LOD_CARD_SHARE[level]
    s_all = len(strands.rank)
    keep = np.sort(np.nonzero(strands.rank < max(1, int(round(s_all * share))))[0])
    k_full = strands.points.shape[1] - 1
    k = max(1, int(round(k_full * LOD_SEGMENT_SHARE[level])))
    p = _resample(strands.points[keep].astype(np.float64), k)  # [S, K+1, 3]
    s = len(keep)
    t = _normalize(np.gradient(p, axis=1))
    n0 = strands.root_normals[keep].astype(np.float64)
    side0 = np.cross(_normalize(p[:, -1] - p[:, 0]), n0)
    bad = np.linalg.norm(side0, axis=1) < 0.2
    side0[bad] = np.cross(n0[bad], np.array([0.0, 1.0, 0.0]))
    side0 = _normalize(side0)
    side = _normalize(side0[:, None] - np.einsum("skc,sc->sk", t, side0)[..., None] * t)
    frac = np.linspace(0, 1, k + 1)
    width = strands.width[keep][:, None] / np.sqrt(share) * (1 - 0.55 * frac**1.5)  # [S, K+1]
    left = p - 0.5 * width[..., None] * side
    right = p + 0.5 * width[..., None] * side
    pos = np.stack([left, right], 2).reshape(-1, 3)  # [S*(K+1)*2, 3], order (strand, point, side)
    if push:
        pos = push_out(head, pos, 0.001)

    nrm = _normalize(np.cross(side, t))
    radial = _normalize(p - head.centre)
    flip = np.einsum("skc,skc->sk", nrm, radial) < 0
    nrm[flip] *= -1
    nrm = _normalize(nrm + radial)
    nrm = np.repeat(nrm[:, :, None], 2, 2).reshape(-1, 3)

    if tiles is None:
        tiles = np.minimum((strands.layer * TILES).astype(int), TILES - 1)
    tile = tiles[keep]
    tw = 1.0 / TILES
    u0 = tile * tw + 0.5 / ATLAS_SIZE
    u1 = (tile + 1) * tw - 0.5 / ATLAS_SIZE
    uv = np.empty((s, k + 1, 2, 2))
    uv[:, :, 0, 0] = u0[:, None]
    uv[:, :, 1, 0] = u1[:, None]
    vv = 0.5 / ATLAS_SIZE + frac * (1 - 1.0 / ATLAS_SIZE)
    uv[:, :, :, 1] = vv[None, :, None]
    uv = uv.reshape(-1, 2)

    base = (np.arange(s)[:, None] * (k + 1) + np.arange(k)[None, :]) * 2  # left vertex of point j
    l0, r0, l1, r1 = base, base + 1, base + 2, base + 3
    tris = np.stack([np.stack([l0, r0, l1], -1), np.stack([r0, r1, l1], -1)], 2).reshape(-1, 3)

    y = pos[:, 1]
    wn = np.clip((head_joint_y - 0.02 - y) / 0.12, 0, 1) * 0.8
    joints = np.zeros((len(pos), 4), np.uint8)
    joints[:, 0], joints[:, 1] = head_joint, neck_joint
    weights = np.zeros((len(pos), 4), np.float32)
    weights[:, 1] = wn
    weights[:, 0] = 1 - weights[:, 1]
    joints[weights == 0] = 0
    return Cards(level, pos.astype(np.float32), nrm.astype(np.float32), uv.astype(np.float32),
                 tris.astype(np.int32), joints, weights)


@lru_cache(maxsize=2)
def _atlas_layers(size: int = ATLAS_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """([H, W] alpha, [H, W] brightness) of the strand atlas, fixed seed (identical every run).

    Kept in the disk cache (:mod:`avatarsdk.cache`): drawing it costs about half a
    second, which a random head with hair would otherwise pay in every new process.
    """
    arrays = cached_arrays("hair-atlas", {"size": int(size), "code": code_digest("avatarsdk.hair.cards")},
                           lambda: dict(zip(("alpha", "bright"), _draw_atlas_layers(size))))
    return arrays["alpha"], arrays["bright"]


def _draw_atlas_layers(size: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_atlas_layers` computed."""
    rng = np.random.default_rng(1234)
    tw = size // TILES
    alpha = np.zeros((size, size))
    bright = np.ones((size, size))
    y = (np.arange(size) + 0.5) / size  # root (0) to tip (1)
    xs = np.arange(tw) + 0.5
    for tile, (count, sigma, end_lo, wave) in enumerate(((70, 1.5, 0.8, 0.0), (48, 1.4, 0.65, 0.0),
                                                          (30, 1.3, 0.45, 0.0), (50, 1.5, 0.7, 1.0))):
        x0 = rng.uniform(0.08, 0.92, count) * tw
        # strands converge a little toward the tip (clumps), waves for tile 3
        clump = rng.uniform(0.3, 0.7, count) * tw
        xc = x0[:, None] + (clump[:, None] - x0[:, None]) * 0.35 * y[None] ** 2
        xc = xc + wave * 3.0 * np.sin(2 * np.pi * (y[None] * 5 + rng.uniform(0, 1, count)[:, None]))
        end = rng.uniform(end_lo, 1.0, count)
        taper = np.clip((end[:, None] - y[None]) / 0.12, 0, 1)  # [n, H]
        sig = sigma * (0.45 + 0.55 * taper)
        a = np.exp(-0.5 * ((xs[None, None] - xc[..., None]) / sig[..., None]) ** 2) * (taper[..., None] > 0)
        a *= np.minimum(1.0, taper[..., None] * 3)
        cover = 1 - np.prod(1 - np.clip(a, 0, 0.98), axis=0)
        b = rng.uniform(0.75, 1.2, count)
        bsum = np.einsum("nhw,n->hw", a, b) / np.maximum(a.sum(0), 1e-6)
        alpha[:, tile * tw:(tile + 1) * tw] = cover
        bright[:, tile * tw:(tile + 1) * tw] = np.where(a.sum(0) > 1e-6, bsum, 1.0)
    # darker near the root: light reaches the roots less
    bright *= (0.72 + 0.28 * np.clip(y / 0.25, 0, 1))[:, None]
    return alpha, bright


def strand_atlas(colour: HairColour, size: int = ATLAS_SIZE) -> np.ndarray:
    """[size, size, 4] uint8 sRGBA strand atlas in ``colour`` (root colour at the top of each tile)."""
    alpha, bright = _atlas_layers(size)
    y = ((np.arange(size) + 0.5) / size)[:, None, None]
    root, tip = np.array(colour.root), np.array(colour.tip)
    rgb = (root + (tip - root) * y**1.3) * bright[..., None]
    out = np.empty((size, size, 4), np.uint8)
    out[..., :3] = np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)
    out[..., 3] = np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8)
    return out

"""Hair from the photo: style and parameters by analysis by synthesis, colour from the de-lit hair pixels.

The face parser's hair mask (:attr:`~avatarsdk.datatypes.FaceParse.hair`) says
which pixels show hair; hats and hands hide what is behind them, so those
pixels are left out. Each candidate hairstyle is grown on the avatar and
rendered with the photo's fitted camera at about 144 px together with the head
by the project's z-buffer rasteriser (what the benchmark measures with), and the
hair that stays in front of the head is compared with the hair mask (IoU). The
coarse pass over the library grows an eighth of each style's cards (wider by the
square root, about the same area); the best style is then refined (20
evaluations, a third of its cards) along its continuous parameters (length, volume,
fringe, parting, hairline recession): a coordinate search that keeps a change
only when the IoU improves and steps on along a parameter while it does. Its
result is scored with every card of its LOD0 (the very strands
:func:`avatarsdk.hair.build_hair` grows for the seed, so the search's IoU is the
measured one). Last, a length map cuts the strands where the photo's hair ends
(:meth:`_Search.carve`, tried on the style and on a longer, fuller one with and
without a fringe, kept when the IoU improves): a strand is followed from its
root and cut at its first point that would show outside the parsed hair; the
map keeps, per scalp cell, a low quantile of the kept shares (the cut errs
short); hair the photo does not show takes the cut of its mirror cell, else the
cut interpolated around the head from its neighbours (:func:`tidy_length_map`),
and no side or back strand is cut shorter than :data:`SHORT_SIDES` (short
sides stay short hair, not bare scalp under a crest). The cut style's
parameters are searched once more (6 evaluations), as the cut hides what a
fuller style adds outside the photo's hair. Length and volume stay near the
style's library values (:func:`_bounds`): a quiff grown to twice its volume or
a chin-length cut grown to the shoulders reads as a wig.

Curl is not read from the silhouette (a curly style's volume wins the IoU on
smooth, full hair): curly styles are searched only when the texture of the
photo's hair is isotropic (:func:`shows_curl`); otherwise their straight twins
are (:data:`avatarsdk.hair.styles.SMOOTH_TWINS`: the afro's is the bouffant).

Very little parsed hair (less than :data:`BALD_SHARE` of the parsed head) is a
bald head; less than :data:`SHAVED_SHARE` a shaved one (the buzz style as it
is, the scalp tint carrying the colour); not under a hat, which hides the hair.

The colour: the photo's hair pixels (box-filtered in linear light, where the
chosen style's render shows hair too) divided by the luminance of the fitted SH
light evaluated at the rendered card normals (the light's colour is left in: it
is confounded with the skin's, and divided out it turns grey hair orange) and by
the photo's exposure, and by the strand atlas's own brightness at the pixel's
root-to-tip position; the mean (linear) of the pixels near the roots is the root
colour, of those near the tips the tip colour (means, not medians: bright
strands and highlights are part of the colour the photo shows, and a median of
dark hair is a few times darker than its mean). Both are kept in the range of
real hair (CIELAB lightness 6..92, chroma <= 60).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi

from avatarsdk.colour import linear_to_srgb, srgb_to_linear
from avatarsdk.datatypes import PARSE_CLASSES, UNPARSED, Avatar, FaceParse
from avatarsdk.hair import HAIR_SEED_SALT
from avatarsdk.hair.cards import ATLAS_SIZE, _atlas_layers, make_cards
from avatarsdk.hair.colour import PALETTE, HairColour, _hex
from avatarsdk.hair.grow import HeadSurface, apply_length_map, grow_strands, head_surface, length_map_cell
from avatarsdk.hair.styles import LENGTH_MAP_AZIMUTHS, LENGTH_MAP_CELLS, SMOOTH_TWINS, STYLES, HairStyle
from avatarsdk.render.camera import Camera, gl_matrices, transform_points
from avatarsdk.render.raster import rasterize
from avatarsdk.render.shading import sh_shading

__all__ = ["BALD_SHARE", "HAT_SHARE", "SHAVED_SHARE", "HairFit", "HairTarget", "fit_hair", "hair_range", "hair_target",
           "raster", "render_hair", "head_triangles"]

BALD_SHARE = 0.04  # parsed hair below this share of the parsed head: bald or shaved
SHAVED_SHARE = 0.10  # below this: only the buzz style is tried, as it is
HAT_SHARE = 0.05  # a parsed hat above this share of the head: no bald or shaved conclusion
SEARCH_SIZE = 144  # longer side of the search renders, pixels
_COARSE_SHARE = 0.12  # share of a style's cards grown for the coarse search over the library
_SEARCH_SHARE = 1.0  # the final scores grow every card (the measured LOD0 itself)
# share of the cards grown for the line search: 0.35 takes 12 % less of the search's CPU than 0.5 on the
# development set (median 1.03 vs 1.17 s) for the same median IoU (0.725; mean 0.608 vs 0.612)
_REFINE_SHARE = 0.35
_NON_HEAD = tuple(PARSE_CLASSES.index(n) for n in ("background", "neck", "neck_l", "cloth"))
_HAIR = PARSE_CLASSES.index("hair")
_HAT = PARSE_CLASSES.index("hat")
_SALT = 0x4A13


@dataclass(frozen=True, eq=False)
class HairTarget:
    """What the photo shows around the head, at the search resolution.

    Attributes:
        camera: the fitted camera cropped to the window (its own size is the window's, in photo pixels).
        size: (h, w) of the masks.
        hair: [h, w] bool parsed hair.
        hat: [h, w] bool parsed hat.
        head: [h, w] bool parsed head (every class but background, neck, necklace and cloth).
        valid: [h, w] bool pixels that count (parsed, not hat, not hand).
        image: [h, w, 3] float32 linear RGB of the photo, box-filtered to the grid.
    """

    camera: Camera
    size: tuple[int, int]
    hair: np.ndarray
    hat: np.ndarray
    head: np.ndarray
    valid: np.ndarray
    image: np.ndarray


@dataclass(frozen=True)
class HairFit:
    """The outcome of :func:`fit_hair`.

    Attributes:
        style: chosen style (None: bald).
        colour: hair colour.
        iou: hair-silhouette IoU of the chosen style at the search resolution.
        hair_share: parsed hair / parsed head pixels.
        evaluations: candidate renders.
        seconds: wall time.
        scores: library style name -> IoU of the coarse search.
        curly: the photo's hair showed curl texture (:func:`shows_curl`): curly styles were searched.
    """

    style: HairStyle | None
    colour: HairColour
    iou: float
    hair_share: float
    evaluations: int
    seconds: float
    scores: dict
    curly: bool = False

    def to_json(self) -> dict:
        """The ``meta["hair"]["photo"]`` record (no seconds: the avatar file stays byte-identical run to run)."""
        return {"style": None if self.style is None else self.style.name, "iou": round(self.iou, 4),
                "hair_share": round(self.hair_share, 4), "evaluations": self.evaluations, "curly": self.curly,
                "coarse_iou": {k: round(v, 4) for k, v in self.scores.items()}}


def head_triangles(avatar: Avatar) -> np.ndarray:
    """[F] bool: triangles of the head above the neck (the jaw line cut by a plane sloping up to the back)."""
    topo = avatar.topology
    v = np.asarray(avatar.vertices, np.float64)
    chin = v[np.asarray(topo.landmarks68)[8]]
    tris = np.asarray(topo.triangles, np.int64)
    c = v[tris].mean(1)
    return c[:, 1] > chin[1] - 0.008 + 0.35 * (chin[2] - c[:, 2])


def hair_target(image: np.ndarray, parsing: FaceParse, camera: Camera, avatar: Avatar, *,
                size: int = SEARCH_SIZE) -> HairTarget:
    """Window around the projected head (room for long hair below and volume to the sides) at ``size`` px."""
    v = np.asarray(avatar.vertices, np.float64)
    stop = avatar.topology.parts.get("head_neck", (0, len(v)))[1]
    uv = camera.project(v[:stop])
    x0, y0 = uv.min(0)
    x1, y1 = uv.max(0)
    hw, hh = x1 - x0, y1 - y0
    left, top = int(np.floor(x0 - 0.55 * hw)), int(np.floor(y0 - 0.3 * hh))
    wp, hp = int(np.ceil(x1 + 0.55 * hw)) - left, int(np.ceil(y1 + 0.75 * hh)) - top
    s = size / max(wp, hp)
    w, h = max(8, round(wp * s)), max(8, round(hp * s))
    cam = camera.crop(left, top, wp, hp)
    H, W = parsing.labels.shape
    xs = np.floor(left + (np.arange(w) + 0.5) * wp / w).astype(int)
    ys = np.floor(top + (np.arange(h) + 0.5) * hp / h).astype(int)
    inside = (ys[:, None] >= 0) & (ys[:, None] < H) & (xs[None] >= 0) & (xs[None] < W)
    lab = np.where(inside, parsing.labels[np.clip(ys, 0, H - 1)][:, np.clip(xs, 0, W - 1)], UNPARSED)
    valid = (lab != UNPARSED) & (lab != _HAT)
    if parsing.hands is not None:
        valid &= ~np.where(inside, parsing.hands[np.clip(ys, 0, H - 1)][:, np.clip(xs, 0, W - 1)], False)
    head = (lab != UNPARSED) & ~np.isin(lab, _NON_HEAD)
    # the photo on the same grid, box-filtered (pad the window where it leaves the photo)
    pad = max(0, -left, -top, left + wp - W, top + hp - H)
    img = np.asarray(image)[..., :3]
    if pad:
        img = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    win = img[top + pad:top + pad + hp, left + pad:left + pad + wp]
    lin = srgb_to_linear(torch.from_numpy(np.asarray(win, np.float32) / 255)).numpy()
    # box-filtered in linear light (averaging sRGB values darkens a mix of dark and bright strands)
    small = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(lin[..., c])).resize((w, h), Image.BOX))
                      for c in range(3)], -1).astype(np.float32)
    return HairTarget(cam, (h, w), lab == _HAIR, lab == _HAT, head, valid, small)


def _project(camera: Camera, size: tuple[int, int], points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N, 2] pixel coordinates on the ``size`` grid (pixel centres at integers), [N] camera z)."""
    x = np.asarray(points, np.float64) @ np.asarray(camera.rotation).T + np.asarray(camera.translation)
    z = np.maximum(x[:, 2], 1e-4)
    sx, sy = size[1] / camera.width, size[0] / camera.height
    u = (camera.fx * x[:, 0] / z + camera.cx + 0.5) * sx - 0.5
    v = (camera.fy * x[:, 1] / z + camera.cy + 0.5) * sy - 0.5
    return np.stack([u, v], 1), z


@dataclass(frozen=True, eq=False)
class _HeadRender:
    depth: np.ndarray  # [h, w] camera z of the head (inf off it)
    mask: np.ndarray  # [h, w] bool head above the neck


_NEAR, _FAR = 0.05, 5.0  # clip planes of the search renders, metres


def raster(camera: Camera, size: tuple[int, int], points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """The project's z-buffer rasteriser at ``size``: ([h, w] int64 triangle index or -1, [h, w] camera z, inf off).

    The benchmark measures with it too, so what the search maximises is what is
    measured (an earlier painter's fill, by triangle centroid depth, misjudged
    cards lying a millimetre or two over the scalp).
    """
    clip = transform_points(torch.from_numpy(np.array(points, np.float32))[None], gl_matrices(camera, size, _NEAR, _FAR))
    frags = rasterize(clip, torch.from_numpy(np.asarray(triangles, np.int64)), size)
    tid = frags.tri_id[0].numpy()
    ndc = frags.depth[0].numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = 2 * _FAR * _NEAR / ((_FAR + _NEAR) - ndc * (_FAR - _NEAR))
    return tid, np.where(tid >= 0, z, np.inf)


def _head_render(avatar: Avatar, camera: Camera, size: tuple[int, int]) -> _HeadRender:
    tid, z = raster(camera, size, avatar.vertices, avatar.topology.triangles)
    return _HeadRender(z, (tid >= 0) & head_triangles(avatar)[np.maximum(tid, 0)])


def render_hair(cards, camera: Camera, size: tuple[int, int], head_depth: np.ndarray | None = None):
    """Visible hair of ``cards`` (Cards) at ``size``: ([h, w] bool, [h, w] triangle index or -1).

    With ``head_depth`` (camera z of the head, :func:`raster`), hair behind the head is not visible.
    """
    idx, depth = raster(camera, size, cards.positions, cards.triangles)
    vis = idx >= 0
    if head_depth is not None:
        vis &= depth < head_depth
    return vis, idx


def _iou(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    a, b = a & valid, b & valid
    u = int((a | b).sum())
    return float((a & b).sum()) / u if u else 1.0


def _remember(memo: dict, key, value, keep: int = 4) -> None:
    """Store ``value`` under ``key``, dropping the oldest entries past ``keep``."""
    while len(memo) >= keep:
        memo.pop(next(iter(memo)))
    memo[key] = value


class _Search:
    """Grows and scores candidate styles on one head against one target."""

    def __init__(self, avatar: Avatar, head: HeadSurface, target: HairTarget, seed: int):
        self.avatar, self.head, self.target, self.seed = avatar, head, target, seed
        self.head_render = _head_render(avatar, target.camera, target.size)
        names = avatar.rig.skeleton.names
        self.hj = names.index("head") if "head" in names else 0
        self.nj = names.index("neck") if "neck" in names else self.hj
        self.hy = float(avatar.rig.skeleton.positions[self.hj][1])
        self.evaluations = 0
        # (style, share) -> strands and -> cards, the last few of each (carve and its cuts share one growth;
        # the chosen style's cards are asked for again)
        self._grown: dict = {}
        self._cards: dict = {}

    def strands(self, style: HairStyle, share: float = _SEARCH_SHARE):
        """Strands of ``style``: at share 1 the very strands :func:`avatarsdk.hair.build_hair` grows for this
        seed (its LOD0), else ``share`` of its cards, wider by 1/sqrt(share) (about the same area)."""
        if style.length_map and style.tied == "loose":  # grown once uncut, then cut (as grow_strands does)
            return apply_length_map(self.head, self.strands(replace(style, length_map=()), share), style.length_map)
        key = (style, share)
        if key not in self._grown:
            if share >= 1.0:
                st = grow_strands(self.head, style, np.random.default_rng([int(self.seed), HAIR_SEED_SALT]))
            else:
                light = replace(style, cards=max(40, int(style.cards * share)),
                                width=min(1.0, style.width / np.sqrt(share)))
                st = grow_strands(self.head, light, np.random.default_rng([int(self.seed), _SALT]))
            _remember(self._grown, key, st)
        return self._grown[key]

    def cards(self, style: HairStyle, *, share: float = _SEARCH_SHARE):
        """Cards (LOD0) of :meth:`strands` (the last few kept: the chosen style's are asked for again).

        At share 1 they are the shipped LOD0; stand-ins (share < 1) skip the push of the card corners out
        of the skin (:func:`make_cards`), a fraction of a millimetre that changes their silhouette little.
        """
        key = (style, share)
        if key not in self._cards:
            _remember(self._cards, key, make_cards(self.head, self.strands(style, share), 0, head_joint=self.hj,
                                                   neck_joint=self.nj, head_joint_y=self.hy, push=share >= 1.0))
        return self._cards[key]

    def carve(self, style: HairStyle, *, share: float = _SEARCH_SHARE, quantile: float = 0.5) -> tuple[float, ...]:
        """The length map that cuts ``style``'s strands where they leave the photo's hair.

        Each strand (grown without a length map) is followed from its root; the
        first point that would show (in front of the head, on a pixel that
        counts) outside the parsed hair is where it is cut.
        The map's cell takes the ``quantile`` of its strands' kept fractions
        (from :data:`MIN_VOTES` judged strands on); :func:`tidy_length_map` fills
        the cells the photo does not judge smoothly around the head and keeps
        :data:`SHORT_SIDES` of hair on every side and back strand.
        """
        st = self.strands(replace(style, length_map=()), share)
        pts = np.asarray(st.points, np.float64)
        n, kp, _ = pts.shape
        h, w = self.target.size
        uv, z = _project(self.target.camera, self.target.size, pts.reshape(-1, 3))
        x, y = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
        inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
        xc, yc = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
        judged = inside & self.target.valid[yc, xc] & (z < self.head_render.depth[yc, xc])
        fail = (judged & ~self.target.hair[yc, xc]).reshape(n, kp)
        judged = judged.reshape(n, kp)
        seg = np.linalg.norm(np.diff(pts, axis=1), axis=-1)
        arc = np.concatenate([np.zeros((n, 1)), np.cumsum(seg, 1)], 1)
        first = np.argmax(fail, 1)
        cut = np.where(first > 0, arc[np.arange(n), np.maximum(first - 1, 0)]
                       + 0.5 * seg[np.arange(n), np.maximum(first - 1, 0)], 0.0)
        keep = np.where(fail.any(1), cut / np.maximum(arc[:, -1], 1e-9), 1.0)
        cells = length_map_cell(self.head, pts[:, 0])
        votes = judged.any(1)
        out = np.full(LENGTH_MAP_CELLS, np.nan)
        for c in np.unique(cells[votes]):
            if int((votes & (cells == c)).sum()) >= MIN_VOTES:
                out[c] = np.quantile(keep[votes & (cells == c)], quantile)
        return tidy_length_map(out, _floor_shares(cells, arc[:, -1], SHORT_SIDES * self.head.scale, style))

    def score(self, style: HairStyle, share: float = _SEARCH_SHARE) -> float:
        """Hair-silhouette IoU of ``style`` against the target."""
        self.evaluations += 1
        vis, _ = render_hair(self.cards(style, share=share), self.target.camera, self.target.size,
                             self.head_render.depth)
        return _iou(vis, self.target.hair, self.target.valid)


SHORT_SIDES = 0.012  # metres (times the head's scale) the length map leaves on a strand: the buzz cut's length
MIN_VOTES = 3  # strands the photo must judge in a cell before the cell takes the photo's cut


SIDE_AZIMUTH = 60.0  # degrees from the front from which a length-map cell is a side (or back) cell


def _floor_shares(cells: np.ndarray, lengths: np.ndarray, floor_m: float, style: HairStyle) -> np.ndarray:
    """[LENGTH_MAP_CELLS] share of its strands' length that keeps ``floor_m`` metres in each side cell (<= 1).

    Hair the photo shows as short on the sides (above the ears, the nape)
    becomes short neat hair, not bare scalp: a cut to almost nothing leaves a
    crest standing on a bald head (a mohawk seen from three-quarter view). The
    front (within :data:`SIDE_AZIMUTH` of it) takes the photo's cut as it is: a
    hairline higher than the style's is bare skin in the photo. Cells without
    roots take the share of the style's own crown length.
    """
    a = LENGTH_MAP_AZIMUTHS
    share = np.full(LENGTH_MAP_CELLS, min(1.0, floor_m / max(style.length, 1e-6)))
    per = np.minimum(1.0, floor_m / np.maximum(lengths, 1e-6))
    for c in np.unique(cells):
        share[c] = float(np.median(per[cells == c]))
    centre = -180.0 + (np.arange(LENGTH_MAP_CELLS) % a + 0.5) * 360.0 / a
    return np.where(np.abs(centre) >= SIDE_AZIMUTH, share, 0.0)


def tidy_length_map(raw: np.ndarray, floor: np.ndarray | float = 0.0) -> tuple[float, ...]:
    """A length map from per-cell cuts (NaN: the photo does not judge the cell), filled smoothly around the head.

    A haircut changes gradually around the head, so the map is one: a cell the
    photo does not judge takes its mirror cell's cut, else the cut interpolated
    around its band (through the back of the head, between the sides the photo
    shows), else the nearest judged band's; every cell is kept at least at
    ``floor`` (:func:`_floor_shares`). No cell judged at all: no cut (1).
    Cells the photo judges keep its cut: averaging them with their neighbours
    (weights 1/4, 1/2, 1/4, or a median of three) cost 0.015-0.027 of IoU on
    three dev-set photos, and the odd values came from the cells it does not
    judge (full length beside a side cut to nothing).
    """
    a = LENGTH_MAP_AZIMUTHS
    m = np.asarray(raw, np.float64).reshape(-1, a).copy()
    m = np.where(np.isnan(m), m[:, ::-1], m)  # the mirror cell (a haircut is about symmetric)
    x = np.arange(a)
    for row in m:
        ok = ~np.isnan(row)
        if ok.any() and not ok.all():
            row[~ok] = np.interp(x[~ok], x[ok], row[ok], period=a)
    judged = np.nonzero(~np.isnan(m).any(1))[0]
    for b in range(len(m)):
        m[b] = m[judged[np.argmin(np.abs(judged - b))]] if len(judged) else 1.0
    m = np.clip(np.maximum(m.reshape(-1), np.broadcast_to(floor, (m.size,))), 0.0, 1.0)
    return tuple(float(v) for v in np.round(m, 2))


def _line_search(search: _Search, best: HairStyle, best_iou: float, budget: int,
                 share: float) -> tuple[HairStyle, float]:
    """Coordinate search along :func:`_refinements` (``budget`` evaluations at ``share`` of the cards): a
    change is kept when the IoU improves, and a parameter is stepped on while it does; sweeps repeat
    while one improves."""
    start = search.evaluations
    improved = True
    while improved and search.evaluations - start < budget:
        improved = False
        for name in [n for n, _ in _refinements(best)]:
            while search.evaluations - start < budget:  # a line search: step on while it helps
                for alt in dict(_refinements(best)).get(name, []):
                    if search.evaluations - start >= budget:
                        break
                    s = search.score(alt, share)
                    if s > best_iou + 1e-3:
                        best, best_iou, improved = alt, s, True
                        break
                else:
                    break
                if name in ("fringe", "parting"):  # toggles: one step
                    break
    return best, best_iou


LENGTH_RANGE = (0.4, 1.5)  # a style's length stays within these factors of its library length
VOLUME_MAX = (2.5, 0.03)  # and its volume at most this factor of its library volume, and the afro's 3 cm


def _bounds(style: HairStyle) -> tuple[float, float, float]:
    """(shortest, longest, most volume) the search may give ``style``: around its library norm.

    Past these a style is no longer itself (a quiff 1.7 times its length with
    four times its volume is a spiky wig; a chin-length cut grown to the
    shoulders hangs in strings): the library has another style for that shape.
    A style outside the library is bounded only by the generator's limits.
    """
    norm = STYLES.get(style.name)
    if norm is None:
        return 0.0, 1.0, 0.08
    return (LENGTH_RANGE[0] * norm.length, min(1.0, LENGTH_RANGE[1] * norm.length),
            max(norm.volume, min(VOLUME_MAX[0] * norm.volume, VOLUME_MAX[1])))


def _refinements(style: HairStyle) -> list[tuple[str, list[HairStyle]]]:
    """Per continuous parameter, the alternative values tried (relative steps, within :func:`_bounds`)."""
    lo, hi, vmax = _bounds(style)
    vol = [v for v in (min(vmax, style.volume * 1.8 + 0.006), style.volume * 0.6) if abs(v - style.volume) > 1e-6]
    lengths = [v for v in (min(hi, style.length * 1.3), max(lo, style.length * 0.75)) if abs(v - style.length) > 1e-6]
    out = [("volume", [replace(style, volume=v) for v in vol]),
           ("length", [replace(style, length=v) for v in lengths])]
    fr = ([replace(style, fringe=min(0.1, style.fringe * 1.5)), replace(style, fringe=0.0)] if style.fringe > 0
          else [replace(style, fringe=0.03)])
    out.append(("fringe", fr))
    if np.isfinite(style.parting) and style.parting != 0:
        out.append(("parting", [replace(style, parting=-style.parting)]))
    out.append(("hairline", [replace(style, recession=style.recession - 0.012),
                             replace(style, recession=style.recession + 0.015)]))
    return out


CURL_SIZE = 256  # longer side of the grid the curl cue reads the photo's hair on (the head about 120 px wide)
CURL_WINDOW = 5.0  # px (sigma) at CURL_SIZE over which the texture's orientation is pooled: about 6 mm of hair
# orientation coherence below which the hair's texture is isotropic (curls): synthetic isotropic textures and rings
# of 3-8 px read 0.12-0.19, the dev set's straight and wavy hair 0.28-0.66 (none of its photos has curly hair)
CURL_COHERENCE = 0.23
CURL_ENERGY = 0.15  # RMS log-luminance gradient per pixel from which the hair has texture at all


def hair_texture(target: HairTarget, window: float = CURL_WINDOW) -> tuple[float, float]:
    """(coherence, energy) of the texture of the photo's hair pixels (well inside the mask).

    The structure tensor of log luminance (Sobel gradients, pooled over a
    Gaussian ``window`` in px): coherence (l1 - l2) / (l1 + l2), weighted by the
    gradient energy, is near 1 where the strands run one way (straight or wavy
    hair combed one way) and low where they turn every way within the window
    (curls, frizz); energy is the RMS gradient (a smooth, blurred or
    flat-coloured mask has little). (0, 0) with fewer than 32 such pixels.
    """
    hair = ndi.binary_erosion(target.hair & target.valid, iterations=3)
    if hair.sum() < 32:
        return 0.0, 0.0
    lum = np.log(np.maximum(target.image @ np.array([0.2126, 0.7152, 0.0722]), 1e-3))
    gx, gy = ndi.sobel(lum, 1) / 8, ndi.sobel(lum, 0) / 8
    jxx, jyy, jxy = (ndi.gaussian_filter(g, window) for g in (gx * gx, gy * gy, gx * gy))
    tr = (jxx + jyy)[hair]
    coherent = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)[hair]
    return float(coherent.sum() / max(tr.sum(), 1e-12)), float(np.sqrt(tr.mean()))


def shows_curl(target: HairTarget) -> bool:
    """The photo's hair has curl texture: isotropic (:data:`CURL_COHERENCE`) and present (:data:`CURL_ENERGY`).

    The silhouette cannot tell curl from volume (a curly style's volume wins
    the IoU on smooth, full hair and reads as a frizzy wig), so curl needs
    texture evidence; without it (smooth hair, a photo too small to resolve
    strands) the straight styles are chosen. The hair's outline was tried as
    well and left out: the parser's outline of short straight hair is as
    ragged as the outline of a curly render.
    """
    coherence, energy = hair_texture(target)
    return energy >= CURL_ENERGY and coherence < CURL_COHERENCE


def curl_library(library: dict[str, HairStyle], curly: bool) -> dict[str, HairStyle]:
    """The styles the search may choose from: curly ones only when the photo shows curl.

    Without curl the curly styles leave and their straight twins
    (:data:`avatarsdk.hair.styles.SMOOTH_TWINS`) stay; with curl the twins
    leave (the library never grows). A library left empty is kept whole.
    """
    twins = set(SMOOTH_TWINS.values())
    keep = {n: s for n, s in library.items() if (n not in twins if curly else s.curl == 0)}
    return keep or dict(library)


_BRIGHT_Y = None


def _atlas_brightness(frac: np.ndarray) -> np.ndarray:
    """Mean strand-atlas brightness (alpha-weighted over the tiles) at root-to-tip positions ``frac``."""
    global _BRIGHT_Y
    if _BRIGHT_Y is None:
        alpha, bright = _atlas_layers(ATLAS_SIZE)
        _BRIGHT_Y = (alpha * bright).sum(1) / np.maximum(alpha.sum(1), 1e-6)
    idx = np.clip((np.asarray(frac) * ATLAS_SIZE).astype(int), 0, ATLAS_SIZE - 1)
    return _BRIGHT_Y[idx]


def _lab(rgb_linear: np.ndarray) -> np.ndarray:
    """[..., 3] linear sRGB -> CIELAB (D65)."""
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = np.asarray(rgb_linear, np.float64) @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def _from_lab(lab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_lab`."""
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    xyz = np.where(f > 6 / 29, f**3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * np.array([0.95047, 1.0, 1.08883])
    m = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])
    return np.clip(xyz @ m.T, 0, 1)


NATURAL_HUES = (15.0, 100.0)  # CIELAB hue angles of natural hair, degrees (reds through yellows)
DYED_CHROMA = 50.0  # outside the natural hues, chroma from here on is dyed hair; below, a colour cast


def hair_range(rgb_linear: np.ndarray) -> np.ndarray:
    """Linear RGB kept in the range real (or dyed) hair takes.

    CIELAB lightness 6..92 and chroma <= 60; a hue outside :data:`NATURAL_HUES`
    with chroma under :data:`DYED_CHROMA` is the light's cast (a purple bar, a
    blue evening), not the hair: it becomes a near-neutral warm (chroma <= 6,
    hue 60 degrees). Stronger off-hue colours are taken as dyed and kept.
    """
    lab = _lab(rgb_linear)
    lab[..., 0] = np.clip(lab[..., 0], 6, 92)
    c = np.hypot(lab[..., 1], lab[..., 2])
    h = np.degrees(np.arctan2(lab[..., 2], lab[..., 1])) % 360
    cast = ((h < NATURAL_HUES[0]) | (h > NATURAL_HUES[1])) & (c < DYED_CHROMA)
    c_new = np.where(cast, np.minimum(c, 6.0), np.minimum(c, 60.0))
    h_new = np.where(cast, 60.0, h)
    lab[..., 1] = c_new * np.cos(np.radians(h_new))
    lab[..., 2] = c_new * np.sin(np.radians(h_new))
    return _from_lab(lab)


def _nearest_family(root_srgb: np.ndarray) -> str:
    return min(PALETTE, key=lambda p: float(np.sum((np.array(_hex(p[1])) - root_srgb) ** 2)))[0]


def hair_colour(target: HairTarget, cards, light: np.ndarray, head_depth: np.ndarray, *,
                exposure: float = 1.0) -> HairColour | None:
    """De-lit root and tip colour from the photo's hair pixels where ``cards`` also render as hair.

    Returns None when fewer than 8 such pixels exist.
    """
    vis, idx = render_hair(cards, target.camera, target.size, head_depth)
    hair = target.hair & target.valid
    # pixels well inside the parsed hair (not on its border, where the background bleeds in)
    inner = hair.copy()
    inner[1:] &= hair[:-1]
    inner[:-1] &= hair[1:]
    inner[:, 1:] &= hair[:, :-1]
    inner[:, :-1] &= hair[:, 1:]
    sel = inner & vis
    if sel.sum() < 8:
        sel = hair & vis
    if sel.sum() < 8:
        return None
    tri = np.asarray(cards.triangles, np.int64)[idx[sel]]
    nrm = np.asarray(cards.normals, np.float64)[tri].mean(1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-6)
    frac = np.clip((np.asarray(cards.uv, np.float64)[tri, 1].mean(1) - 0.5 / ATLAS_SIZE) / (1 - 1 / ATLAS_SIZE), 0, 1)
    shade = sh_shading(torch.from_numpy(nrm.astype(np.float32)), torch.from_numpy(np.asarray(light, np.float32))).numpy()
    # de-lit in luminance only: the fitted light's colour is confounded with the skin's, and divided out
    # per channel it turns grey hair orange under a warm fit; the hair keeps the photo's chromaticity
    lum = np.maximum(shade.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722]), 0.08)
    alb = target.image[sel] / lum[:, None] / max(exposure, 1e-3) / _atlas_brightness(frac)[:, None]
    root_px, tip_px = alb[frac < 0.35], alb[frac > 0.55]
    # means of the linear values, not medians: the photo's mean hair colour includes its bright strands and
    # highlights (often a few times the median of dark hair), and the rendered hair should show that mean
    root = np.mean(root_px if len(root_px) >= 8 else alb, 0)
    tip = np.mean(tip_px, 0) if len(tip_px) >= 8 else root * 1.15
    root, tip = hair_range(root), hair_range(tip)
    srgb_root = linear_to_srgb(torch.from_numpy(root)).numpy()
    srgb_tip = linear_to_srgb(torch.from_numpy(tip)).numpy()
    return HairColour(_nearest_family(srgb_root), tuple(float(x) for x in np.clip(srgb_root, 0, 1)),
                      tuple(float(x) for x in np.clip(srgb_tip, 0, 1)))


def fit_hair(avatar: Avatar, image: np.ndarray, parsing: FaceParse, camera: Camera, light: np.ndarray, *,
             exposure: float = 1.0, seed: int = 0, size: int = SEARCH_SIZE, head: HeadSurface | None = None,
             styles: dict[str, HairStyle] | None = None, max_refine: int = 20, carve: bool = True,
             top: int = 1, refine_share: float = _REFINE_SHARE, max_recut: int = 6) -> HairFit:
    """Choose a hairstyle, its parameters and its colour for ``avatar`` from the photo it was fitted to.

    Args:
        avatar: the neutral avatar (vertices in the fit's model frame).
        image: [H, W, 3] uint8 photo (upright, as fitted).
        parsing: the photo's parse (hair, hat, hands).
        camera: the fitted camera.
        light: [9, 3] fitted SH light.
        exposure: the photo's exposure scale (1: none).
        seed: seed of the strands.
        size: longer side of the search renders.
        head: :func:`head_surface` of the avatar if already built.
        styles: the library to search (default :data:`STYLES`).
        max_refine: evaluations of the coordinate search over continuous parameters (repeated
            sweeps while one improves the IoU).
        top: library styles of the coarse pass scored again at ``refine_share`` (the best is refined).
        carve: fit a length map (:meth:`_Search.carve`) that cuts the strands where the photo's hair ends.
        refine_share: share of the cards grown for the coordinate search (1: the measured LOD0 itself).
        max_recut: evaluations of a second coordinate search once the strands are cut.
    """
    t0 = time.perf_counter()
    head = head or head_surface(avatar)
    target = hair_target(image, parsing, camera, avatar, size=size)
    search = _Search(avatar, head, target, seed)
    head_px = int((target.head & target.valid).sum())
    share = float((target.hair & target.valid).sum()) / max(head_px, 1)
    hat = float(target.hat.sum()) / max(head_px, 1)
    library = dict(styles or STYLES)
    fallback = HairColour("dark_brown", _hex("2e1f17"), _hex("4a3326"))
    shaved = False
    if hat < HAT_SHARE:  # under a hat, little visible hair says nothing about its length
        if share < BALD_SHARE:
            return HairFit(None, fallback, 0.0, share, 0, time.perf_counter() - t0, {})
        if share < SHAVED_SHARE and "buzz" in library:
            library, shaved = {"buzz": library["buzz"]}, True
    curly = False if shaved else shows_curl(hair_target(image, parsing, camera, avatar, size=CURL_SIZE))
    if not shaved:
        library = curl_library(library, curly)
    scores = {name: search.score(st, _COARSE_SHARE) for name, st in library.items()}
    # the coarse pass ranks; the few best are scored again with every card (the proxy's wide cards misjudge
    # the silhouette by up to a tenth of IoU), the best of those is refined
    finalists = sorted(scores, key=scores.get, reverse=True)[:top]
    full = {name: search.score(library[name], refine_share) for name in finalists}
    best_name = max(full, key=full.get)
    best, best_iou = library[best_name], full[best_name]
    if not shaved:
        best, best_iou = _line_search(search, best, best_iou, max_refine, refine_share)
    if refine_share < 1.0:
        best_iou = search.score(best)
    if carve and not shaved and best.tied == "loose":  # cut where the photo's hair ends
        _, longest, most = _bounds(best)
        fuller = replace(best, length=min(longest, best.length * 1.4), volume=min(most, best.volume * 1.5 + 0.004))
        fullest = replace(fuller, fringe=max(best.fringe, 0.04), recession=best.recession - 0.012)
        for cand, q in ((best, 0.3), (best, 0.15), (fuller, 0.15), (fullest, 0.15)):
            alt = replace(cand, length_map=search.carve(cand, quantile=q))
            s = search.score(alt)
            if s > best_iou + 1e-3:
                best, best_iou = alt, s
        if best.length_map and max_recut > 0:  # the cut style's parameters once more (the cut hides excess)
            alt, s = _line_search(search, best, search.score(best, refine_share), max_recut, refine_share)
            if alt is not best:
                s = search.score(alt)
                if s > best_iou + 1e-3:
                    best, best_iou = alt, s
    colour = hair_colour(target, search.cards(best), light, search.head_render.depth,
                         exposure=exposure) or fallback
    return HairFit(best, colour, best_iou, share, search.evaluations, time.perf_counter() - t0, scores, curly)

"""Scalp, collision surface and guide strands of a hairstyle on one ICT head.

The scalp is found on each head from its own landmarks, so a style fits every
identity: the hairline is a height above the brows that depends on the
azimuth around the head's vertical axis (forehead, temples, sideburns, above
the ears, nape), scaled by the head's brow-to-crown height. Strands grow from
roots sampled on the scalp triangles by a few vectorised steps along a comb
direction field, and a collision pass keeps every point outside the skin: the
signed distance to the head is the offset from the nearest skin vertex along
that vertex's normal (a scipy cKDTree query). That is an approximation of the
true distance that is good where vertices are dense compared to the hair's
offsets (ICT skin: about 4 mm spacing, offsets 1.5 mm to 3 cm); the test
checks it against distances to a denser sampling of the triangles.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.spatial import cKDTree

from avatarsdk.hair.styles import LENGTH_MAP_AZIMUTHS, LENGTH_MAP_BANDS, HairStyle
from avatarsdk.datatypes import Avatar

__all__ = ["HeadSurface", "Strands", "head_surface", "scalp_weights", "grow_strands", "push_out", "length_map_cell",
           "apply_length_map", "cut_strands"]

# Hairline of the generic ICT neutral, as (|azimuth| degrees, height in metres
# above the brow line); azimuth 0 is the front (+z), 90 the side (+-x).
_HAIRLINE_DEG = np.array([0.0, 30.0, 48.0, 58.0, 66.0, 105.0, 122.0, 145.0, 180.0])
_HAIRLINE_Y = np.array([0.047, 0.042, 0.030, -0.02, 0.005, 0.006, -0.05, -0.11, -0.125])
FAR = 0.05  # metres; signed distances are exact only below this
_NEUTRAL_BROW_TO_TOP = 0.086  # metres, ICT generic neutral
_RECESSION_PROFILE = np.array([0.35, 1.0, 1.0, 0.6, 0.2, 0.0, 0.0, 0.0, 0.0])
_PARALLEL_QUERY = 4096  # points from which a distance query is split over threads


@dataclass(frozen=True, eq=False)
class HeadSurface:
    """What the hair needs to know about one head.

    Attributes:
        vertices: [V, 3] float32 avatar vertices.
        normals: [V, 3] float32 unit vertex normals of the skin (zeros elsewhere).
        skin_ids: [S] int64 ids of the skin vertices used for collision.
        tree: cKDTree over ``vertices[skin_ids]``.
        skin_tris: [F, 3] int64 skin triangles.
        centre: [3] float64 head centre (x, brow height, z mid-depth).
        brow_y: brow line height, metres.
        top_y: crown height, metres.
        scale: brow-to-crown height relative to the ICT neutral.
        front_z: forehead z, metres.
    """

    vertices: np.ndarray
    normals: np.ndarray
    skin_ids: np.ndarray
    tree: cKDTree
    skin_tris: np.ndarray
    centre: np.ndarray
    brow_y: float
    top_y: float
    scale: float
    front_z: float

    def signed_distance(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ([N] signed distance in metres, [N, 3] normal of the nearest skin vertex).

        Points farther than ``FAR`` from every skin vertex get +``FAR`` and a
        zero normal (the kd query stops there, which keeps long hair cheap); no
        offset the hair uses comes near it.
        """
        # large queries on torch's threads (create: the cores; batch workers: one each)
        workers = torch.get_num_threads() if len(points) >= _PARALLEL_QUERY else 1
        dist, idx = self.tree.query(points, distance_upper_bound=FAR, workers=workers)
        far = ~np.isfinite(dist)
        vid = self.skin_ids[np.where(far, 0, idx)]
        n = np.where(far[:, None], 0.0, self.normals[vid])
        d = np.where(far, FAR, np.einsum("ij,ij->i", points - self.vertices[vid], n))
        return d, n


def _vertex_normals(v: np.ndarray, tris: np.ndarray) -> np.ndarray:
    fn = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])  # area-weighted
    n = np.zeros_like(v, dtype=np.float64)
    for c in range(3):
        for k in range(3):
            n[:, k] += np.bincount(tris[:, c], fn[:, k], minlength=len(v))
    ln = np.linalg.norm(n, axis=1, keepdims=True)
    return (n / np.where(ln > 0, ln, 1)).astype(np.float32)


def head_surface(avatar: Avatar) -> HeadSurface:
    """Collision surface and landmarks frame of ``avatar``'s skin (face and head/neck parts)."""
    topo = avatar.topology
    v = np.asarray(avatar.vertices, np.float64)
    stop = topo.parts["head_neck"][1] if "head_neck" in topo.parts else topo.num_vertices
    tris = np.asarray(topo.triangles, np.int64)
    skin_tris = tris[(tris < stop).all(1) & (np.asarray(topo.tri_material) == topo.materials.index("skin"))]
    normals = _vertex_normals(v, skin_tris)
    skin_ids = np.unique(skin_tris)
    lm = np.asarray(topo.landmarks68)
    brow_y = float(v[lm[17:27], 1].mean())
    top_y = float(v[skin_ids, 1].max())
    band = v[skin_ids][np.abs(v[skin_ids, 1] - brow_y - 0.02) < 0.01]
    cz = float((band[:, 2].min() + band[:, 2].max()) / 2)
    centre = np.array([float(v[lm[27:31], 0].mean()), brow_y, cz])
    # leaf size 64: the same nearest vertices as the default 16, a third less time per query on this skin (11k vertices)
    tree = cKDTree(v[skin_ids], leafsize=64)
    return HeadSurface(v.astype(np.float32), normals, skin_ids, tree, skin_tris, centre, brow_y,
                       top_y, (top_y - brow_y) / _NEUTRAL_BROW_TO_TOP, float(band[:, 2].max()))


def _azimuth_deg(head: HeadSurface, p: np.ndarray) -> np.ndarray:
    return np.degrees(np.abs(np.arctan2(p[:, 0] - head.centre[0], p[:, 2] - head.centre[2])))


def scalp_weights(head: HeadSurface, recession: float = 0.0, *, fade: float = 0.008) -> np.ndarray:
    """[V] float32 in [0, 1]: 1 well above the hairline, 0 below it and off the skin.

    Args:
        head: from :func:`head_surface`.
        recession: metres the temples (and a little of the front) move up.
        fade: metres over which the weight ramps up above the hairline.
    """
    v = head.vertices.astype(np.float64)
    ids = head.skin_ids
    p = v[ids]
    az = _azimuth_deg(head, p)
    line = np.interp(az, _HAIRLINE_DEG, _HAIRLINE_Y + recession * _RECESSION_PROFILE) * head.scale + head.brow_y
    w = np.zeros(len(v), np.float32)
    w[ids] = np.clip((p[:, 1] - line) / fade, 0, 1).astype(np.float32)
    return w


@dataclass(frozen=True, eq=False)
class Strands:
    """Guide strands of one head of hair.

    Attributes:
        points: [S, K+1, 3] float32 root-to-tip polylines, metres.
        root_normals: [S, 3] float32 scalp normal at each root.
        layer: [S] float32 in [0, 1], 0 next to the scalp, 1 the outer layer.
        width: [S] float32 card width at the root, metres.
        rank: [S] int32 random order; LODs keep the lowest ranks.
    """

    points: np.ndarray
    root_normals: np.ndarray
    layer: np.ndarray
    width: np.ndarray
    rank: np.ndarray


def push_out(head: HeadSurface, points: np.ndarray, offset, *, with_distance: bool = False):
    """Move points with signed distance below ``offset`` out along the nearest normal (up to three rounds).

    With ``with_distance``, also return the signed distance and normal
    (:meth:`HeadSurface.signed_distance`) at each point's final position, so a
    caller that needs them next (the growth loop) does not query them again.
    """
    p = np.array(points, np.float64).reshape(-1, 3)
    off = np.broadcast_to(np.asarray(offset, np.float64), (len(p),)) if np.ndim(offset) else np.full(len(p), offset)
    sel = np.arange(len(p))
    dist, nrm = (np.empty(len(p)), np.empty((len(p), 3))) if with_distance else (None, None)
    for _ in range(3):  # later rounds only revisit the points the previous round moved
        d, n = head.signed_distance(p[sel])
        if with_distance:
            dist[sel], nrm[sel] = d, n
        lack = np.maximum(off[sel] - d, 0.0)
        p[sel] += lack[:, None] * n
        sel = sel[lack > 0]
        if len(sel) == 0:
            break
    if with_distance and len(sel):  # moved in the last round: their distances are stale
        dist[sel], nrm[sel] = head.signed_distance(p[sel])
    out = p.reshape(np.shape(points))
    return (out, dist, nrm) if with_distance else out


def _normalize(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(n > 1e-12, n, 1.0)


def _sample_roots(head: HeadSurface, w: np.ndarray, style: HairStyle, rng: np.random.Generator):
    """Area-weighted roots on the scalp; returns positions, normals, and the count."""
    v = head.vertices.astype(np.float64)
    tri = head.skin_tris
    tw = w[tri].mean(1)
    sel = tri[tw > 0.5]
    a = v[sel]
    area = 0.5 * np.linalg.norm(np.cross(a[:, 1] - a[:, 0], a[:, 2] - a[:, 0]), axis=1)
    prob = area * w[sel].mean(1)
    if style.crown_thin > 0:
        c = a.mean(1)
        crown = np.array([head.centre[0], head.top_y, head.centre[2] - 0.03 * head.scale])
        near = np.exp(-np.sum((c - crown) ** 2, 1) / (2 * (0.045 * head.scale) ** 2))
        prob = prob * (1 - style.crown_thin * near)
    n = max(1, int(round(style.cards * style.density)))
    t = rng.choice(len(sel), size=n, p=prob / prob.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    bary = np.stack([1 - s, s * (1 - r2), s * r2], 1)
    pos = np.einsum("nk,nkc->nc", bary, a[t])
    nrm = _normalize(np.einsum("nk,nkc->nc", bary, head.normals[sel[t]].astype(np.float64)))
    return pos, nrm, n


def _front_distance(head: HeadSurface, w: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Distance of each root to the front hairline (hairline vertices within 50 degrees of the front)."""
    ids = head.skin_ids
    p = head.vertices[ids].astype(np.float64)
    edge = (w[ids] > 0.2) & (w[ids] < 0.9) & (_azimuth_deg(head, p) < 50)
    if not edge.any():
        return np.full(len(pos), np.inf)
    d, _ = cKDTree(p[edge]).query(pos)
    return d


def grow_strands(head: HeadSurface, style: HairStyle, rng: np.random.Generator) -> Strands:
    """Grow the guide strands of ``style`` on ``head`` (vectorised over strands).

    Args:
        head: from :func:`head_surface`.
        style: the hairstyle's parameters.
        rng: seeded generator (same seed, same strands).
    """
    w = scalp_weights(head, style.recession)
    pos, nrm, n = _sample_roots(head, w, style, rng)
    k_seg = style.segments
    sc = head.scale
    down = np.array([0.0, -1.0, 0.0])
    rel = pos - head.centre
    rh = _normalize(rel * np.array([1.0, 0.0, 1.0]))
    layer = rng.random(n) ** 0.8
    offset = 0.0015 + style.volume * layer
    length = style.length * sc * rng.uniform(0.85, 1.1, n)
    if style.blunt > 0:
        length -= style.blunt * np.maximum(0.0, head.top_y - pos[:, 1])
        length = np.maximum(length, np.minimum(style.length * sc, 0.035))
    wtop = np.clip((pos[:, 1] - (head.top_y - 0.075 * sc)) / (0.04 * sc), 0, 1)[:, None]
    part = style.parting
    side = np.zeros_like(pos)
    side[:, 0] = np.where(pos[:, 0] - head.centre[0] >= (part if np.isfinite(part) else 0.0), 1.0, -1.0)
    back = np.array([0.0, 0.0, -1.0])
    lift = np.zeros(n)
    if style.sweep == "down":
        d0 = 0.6 * rh + down
        if np.isfinite(part):
            d0 = (1 - wtop) * d0 + wtop * (side + 0.6 * down + 0.1 * rh)
    elif style.sweep == "back":
        d0 = back + 0.35 * down + 0.2 * rh
    elif style.sweep == "up":
        d0 = back + 0.35 * down + 0.2 * rh
    elif style.sweep == "side":
        d0 = (1 - wtop) * (0.5 * rh + down) + wtop * (side + 0.5 * down + 0.2 * back)
    else:  # out
        d0 = nrm + 0.15 * np.array([0.0, 1.0, 0.0])
    dfront = _front_distance(head, w, pos)
    front_band = (dfront < 0.035 * sc) & (_azimuth_deg(head, pos) < 55)
    if style.sweep == "down":
        # Roots over the front half fall to the sides, not over the face (fringe roots are set below).
        fwd = np.clip((60.0 - _azimuth_deg(head, pos)) / 20.0, 0, 1)[:, None]
        d0 = (1 - fwd) * _normalize(d0) + fwd * _normalize(side + 0.6 * down + 0.3 * back)
    d0 = _normalize(d0)
    if style.fringe > 0:
        fr = front_band
        fd = np.array([0.0, -0.55, 1.0]) + (0.6 * side if style.sweep == "side" else 0.0)
        d0[fr] = _normalize(np.broadcast_to(fd, pos.shape)[fr])
        az = _azimuth_deg(head, pos[fr])
        length[fr] = dfront[fr] + style.fringe * sc * (1 - 0.4 * az / 55) * rng.uniform(0.9, 1.05, int(fr.sum()))
        offset[fr] = 0.0015 + 0.5 * style.volume * layer[fr]
    if style.sweep == "up":
        fr = front_band | (dfront < 0.05 * sc)
        d0[fr] = _normalize(np.array([0.0, 0.9, -0.7]) + 0.0 * d0[fr])
        lift[fr] = 0.9 * (1 - dfront[fr] / (0.05 * sc))
        offset[fr] += 0.012 * (1 - dfront[fr] / (0.05 * sc))

    if style.tied != "loose":
        pts = _tied(head, style, pos, nrm, offset, length, rng)
    else:
        pts = np.empty((n, k_seg + 1, 3))
        pts[:, 0] = pos + 0.001 * nrm
        step = length / k_seg
        p = pts[:, 0].copy()
        sd, sn = head.signed_distance(p)
        for k in range(1, k_seg + 1):
            arc = step * (k - 1)
            g = style.gravity * np.clip(arc / (0.10 * sc), 0, 1)[:, None]
            d = _normalize((1 - g) * d0 + g * down)
            near = (sd < 0.03)[:, None]
            inward = np.minimum(0.0, np.einsum("ij,ij->i", d, sn))[:, None]
            d = _normalize(d - np.where(near, inward, 0.0) * sn + (lift * max(0.0, 1 - k / 3))[:, None] * sn)
            p = p + step[:, None] * d
            ramp = min(1.0, k / 2)
            p, sd, sn = push_out(head, p, 0.0015 + (offset - 0.0015) * ramp, with_distance=True)
            pts[:, k] = p
    if style.curl > 0:
        pts = _curl(head, pts, nrm, style, offset, rng)
    strands = Strands(pts.astype(np.float32), nrm.astype(np.float32), layer.astype(np.float32),
                      (style.width * sc * rng.uniform(0.8, 1.2, n)).astype(np.float32),
                      rng.permutation(n).astype(np.int32))
    if style.length_map and style.tied == "loose":
        strands = apply_length_map(head, strands, style.length_map)
    return strands


def apply_length_map(head: HeadSurface, strands: Strands, length_map) -> Strands:
    """``strands`` cut by a length map (:attr:`HairStyle.length_map`), each by the cell of its first point.

    :func:`grow_strands` grows a style with a length map as the same style
    without one, then cut here (the cut draws no random numbers), so the hair
    search can cut strands it has grown once in several ways.
    """
    keep = np.asarray(length_map, np.float64)[length_map_cell(head, strands.points[:, 0])]
    return replace(strands, points=cut_strands(strands.points, keep))


_BAND_EDGES = (0.02, 0.06)  # metres above the brows (times the head's scale) between the length map's bands


def length_map_cell(head: HeadSurface, roots: np.ndarray) -> np.ndarray:
    """[N] int: the length-map cell of each root (signed azimuth sector times height band)."""
    p = np.asarray(roots, np.float64)
    az = np.degrees(np.arctan2(p[:, 0] - head.centre[0], p[:, 2] - head.centre[2]))  # 0 front, +90 avatar's left
    sector = np.clip(((az + 180.0) / 360.0 * LENGTH_MAP_AZIMUTHS).astype(int), 0, LENGTH_MAP_AZIMUTHS - 1)
    band = np.searchsorted(np.asarray(_BAND_EDGES) * head.scale, p[:, 1] - head.brow_y)
    return np.minimum(band, LENGTH_MAP_BANDS - 1) * LENGTH_MAP_AZIMUTHS + sector


def cut_strands(points: np.ndarray, keep: np.ndarray, *, shortest: float = 0.004) -> np.ndarray:
    """Strands cut to ``keep`` ([S] in [0, 1]) of their arc length, resampled to the same point count.

    A strand is never cut shorter than ``shortest`` metres (its card stays a card).
    """
    pts = np.asarray(points, np.float64)
    seg = np.linalg.norm(np.diff(pts, axis=1), axis=-1)
    arc = np.concatenate([np.zeros((len(pts), 1)), np.cumsum(seg, 1)], 1)
    total = arc[:, -1]
    new = np.minimum(total, np.maximum(np.clip(keep, 0, 1) * total, shortest))
    t = new[:, None] * np.linspace(0.0, 1.0, pts.shape[1])[None]
    k = np.clip((arc[:, None, :] <= t[:, :, None]).sum(-1) - 1, 0, pts.shape[1] - 2)  # segment of each sample
    a0 = np.take_along_axis(arc, k, 1)
    f = np.clip((t - a0) / np.maximum(np.take_along_axis(seg, k, 1), 1e-9), 0, 1)[..., None]
    p0 = np.take_along_axis(pts, k[..., None], 1)
    p1 = np.take_along_axis(pts, k[..., None] + 1, 1)
    return (p0 + f * (p1 - p0)).astype(points.dtype)


def _curl(head: HeadSurface, pts: np.ndarray, nrm: np.ndarray, style: HairStyle, offset: np.ndarray,
          rng: np.random.Generator) -> np.ndarray:
    """Wind each strand around its centre line: a helix of radius ``curl`` growing in from the root."""
    n, kp, _ = pts.shape
    t = np.gradient(pts, axis=1)
    t = _normalize(t)
    ref = np.broadcast_to(nrm[:, None], t.shape)
    u = np.cross(t, ref)
    bad = np.linalg.norm(u, axis=-1) < 0.2
    u[bad] = np.cross(t[bad], np.array([1.0, 0.0, 0.0]))
    u = _normalize(u)
    vv = np.cross(t, u)
    seg = np.linalg.norm(np.diff(pts, axis=1), axis=-1)
    s = np.concatenate([np.zeros((n, 1)), np.cumsum(seg, 1)], 1)
    phase = rng.uniform(0, 2 * np.pi, n)[:, None]
    theta = 2 * np.pi * s / style.curl_period + phase
    r = style.curl * np.clip(s / 0.02, 0, 1) * rng.uniform(0.7, 1.3, n)[:, None]
    disp = r[..., None] * (np.cos(theta)[..., None] * u + np.sin(theta)[..., None] * vv)
    out = pts + disp
    flat = push_out(head, out.reshape(-1, 3), np.repeat(np.maximum(offset, 0.0015), kp) * 0 + 0.0015)
    return flat.reshape(out.shape)


def _tied(head: HeadSurface, style: HairStyle, pos: np.ndarray, nrm: np.ndarray, offset: np.ndarray,
          length: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strands gathered to a tie at the back of the head, then a tail (ponytail) or a wound bun."""
    n = len(pos)
    k_seg = style.segments
    k1 = k_seg // 2
    k2 = k_seg - k1
    sc = head.scale
    tie_y = head.top_y - (0.075 if style.tied == "ponytail" else 0.04) * sc
    v = head.vertices[head.skin_ids].astype(np.float64)
    band = v[(np.abs(v[:, 1] - tie_y) < 0.01) & (np.abs(v[:, 0] - head.centre[0]) < 0.015)]
    tie = np.array([head.centre[0], tie_y, band[:, 2].min() - 0.012])
    pts = np.empty((n, k_seg + 1, 3))
    p = pos + 0.001 * nrm
    pts[:, 0] = p
    target = tie + rng.normal(0, 0.004, (n, 3))
    for k in range(1, k1 + 1):
        p = p + (target - p) / (k1 - k + 1)
        p = push_out(head, p, 0.003 + 0.002 * offset / max(style.volume, 1e-6) * 0)
        pts[:, k] = p
    if style.tied == "ponytail":
        step = np.maximum(length * 0.8, 0.08) / k2
        spread = _normalize(rng.normal(0, 1, (n, 3)) * np.array([1.0, 0.2, 0.6]))
        for k in range(1, k2 + 1):
            f = k / k2
            d = _normalize(np.array([0.0, -1.0, -0.35 * (1 - f)]) + 0.0 * spread)
            p = p + step[:, None] * d + spread * (0.006 * (1 - f) + 0.003) * rng.uniform(0.5, 1.0, (n, 1))
            p = push_out(head, p, 0.004)
            pts[:, k1 + k] = p
    else:
        radius = 0.028 * sc
        centre = tie + np.array([0.0, 0.006, -radius * 0.9])
        e1 = _normalize(p - centre)
        rnd = _normalize(rng.normal(0, 1, (n, 3)))
        e2 = _normalize(rnd - np.einsum("ij,ij->i", rnd, e1)[:, None] * e1)
        rad = radius * rng.uniform(0.75, 1.05, n)
        for k in range(1, k2 + 1):
            a = 1.6 * np.pi * k / k2
            p = centre + rad[:, None] * (np.cos(a) * e1 + np.sin(a) * e2)
            pts[:, k1 + k] = p
        pts[:, k1 + 1:] = push_out(head, pts[:, k1 + 1:].reshape(-1, 3), 0.004).reshape(n, k2, 3)
    return pts

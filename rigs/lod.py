"""Levels of detail of the ICT topology, computed once and shared by every avatar.

A level of detail (LOD) is a *subset* of the ICT vertices with new triangles
over them: every LOD vertex is an original vertex, so any avatar's positions,
skin weights and blendshape deltas at that LOD are plain indexing
(``avatar.vertices[lod.vertex_ids]``), and morph targets carry over exactly.

The tables come from a quadric-error *half-edge* collapse of the generic
neutral head (Garland and Heckbert 1997, with the vertex kept at one end of the
edge instead of moved to the quadric optimum). It is written here, not taken
from a library, because none of the PyPI simplifiers fits that contract:

* ``pyfqmr`` and ``fast-simplification`` (Fast-Quadric-Mesh-Simplification)
  move the surviving vertex to the quadric optimum, so a LOD vertex is not an
  ICT vertex and blendshapes could not be indexed; they also see positions
  only, with no UV seams or materials to respect.
* ``pymeshlab`` (VCG, GPL-3) has a textured collapse, but as a ~100 MB Qt
  build it returns a new mesh with no map back to the input vertices.

Rules that keep the result usable in an engine:

* Feature edges are mesh borders, non-manifold edges, UV seams, material
  boundaries and edges between ICT parts. A vertex on no feature edge may
  collapse onto any neighbour; a vertex on exactly two (inside one feature
  curve) only along that curve, so seams, part outlines (lips, eyelids, the
  neck cut) and borders stay closed and only get coarser; any other feature
  vertex (curve ends, seam crossings) is locked. A collapse never joins two
  parts, so no triangle spans a material it did not span before.
* Each triangle corner keeps a texture coordinate of the *original* mesh: the
  removed vertex's corners take the kept vertex's UV from the same UV wedge,
  so a LOD is (kept vertex ids, triangles, per-corner UVs copied from ICT).
* A collapse is refused if it breaks the link condition (non-manifold result),
  flips or degenerates a triangle in 3D (normal turns by more than ~78
  degrees) or in UV (signed area changes sign), or makes a sliver.
* The cost sums the quadric error over the neutral and a few expressions
  (jaw open, blink, smile, pucker), so edges that bend in an expression (lip
  corners, eyelid folds) are kept; feature edges add perpendicular "boundary"
  planes so silhouettes and seams do not drift; a small length term spreads
  collapses evenly over flat regions.
* The 68 landmark vertices and the tiny see-through parts (lacrimal fluid, eye
  blend, eye occlusion) are kept as they are. Every other part has its own
  triangle budget per level (:data:`LOD_BUDGETS`): the skin keeps most, the
  hidden mouth interior least.

The result is deterministic: ties in cost break on vertex ids, and nothing
depends on hashing order. It is cached like the ICT data itself, as an
``.npz`` in :func:`avatarsdk.rigs.ict.cache_dir` keyed by a checksum of the
topology and of the algorithm's settings.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avatarsdk.errors import DataError, ExportError
from avatarsdk.rigs.ict import ICT_EXPRESSIONS, cache_dir
from avatarsdk.rigs.model import load_ict
from avatarsdk.datatypes import Avatar, Rig, Topology

log = logging.getLogger(__name__)

__all__ = ["LOD_BUDGETS", "Lod", "build_lods", "ict_lods", "lod_avatar", "lod_topology", "lods_for"]

LOD_FORMAT = 1
"""Bump when the algorithm or its settings change: cached tables are then rebuilt."""

# Part groups and the fraction of their triangles each level keeps (level 0 is
# the full mesh). Groups missing from a level keep everything.
PART_GROUP: dict[str, str] = {
    "face": "skin", "head_neck": "skin", "mouth_socket": "interior", "eye_sockets": "interior",
    "gums_tongue": "interior", "teeth": "interior", "eyeballs": "eyes", "eyelashes": "lashes",
    "lacrimal_fluid": "fixed", "eye_blend": "fixed", "eye_occlusion": "fixed",
}
LOD_BUDGETS: tuple[dict[str, float], ...] = (
    {},
    {"skin": 0.5, "interior": 0.4, "eyes": 0.5, "lashes": 0.8},
    {"skin": 0.22, "interior": 0.12, "eyes": 0.2, "lashes": 0.5},
)

# Expressions whose quadrics join the neutral's (weight 1 each): the shapes that
# bend the face most.
POSE_SHAPES: tuple[tuple[str, ...], ...] = (
    ("jawOpen",), ("eyeBlink_L", "eyeBlink_R"), ("mouthSmile_L", "mouthSmile_R"), ("mouthPucker", "mouthFunnel"),
)
FEATURE_WEIGHT = 10.0  # boundary-plane quadric weight per squared edge length
LENGTH_WEIGHT = 1e-3  # cost += LENGTH_WEIGHT * |edge|^4: even collapses on flat regions
MAX_NORMAL_TURN_COS = 0.2  # refuse a collapse that turns a triangle normal by more than acos(0.2) ~ 78 deg
MIN_QUALITY = 0.05  # refuse new triangles with 4 sqrt(3) area / sum(edge^2) below this (1 = equilateral)


@dataclass(frozen=True, eq=False)
class Lod:
    """One level of detail of a topology.

    Attributes:
        level: 0 for the full mesh, larger is coarser.
        vertex_ids: [N] int32 ascending ids of the original vertices kept.
        triangles: [F, 3] int32 indices into ``vertex_ids`` (LOD-local),
            counter-clockwise seen from outside, in the order of the original
            triangles they descend from.
        corner_uv: [F, 3, 2] float32 texture coordinates per corner, each a
            value of the original ``Topology.corner_uv`` of that vertex.
        tri_material: [F] int8 index into ``Topology.materials``.
    """

    level: int
    vertex_ids: np.ndarray
    triangles: np.ndarray
    corner_uv: np.ndarray
    tri_material: np.ndarray

    def __post_init__(self) -> None:
        for a in (self.vertex_ids, self.triangles, self.corner_uv, self.tri_material):
            a.setflags(write=False)

    @property
    def num_vertices(self) -> int:
        """N, the vertices this level keeps."""
        return int(len(self.vertex_ids))

    @property
    def num_triangles(self) -> int:
        """F, the triangles of this level."""
        return int(len(self.triangles))


# ---------------------------------------------------------------------------
# Quadrics
# ---------------------------------------------------------------------------

_IU = np.triu_indices(4)


def _plane_quadrics(planes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[..., 10] upper triangles of w * p p^T for planes p = (n, d) with n.x + d = 0."""
    outer = planes[..., :, None] * planes[..., None, :]
    return (weights[..., None] * outer[..., _IU[0], _IU[1]])


def _quadric_cost(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Evaluate [..., 10] quadrics at [..., 3] points: h^T Q h with h = (p, 1)."""
    h = np.concatenate([p, np.ones(p.shape[:-1] + (1,))], -1)
    hh = h[..., :, None] * h[..., None, :]
    factor = np.where(_IU[0] == _IU[1], 1.0, 2.0)
    return (q * hh[..., _IU[0], _IU[1]] * factor).sum(-1)


def _vertex_quadrics(poses: np.ndarray, tris: np.ndarray, feature: np.ndarray, edge_tri: np.ndarray) -> np.ndarray:
    """Area-weighted face-plane quadrics plus boundary planes along feature edges.

    Args:
        poses: [P, V, 3] float64 vertex positions (neutral first).
        tris: [F, 3] triangles.
        feature: [E, 2] feature edges (vertex pairs).
        edge_tri: [E] one triangle beside each feature edge.

    Returns:
        [P, V, 10] float64 quadrics.
    """
    num_p, num_v = poses.shape[:2]
    out = np.zeros((num_p, num_v, 10))
    for k in range(num_p):
        x = poses[k]
        a, b, c = x[tris[:, 0]], x[tris[:, 1]], x[tris[:, 2]]
        cr = np.cross(b - a, c - a)
        area2 = np.linalg.norm(cr, axis=1)
        n = cr / np.maximum(area2, 1e-30)[:, None]
        planes = np.concatenate([n, -(n * a).sum(1, keepdims=True)], 1)
        qf = _plane_quadrics(planes, 0.5 * area2)
        for i in range(3):
            np.add.at(out[k], tris[:, i], qf)
        if len(feature):
            p0, p1 = x[feature[:, 0]], x[feature[:, 1]]
            e = p1 - p0
            tn = n[edge_tri]
            m = np.cross(e, tn)
            m /= np.maximum(np.linalg.norm(m, axis=1), 1e-30)[:, None]
            planes = np.concatenate([m, -(m * p0).sum(1, keepdims=True)], 1)
            qb = _plane_quadrics(planes, FEATURE_WEIGHT * (e**2).sum(1))
            np.add.at(out[k], feature[:, 0], qb)
            np.add.at(out[k], feature[:, 1], qb)
    return out


# ---------------------------------------------------------------------------
# Half-edge collapse
# ---------------------------------------------------------------------------

def _signed_uv_area(uv: np.ndarray) -> float:
    return float((uv[1, 0] - uv[0, 0]) * (uv[2, 1] - uv[0, 1]) - (uv[2, 0] - uv[0, 0]) * (uv[1, 1] - uv[0, 1]))


def _quality(p: np.ndarray) -> tuple[tuple[float, float, float], float]:
    """(unit normal or zeros, 4 sqrt(3) area / sum of squared edges) of a [3, 3] triangle (plain floats: hot loop)."""
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = p.tolist()
    ux, uy, uz, vx, vy, vz = bx - ax, by - ay, bz - az, cx - ax, cy - ay, cz - az
    nx, ny, nz = uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx
    a2 = (nx * nx + ny * ny + nz * nz) ** 0.5
    s = (ux * ux + uy * uy + uz * uz) + (vx * vx + vy * vy + vz * vz) + ((cx - bx) ** 2 + (cy - by) ** 2 + (cz - bz) ** 2)
    q = 2.0 * 3.0**0.5 * a2 / s if s > 0 else 0.0
    return ((nx / a2, ny / a2, nz / a2) if a2 > 0 else (0.0, 0.0, 0.0)), q


class _Collapser:
    """Mutable state of the collapse; used only inside :func:`build_lods`."""

    def __init__(self, topology: Topology, poses: np.ndarray) -> None:
        self.tris = np.array(topology.triangles, np.int64)
        self.uv = np.array(topology.corner_uv, np.float32)
        self.mat = np.asarray(topology.tri_material, np.int64)
        self.alive = np.ones(len(self.tris), bool)
        num_v = int(topology.num_vertices)
        self.pos = poses[0]
        self.poses = poses
        self.part = np.full(num_v, -1, np.int64)
        self.group = np.empty(num_v, object)
        for i, (name, (a, b)) in enumerate(topology.parts.items()):
            self.part[a:b] = i
            self.group[a:b] = PART_GROUP.get(name, "fixed")
        if (self.part < 0).any():
            raise DataError(f"{int((self.part < 0).sum())} vertices belong to no part of the topology")

        # Wedges: one id per distinct (vertex, material, uv bits) corner.
        bits = self.uv.reshape(-1, 2).view(np.uint32).astype(np.int64)
        keys = np.concatenate([self.tris.reshape(-1, 1), np.repeat(self.mat, 3)[:, None], bits], 1)
        _, wedge = np.unique(keys, axis=0, return_inverse=True)
        self.wedge = wedge.reshape(-1, 3).astype(np.int64)

        self.vtris: list[set[int]] = [set() for _ in range(num_v)]
        for t, (a, b, c) in enumerate(self.tris.tolist()):
            self.vtris[a].add(t)
            self.vtris[b].add(t)
            self.vtris[c].add(t)

        # Feature edges: border, non-manifold, material change, UV seam, part change.
        edges: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for t in range(len(self.tris)):
            for i in range(3):
                a, b = int(self.tris[t, i]), int(self.tris[t, (i + 1) % 3])
                key = (a, b) if a < b else (b, a)
                wa, wb = int(self.wedge[t, i]), int(self.wedge[t, (i + 1) % 3])
                edges.setdefault(key, []).append((t, wa, wb) if a < b else (t, wb, wa))
        self.feature: set[tuple[int, int]] = set()
        feature_tri = []
        for key, inc in edges.items():
            if (len(inc) != 2 or self.mat[inc[0][0]] != self.mat[inc[1][0]] or inc[0][1] != inc[1][1]
                    or inc[0][2] != inc[1][2] or self.part[key[0]] != self.part[key[1]]):
                self.feature.add(key)
                feature_tri.append((key, inc[0][0]))
        self.fadj: list[set[int]] = [set() for _ in range(num_v)]
        for a, b in self.feature:
            self.fadj[a].add(b)
            self.fadj[b].add(a)
        degree = np.array([len(s) for s in self.fadj])
        wedges_per_vertex = np.bincount(self.tris.ravel()[np.unique(self.wedge.ravel(), return_index=True)[1]],
                                        minlength=num_v)
        self.locked = ~((degree == 0) | (degree == 2)) | (wedges_per_vertex > 2)
        self.locked[np.asarray(topology.landmarks68, np.int64)] = True
        fixed = self.group == "fixed"
        self.locked |= fixed.astype(bool)
        fe = np.array([k for k, _ in sorted(feature_tri)], np.int64).reshape(-1, 2)
        ft = np.array([t for _, t in sorted(feature_tri)], np.int64)
        self.q = _vertex_quadrics(poses, self.tris, fe, ft)
        self.latest: dict[tuple[int, int], float] = {}
        self.heap: list[tuple[float, int, int]] = []

    # -- candidates ---------------------------------------------------------

    def neighbours(self, x: int) -> set[int]:
        out: set[int] = set()
        for t in self.vtris[x]:
            out.update(self.tris[t].tolist())
        out.discard(x)
        return out

    def candidates(self, x: int) -> list[int]:
        """Vertices ``x`` may collapse onto (before validity checks)."""
        if self.locked[x]:
            return []
        targets = self.fadj[x] if self.fadj[x] else self.neighbours(x)
        return sorted(y for y in targets if self.part[y] == self.part[x])

    def push(self, xs) -> None:
        pairs = [(x, y) for x in sorted(xs) for y in self.candidates(x)]
        if not pairs:
            return
        u = np.array([p[0] for p in pairs])
        v = np.array([p[1] for p in pairs])
        q = self.q[:, u] + self.q[:, v]  # [P, n, 10]
        cost = _quadric_cost(q, self.poses[:, v]).sum(0)
        cost += LENGTH_WEIGHT * (((self.pos[u] - self.pos[v]) ** 2).sum(1)) ** 2
        for (x, y), c in zip(pairs, cost.tolist()):
            self.latest[(x, y)] = c
            heapq.heappush(self.heap, (c, x, y))

    # -- one collapse -------------------------------------------------------

    def try_collapse(self, u: int, v: int) -> int:
        """Collapse u onto v if every rule allows it; return the triangles removed (0: refused)."""
        tu, tv = self.vtris[u], self.vtris[v]
        shared = tu & tv
        if not shared:
            return 0
        # Link condition: the common neighbours are exactly the opposite corners of the shared triangles.
        opposite = set()
        for t in shared:
            opposite.update(self.tris[t].tolist())
        opposite -= {u, v}
        if (self.neighbours(u) & self.neighbours(v)) != opposite:
            return 0
        # UV of v in each wedge of u, from the triangles that hold both.
        v_uv: dict[int, tuple[np.ndarray, int]] = {}
        for t in shared:
            row = self.tris[t].tolist()
            iu, iv = row.index(u), row.index(v)
            v_uv[int(self.wedge[t, iu])] = (self.uv[t, iv], int(self.wedge[t, iv]))
        changes = []
        for t in sorted(tu - shared):
            row = self.tris[t].tolist()
            iu = row.index(u)
            hit = v_uv.get(int(self.wedge[t, iu]))
            if hit is None:
                return 0
            old_p = self.pos[self.tris[t]]
            new_tri = self.tris[t].copy()
            new_tri[iu] = v
            new_p = self.pos[new_tri]
            n_old, q_old = _quality(old_p)
            n_new, q_new = _quality(new_p)
            if sum(a * b for a, b in zip(n_old, n_new)) < MAX_NORMAL_TURN_COS or q_new < min(MIN_QUALITY, q_old):
                return 0
            new_uv = self.uv[t].copy()
            new_uv[iu] = hit[0]
            a_old, a_new = _signed_uv_area(self.uv[t]), _signed_uv_area(new_uv)
            if a_old * a_new <= 0 and a_old != 0:
                return 0
            changes.append((t, iu, new_tri, new_uv, hit[1]))
        # Apply.
        for t in shared:
            self.alive[t] = False
            for x in self.tris[t].tolist():
                self.vtris[x].discard(t)
        for t, iu, new_tri, new_uv, w in changes:
            self.tris[t] = new_tri
            self.uv[t] = new_uv
            self.wedge[t, iu] = w
            self.vtris[v].add(t)
        self.vtris[u] = set()
        for y in self.fadj[u]:
            self.fadj[y].discard(u)
            if y != v:
                self.fadj[y].add(v)
                self.fadj[v].add(y)
        self.fadj[u] = set()
        self.fadj[v].discard(u)
        self.q[:, v] += self.q[:, u]
        self.locked[u] = True
        return len(shared)

    def snapshot(self, level: int) -> Lod:
        alive = np.nonzero(self.alive)[0]
        tris = self.tris[alive]
        ids = np.unique(tris)
        return Lod(level=level, vertex_ids=ids.astype(np.int32),
                   triangles=np.searchsorted(ids, tris).astype(np.int32),
                   corner_uv=np.ascontiguousarray(self.uv[alive], np.float32),
                   tri_material=self.mat[alive].astype(np.int8))


def build_lods(topology: Topology, poses: np.ndarray,
               budgets: tuple[dict[str, float], ...] = LOD_BUDGETS) -> tuple[Lod, ...]:
    """Compute the levels of detail of a topology by half-edge collapse (see the module docstring).

    Args:
        topology: the topology to reduce (its parts name the budgets' groups
            through :data:`PART_GROUP`; unknown parts are kept whole).
        poses: [P, V, 3] float positions in metres: the neutral first, then
            expressions whose shape the LODs should also keep.
        budgets: per level, group name -> fraction of its triangles to keep;
            level 0 should be ``{}`` (the full mesh). Levels are nested: each
            continues from the previous one.

    Returns:
        One :class:`Lod` per entry of ``budgets``.

    Raises:
        DataError: ``poses`` does not match the topology, or a vertex lies in no part.
    """
    poses = np.asarray(poses, np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (topology.num_vertices, 3) or not np.isfinite(poses).all():
        raise DataError(f"poses: expected finite [P, {topology.num_vertices}, 3], got {poses.shape}")
    t0 = time.perf_counter()
    c = _Collapser(topology, poses)
    tri_group = c.group[np.asarray(topology.triangles).min(1)]
    initial = {g: int((tri_group == g).sum()) for g in set(PART_GROUP.values())}
    removed = dict.fromkeys(initial, 0)
    c.push(range(topology.num_vertices))
    out = []
    for level, budget in enumerate(budgets):
        goal = {g: int(round((1.0 - budget.get(g, 1.0)) * n)) for g, n in initial.items()}
        deferred = []
        while c.heap and any(removed[g] < goal[g] for g in goal):
            cost, u, v = heapq.heappop(c.heap)
            if c.latest.get((u, v)) != cost or c.locked[u]:
                continue
            g = c.group[u]
            if removed[g] >= goal[g]:
                deferred.append((cost, u, v))
                continue
            gone = c.try_collapse(u, v)
            if gone:
                removed[g] += gone
                # Costs change only for half-edges at v (its quadric grew) and from
                # its ring (their neighbourhoods changed, refused ones may now pass).
                c.push(c.neighbours(v) | {v})
        for item in deferred:
            heapq.heappush(c.heap, item)
        out.append(c.snapshot(level))
        log.info("LOD%d: %d triangles, %d vertices (%.1f s)", level, out[-1].num_triangles, out[-1].num_vertices,
                 time.perf_counter() - t0)
    return tuple(out)


# ---------------------------------------------------------------------------
# Applying a level to a topology or an avatar
# ---------------------------------------------------------------------------

def lod_topology(topology: Topology, lod: Lod) -> Topology:
    """Return the topology of one level: kept vertices renumbered 0..N-1 in ascending order.

    Parts stay contiguous vertex ranges (the kept ids are ascending), landmarks
    and the unified head UV are carried over.

    Raises:
        ExportError: the level does not belong to this topology (ids out of
            range or a landmark missing).
    """
    ids = np.asarray(lod.vertex_ids, np.int64)
    if len(ids) == 0 or ids[-1] >= topology.num_vertices:
        raise ExportError(f"LOD{lod.level} indexes {int(ids[-1]) + 1 if len(ids) else 0} vertices, the topology "
                          f"has {topology.num_vertices}")
    lm = np.asarray(topology.landmarks68, np.int64)
    pos = np.searchsorted(ids, lm)
    if (pos >= len(ids)).any() or not np.array_equal(ids[np.minimum(pos, len(ids) - 1)], lm):
        raise ExportError(f"LOD{lod.level} drops landmark vertices of this topology")
    parts = {k: (int(np.searchsorted(ids, a)), int(np.searchsorted(ids, b))) for k, (a, b) in topology.parts.items()}
    return Topology(
        num_vertices=len(ids),
        triangles=np.array(lod.triangles, np.int32),
        corner_uv=np.array(lod.corner_uv, np.float32),
        tri_material=np.array(lod.tri_material, np.int8),
        materials=topology.materials,
        parts=parts,
        landmarks68=pos.astype(np.int32),
        head_uv=np.ascontiguousarray(np.asarray(topology.head_uv)[ids]),
    )


def lod_avatar(avatar: Avatar, lod: Lod) -> Avatar:
    """Return ``avatar`` at one level: its vertices, skin and blendshapes indexed by ``lod.vertex_ids``.

    Textures, skeleton and blendshape names are shared; ``meta`` gains
    ``"lod": level``.

    Raises:
        ExportError: the level does not belong to the avatar's topology.
    """
    topo = lod_topology(avatar.topology, lod)
    ids = np.asarray(lod.vertex_ids, np.int64)
    rig = avatar.rig
    new_rig = Rig(skeleton=rig.skeleton,
                  skin_joints=np.ascontiguousarray(np.asarray(rig.skin_joints)[ids]),
                  skin_weights=np.ascontiguousarray(np.asarray(rig.skin_weights)[ids]),
                  blendshape_names=rig.blendshape_names,
                  blendshapes=np.ascontiguousarray(np.asarray(rig.blendshapes)[:, ids]))
    return Avatar(vertices=np.ascontiguousarray(np.asarray(avatar.vertices)[ids]), topology=topo,
                  textures=avatar.textures, rig=new_rig, meta={**avatar.meta, "lod": int(lod.level)})


# ---------------------------------------------------------------------------
# The cached ICT tables
# ---------------------------------------------------------------------------

def _checksum(topology: Topology, budgets) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": LOD_FORMAT, "budgets": budgets, "groups": PART_GROUP, "poses": POSE_SHAPES,
                         "weights": [FEATURE_WEIGHT, LENGTH_WEIGHT, MAX_NORMAL_TURN_COS, MIN_QUALITY],
                         "parts": topology.parts, "materials": topology.materials}, sort_keys=True).encode())
    for a in (topology.triangles, topology.corner_uv, topology.tri_material, topology.landmarks68):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _save(path: Path, lods: tuple[Lod, ...], checksum: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"format": np.int64(LOD_FORMAT), "checksum": np.array(checksum), "levels": np.int64(len(lods))}
    for lod in lods:
        arrays.update({f"vertex_ids{lod.level}": lod.vertex_ids, f"triangles{lod.level}": lod.triangles,
                       f"corner_uv{lod.level}": lod.corner_uv, f"tri_material{lod.level}": lod.tri_material})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path, checksum: str) -> tuple[Lod, ...] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != LOD_FORMAT or str(z["checksum"]) != checksum:
                return None
            return tuple(Lod(i, z[f"vertex_ids{i}"], z[f"triangles{i}"], z[f"corner_uv{i}"], z[f"tri_material{i}"])
                         for i in range(int(z["levels"])))
    except (OSError, ValueError, KeyError) as e:
        log.warning("ignoring unreadable LOD cache %s: %s", path, e)
        return None


_MEMO: dict[str, tuple[Lod, ...]] = {}


def lods_for(topology: Topology, poses_fn, *, use_cache: bool = True) -> tuple[Lod, ...]:
    """Return the levels of ``topology`` from the memo, the disk cache, or by computing them.

    Args:
        topology: the topology.
        poses_fn: called with no arguments only when the tables must be
            computed; returns the [P, V, 3] poses for :func:`build_lods`.
        use_cache: read and write ``lod-<checksum>.npz`` in the cache folder.
    """
    checksum = _checksum(topology, LOD_BUDGETS)
    if checksum in _MEMO:
        return _MEMO[checksum]
    path = cache_dir() / f"lod-{checksum[:16]}.npz"
    lods = _load(path, checksum) if use_cache and path.is_file() else None
    if lods is None:
        log.info("computing LODs of the topology (once; cached in %s)", path)
        lods = build_lods(topology, poses_fn())
        if use_cache:
            try:
                _save(path, lods, checksum)
            except OSError as e:  # a read-only cache folder must not stop the SDK
                log.warning("could not write LOD cache %s: %s", path, e)
    _MEMO[checksum] = lods
    return lods


def ict_poses(model) -> np.ndarray:
    """[P, V, 3] float64: the generic neutral, then the neutral plus each of :data:`POSE_SHAPES`."""
    neutral = np.asarray(model.neutral, np.float64)
    poses = [neutral]
    for names in POSE_SHAPES:
        d = sum(np.asarray(model.expression_basis[ICT_EXPRESSIONS.index(n)], np.float64) for n in names)
        poses.append(neutral + d)
    return np.stack(poses)


def ict_lods(topology: Topology | None = None, *, use_cache: bool = True) -> tuple[Lod, ...]:
    """Return the shared LOD tables of the ICT topology (computed on first use, then cached).

    Args:
        topology: the topology the caller will apply them to (an avatar's);
            default: the ICT model's. The ICT files are read only when the
            tables are not cached yet.
        use_cache: read and write the disk cache.

    Raises:
        DataError: the ICT files are needed and missing.
        ExportError: ``topology`` is not the ICT topology.
    """
    if topology is None:
        topology = load_ict().topology

    def poses():
        model = load_ict()
        t = model.topology
        if not (t.num_vertices == topology.num_vertices and np.array_equal(t.triangles, topology.triangles)):
            raise ExportError(f"LODs are computed for the ICT topology ({t.num_vertices} vertices, "
                              f"{len(t.triangles)} triangles); got {topology.num_vertices} vertices, "
                              f"{len(topology.triangles)} triangles")
        return ict_poses(model)

    return lods_for(topology, poses, use_cache=use_cache)

"""Deformation transfer of blendshapes between two heads on the same topology.

ICT's expression deltas were authored on the generic neutral. Added to another
identity they move each vertex by the generic head's displacement, so an eyelid
closes along the generic eyeball rather than this head's and a mouth moves like
the generic mouth whatever its shape. Deformation transfer (Sumner & Popovic
2004, "Deformation transfer for triangle meshes") instead copies what each
source triangle *does* (its deformation gradient: stretch, shear, rotation)
onto the matching target triangle and integrates those gradients into target
positions by least squares.

Formulation: the gradient-domain (Poisson) form of Botsch, Sumner, Pauly & Gross
2006, "Deformation transfer for detail-preserving surface editing", with the
source gradients of Sumner & Popovic. For a source triangle j with edges
e1 = v1 - v0, e2 = v2 - v0 and n = e1 x e2, the "fourth vertex" frame is

    V_j = [e1, e2, n / sqrt(|n|)]        (3x3, columns)

and its deformation gradient for one shape is S_j = V~_j V_j^-1, with V~_j
built the same way from the deformed source triangle. The target's unknown
vertices enter only through the per-triangle gradient operator of the target
neutral, G_j x = sum_i g_ji x_i^T, where g_ji is the gradient of the hat function
of corner i on triangle j (no fourth vertex on the target, so the system has V
unknowns, not V + F). Every shape and every coordinate share one matrix, the
cotangent Laplacian plus a diagonal anchor, factorised once per target
(:func:`prepare`, :meth:`ShapeTransfer.transfer`; energy in :func:`prepare`).

Gradients know nothing of the rigid parts inside a face, so :func:`ict_transfer`
(what the ICT rig uses) adds two things on top: the jaw's rigid motion is taken
out before and put back after (:func:`rigid_component`), and eyelids are kept as
clear of this head's eyeballs as ICT's are of the generic ones
(:func:`eyelid_clearance`).

Pure library code: numpy and scipy, no I/O, no global state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

from avatarsdk.errors import InputError
from avatarsdk.rigs.ict import NUM_VERTICES, PARTS

DEFAULT_ANCHOR_WEIGHT = 1.0
"""Anchor stiffness in 1/m^2 (see :func:`prepare`): screening length 1 m, i.e. far
larger than a head, so the anchor only pins what the gradients leave free (the
translation of each disconnected part) and never bends the skin."""

ICT_ANCHOR_WEIGHT = 1e3
"""Anchor stiffness :func:`ict_transfer` uses, 1/m^2: screening length ~3 cm. With
the weight of :data:`DEFAULT_ANCHOR_WEIGHT` the small incompatibilities of a
mouth shape's gradients on an atypical head spread over the whole face (jawOpen
then moves the eyelashes by up to 0.8 mm); at 3 cm they stay near the mouth
(0.3 mm, about what ICT's own jawOpen moves the upper face) while the mouth
keeps ~95% of its adaptation."""

# ICT parts handled outside the solve (see :func:`ict_masks`).
ICT_NAIVE_PARTS: tuple[str, ...] = ("teeth", "eyeballs")
ICT_FOLLOW_PARTS: tuple[str, ...] = ("lacrimal_fluid", "eye_blend", "eye_occlusion", "eyelashes")


@dataclass(frozen=True, eq=False)
class ShapeTransfer:
    """A factorised deformation-transfer system for one (source, target) neutral pair.

    Build with :func:`prepare`; apply with :meth:`transfer`. Arrays are
    read-only; the solve runs in the source's frame, the target being mapped
    there by the similarity (``scale``, ``rotation``, ``translation``).

    Attributes:
        num_vertices: V, vertices of the shared topology.
        free: [V] bool, vertices solved for.
        follow: [V] bool, vertices that carry the correction of nearby free vertices.
        source: [V, 3] float64 source neutral in metres.
        scale, rotation, translation: float, [3, 3], [3]: the similarity
            ``aligned = scale * rotation @ target + translation`` that best maps
            the target neutral onto the source (identity when ``align=False``).
        anchor_weight: the anchor stiffness in 1/m^2.
    """

    num_vertices: int
    free: np.ndarray
    follow: np.ndarray
    source: np.ndarray
    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    anchor_weight: float
    _tris: np.ndarray  # [F', 3] triangles touching a free vertex
    _linear: sp.csr_matrix  # [n_free, V] right-hand side linear in the deltas
    _normal: sp.csr_matrix  # [n_free, F'] right-hand side weights of the fourth-vertex change
    _lu: object  # scipy SuperLU of (L_ff + W_f); None without free vertices
    _follow_map: sp.csr_matrix  # [n_follow, n_free] interpolation of the free corrections

    def transfer(self, source_deltas: np.ndarray, *, chunk: int = 32) -> np.ndarray:
        """Transfer blendshape deltas from the source neutral to the target neutral.

        Free vertices get the least-squares solution; vertices neither free nor
        following keep the naive delta (the source delta, mapped by the inverse
        alignment); following vertices get the naive delta plus the weighted
        correction (solved - naive) of their nearest free vertices.

        Args:
            source_deltas: [K, V, 3] float deltas in metres on the source neutral
                (K may be 0).
            chunk: shapes per batch (bounds the temporaries at ~chunk * F * 100 bytes).

        Returns:
            [K, V, 3] float32 deltas in metres on the target neutral.

        Raises:
            InputError: wrong shape or non-finite values.
        """
        d = np.asarray(source_deltas)
        if d.ndim != 3 or d.shape[1:] != (self.num_vertices, 3):
            raise InputError(f"source_deltas: expected shape [K, {self.num_vertices}, 3], got {list(d.shape)}")
        if not np.issubdtype(d.dtype, np.number) or not np.isfinite(d).all():
            raise InputError("source_deltas: values must be finite numbers")
        out = np.empty(d.shape, np.float32)
        free_ids = np.nonzero(self.free)[0]
        follow_ids = np.nonzero(self.follow)[0]
        t0, t1, t2 = self._tris.T
        e1, e2 = self.source[t1] - self.source[t0], self.source[t2] - self.source[t0]  # [F', 3]
        n4 = _scaled_normal(e1, e2)
        if not len(free_ids):
            return ((d.astype(np.float64) @ self.rotation) / self.scale).astype(np.float32)
        for k0 in range(0, len(d), max(1, int(chunk))):
            dk = d[k0 : k0 + chunk].astype(np.float64)  # [k, V, 3] in the aligned (source) frame
            k = len(dk)
            flat = dk.transpose(1, 0, 2).reshape(self.num_vertices, 3 * k)  # columns (shape, xyz)
            # (S_j - I) g = (V~_j - V_j) V_j^-1 g: the edge columns are linear in
            # the deltas (in _linear); the fourth-vertex column is not.
            de1 = (flat[t1] - flat[t0]).reshape(-1, k, 3)
            de2 = (flat[t2] - flat[t0]).reshape(-1, k, 3)
            dn4 = _scaled_normal(e1[:, None] + de1, e2[:, None] + de2) - n4[:, None]  # 0 where still
            rhs = self._linear @ flat + self._normal @ dn4.reshape(-1, 3 * k)  # [n_free, 3k]
            out[k0 : k0 + k] = self._solve(flat, rhs, free_ids, follow_ids)
        return out

    def _solve(self, flat: np.ndarray, rhs: np.ndarray, free_ids: np.ndarray, follow_ids: np.ndarray) -> np.ndarray:
        """[k, V, 3] float64 target deltas from the column-layout deltas ``flat`` [V, 3k] and ``rhs`` [n_free, 3k]."""
        k = flat.shape[1] // 3
        sol = self._lu.solve(np.asfortranarray(rhs))
        res = flat.copy()
        if len(follow_ids):
            res[follow_ids] += self._follow_map @ (sol - flat[free_ids])
        res[free_ids] = sol
        # Back to the target frame: aligned = s R x + t, so a delta maps by R^T / s.
        return (res.reshape(-1, k, 3).transpose(1, 0, 2) @ self.rotation) / self.scale

    def carry(self, corrections: np.ndarray) -> np.ndarray:
        """Give the following vertices the interpolated corrections of their free neighbours.

        For a later correction of free vertices (e.g. :func:`eyelid_clearance`)
        that the glued parts must share.

        Args:
            corrections: [K, V, 3] float deltas to add to a :meth:`transfer`
                result, meaningful on the free vertices.

        Returns:
            [K, V, 3] float64, ``corrections`` with the following vertices'
            rows replaced by the weighted corrections of their free neighbours.

        Raises:
            InputError: wrong shape.
        """
        c = np.array(corrections, np.float64)
        if c.ndim != 3 or c.shape[1:] != (self.num_vertices, 3):
            raise InputError(f"corrections: expected shape [K, {self.num_vertices}, 3], got {list(c.shape)}")
        follow_ids = np.nonzero(self.follow)[0]
        if len(follow_ids) and len(c):
            free = c[:, self.free].transpose(1, 0, 2).reshape(int(self.free.sum()), -1)
            c[:, follow_ids] = (self._follow_map @ free).reshape(len(follow_ids), len(c), 3).transpose(1, 0, 2)
        return c


def _scaled_normal(e1: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """Sumner's fourth-vertex offset n / sqrt(|n|), n = e1 x e2 (length ~ edge length)."""
    n = np.cross(e1, e2)
    return n / np.sqrt(np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-30))


def _check_vertices(name: str, x: object, num: int | None = None) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] != 3 or (num is not None and a.shape[0] != num) or a.shape[0] == 0:
        want = f"[{num}, 3]" if num is not None else "[V, 3]"
        raise InputError(f"{name}: expected shape {want}, got {list(a.shape)}")
    if not np.issubdtype(a.dtype, np.number) or not np.isfinite(a).all():
        raise InputError(f"{name}: values must be finite numbers")
    return a.astype(np.float64)


def _check_mask(name: str, x: object, num: int, default: bool) -> np.ndarray:
    if x is None:
        return np.full(num, default)
    a = np.asarray(x)
    if a.shape != (num,) or a.dtype != bool:
        raise InputError(f"{name}: expected a [{num}] bool mask, got {a.dtype} {list(a.shape)}")
    return a.copy()


def similarity(target: np.ndarray, source: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity mapping ``target`` onto ``source`` (Umeyama 1991).

    Minimises sum_v |s R y_v + t - x_v|^2 over s > 0, R in SO(3), t.

    Args:
        target: [V, 3] float positions y.
        source: [V, 3] float positions x.

    Returns:
        (s, R [3, 3], t [3]) as float64.
    """
    y, x = np.asarray(target, np.float64), np.asarray(source, np.float64)
    my, mx = y.mean(0), x.mean(0)
    yc, xc = y - my, x - mx
    u, sig, vt = np.linalg.svd(xc.T @ yc / len(x))
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ flip @ vt
    var_y = (yc**2).sum() / len(y)
    s = float((sig * np.diag(flip)).sum() / var_y) if var_y > 0 else 1.0
    return s, rot, mx - s * rot @ my


def grow(mask: np.ndarray, triangles: np.ndarray, rings: int = 1) -> np.ndarray:
    """Add ``rings`` rings of triangle neighbours to a vertex mask.

    Args:
        mask: [V] bool.
        triangles: [F, 3] int vertex indices.
        rings: number of one-ring dilations (>= 0).

    Returns:
        [V] bool, a superset of ``mask``.
    """
    out = np.asarray(mask, bool).copy()
    tris = np.asarray(triangles)
    for _ in range(int(rings)):
        hit = out[tris].any(1)
        out[tris[hit].ravel()] = True
    return out


def prepare(
    source_neutral: np.ndarray,
    target_neutral: np.ndarray,
    triangles: np.ndarray,
    *,
    anchor_weight: float = DEFAULT_ANCHOR_WEIGHT,  # 1/m^2; screening length 1/sqrt(w) metres
    free: np.ndarray | None = None,  # [V] bool vertices to solve (default: all)
    follow: np.ndarray | None = None,  # [V] bool vertices carried by nearby free ones
    follow_neighbours: int = 4,  # free vertices each follower interpolates
    align: bool = True,  # transfer in the frame of the best similarity target -> source
    triangle_weight: np.ndarray | None = None,  # [F] >= 0 multiplies each gradient term
) -> ShapeTransfer:
    """Build and factorise the deformation-transfer system for one target head.

    Energy, for one shape and each coordinate, over target deltas d' (solved on
    the free vertices, the rest known):

        E(d') = sum_j A_j || G_j d' - (G_j x)(S_j^T - I) ||_F^2
                + anchor_weight * sum_v M_v || d'_v - d_v ||^2

    with A_j the target triangle's area, G_j its gradient operator (G_j x is the
    projector onto its plane), S_j the source deformation gradient (module
    docstring), M_v the vertex's barycentric area (a third of its triangles'
    areas) and d_v the naive delta, the source delta itself. The normal
    equations are

        (L + W) d' = sum_j A_j (S_j - I) g_ji  [scattered to the corners]  + W d

    with L the cotangent Laplacian (L_uv = sum_j A_j g_ju . g_jv) and W = diag(
    anchor_weight * M). Identical neutrals reproduce the source deltas exactly,
    a zero shape stays zero, and every connected part that has no fixed vertex
    keeps the naive area-weighted mean of its delta whatever the weight (summing
    the equations over the part, L and the gradient term cancel). The default
    weight (screening length 1 m) pins that translation without bending the
    skin; raise it to pull the result toward the naive one below a length of
    1/sqrt(anchor_weight) metres.

    Rotation, translation and uniform scale of the target are factored out
    first (``align``): the target is moved onto the source by the best
    similarity, transferred there, and the deltas are rotated and scaled back,
    so a similar copy of the source gets the correspondingly rotated, scaled
    deltas (plain Sumner-Popovic transfer works in world axes and is not
    invariant to that).

    Args:
        source_neutral: [V, 3] float positions in metres the deltas were authored on.
        target_neutral: [V, 3] float positions in metres, same topology.
        triangles: [F, 3] int vertex indices (counter-clockwise); every vertex
            should belong to at least one triangle.
        anchor_weight: anchor stiffness in 1/m^2, > 0.
        free: [V] bool, the vertices to solve for (default: every vertex of a
            triangle); the others keep the naive delta (fixed boundary values
            for the free ones). Restricting it to
            the vertices the shapes move (plus a ring, :func:`grow`) shrinks the
            system without changing the result much.
        follow: [V] bool, vertices (not free) that keep the naive delta plus
            the inverse-distance-weighted correction of their
            ``follow_neighbours`` nearest free vertices (on the target): small
            parts glued to the skin, e.g. eyelashes.
        follow_neighbours: >= 1.
        align: factor out the best similarity transform (see above).
        triangle_weight: [F] float >= 0 multiplying each triangle's gradient
            term (default 1).

    Returns:
        The factorised :class:`ShapeTransfer`.

    Raises:
        InputError: wrong shapes, non-finite values, indices out of range,
            a non-positive anchor weight, bad masks or triangle weights, or a
            free vertex in no triangle.

    Triangles of zero area on either neutral get no gradient term.
    """
    src = _check_vertices("source_neutral", source_neutral)
    num = len(src)
    tgt = _check_vertices("target_neutral", target_neutral, num)
    tris = np.asarray(triangles)
    if tris.ndim != 2 or tris.shape[1] != 3 or len(tris) == 0 or not np.issubdtype(tris.dtype, np.integer):
        raise InputError(f"triangles: expected a non-empty [F, 3] integer array, got {tris.dtype} {list(tris.shape)}")
    if tris.min() < 0 or tris.max() >= num:
        raise InputError(f"triangles: indices must be in [0, {num}), got [{tris.min()}, {tris.max()}]")
    if not (np.isfinite(anchor_weight) and anchor_weight > 0):
        raise InputError(f"anchor_weight must be finite and > 0, got {anchor_weight}")
    if int(follow_neighbours) < 1:
        raise InputError(f"follow_neighbours must be >= 1, got {follow_neighbours}")
    if triangle_weight is not None:
        tri_w = np.asarray(triangle_weight, np.float64)
        if tri_w.shape != (len(tris),) or not (np.isfinite(tri_w).all() and (tri_w >= 0).all()):
            raise InputError(f"triangle_weight: expected [{len(tris)}] finite values >= 0, got {list(tri_w.shape)}")
    tris = tris.astype(np.int64)
    used = np.zeros(num, bool)
    used[tris.ravel()] = True
    free = used if free is None else _check_mask("free", free, num, True)
    if (free & ~used).any():
        raise InputError(f"free: {int((free & ~used).sum())} free vertices belong to no triangle")
    follow = _check_mask("follow", follow, num, False) & ~free

    if align:
        scale, rot, trans = similarity(tgt, src)
    else:
        scale, rot, trans = 1.0, np.eye(3), np.zeros(3)
    y = scale * tgt @ rot.T + trans  # target in the source frame

    keep = free[tris].any(1)
    tk = tris[keep]
    nk = len(tk)

    # Target: areas and hat-function gradients g_ji = n x (x_{i+2} - x_{i+1}) / |n|^2.
    p = y[tk]  # [F', 3, 3]
    n = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    n2 = (n**2).sum(1)
    area = 0.5 * np.sqrt(n2)
    # Source fourth-vertex frames V_j (columns e1, e2, n / sqrt|n|).
    q = src[tk]
    e1, e2 = q[:, 1] - q[:, 0], q[:, 2] - q[:, 0]
    frame = np.stack([e1, e2, _scaled_normal(e1, e2)], 2)
    # Triangles degenerate on either head carry no gradient information: weight 0
    # (their vertices are held by their other triangles or by the anchor).
    scale_ref = float(np.median(area)) if nk else 1.0
    ok = (area > 1e-12 * scale_ref) & (np.abs(np.linalg.det(frame)) > 1e-18 * scale_ref**1.5)
    frame[~ok] = np.eye(3)
    n2[~ok] = 1.0
    opp = p[:, [2, 0, 1]] - p[:, [1, 2, 0]]  # edge opposite corner i, counter-clockwise
    g = np.cross(n[:, None, :], opp) / n2[:, None, None]  # [F', 3, 3]
    weight = np.where(ok, area, 0.0)  # A_j, times the user's weight
    if triangle_weight is not None:
        weight = weight * tri_w[keep]
    # c_ji = A_j V_j^-1 g_ji: (S_j - I) g_ji = (V~_j - V_j) V_j^-1 g_ji.
    coef = np.linalg.solve(frame[:, None], g[..., None])[..., 0] * weight[:, None, None]  # [F', 3, 3]

    # Cotangent Laplacian L_uv = sum_j A_j g_ju . g_jv and barycentric vertex areas.
    gg = np.einsum("fic,fkc->fik", g, g) * weight[:, None, None]
    rows = np.repeat(tk, 3, axis=1).ravel()
    cols = np.tile(tk, (1, 3)).ravel()
    lap = sp.csr_matrix((gg.ravel(), (rows, cols)), shape=(num, num))
    p_all = y[tris]
    a_all = 0.5 * np.linalg.norm(np.cross(p_all[:, 1] - p_all[:, 0], p_all[:, 2] - p_all[:, 0]), axis=1)
    mass = np.bincount(tris.ravel(), np.repeat(a_all / 3.0, 3), minlength=num)
    w = anchor_weight * np.maximum(mass, 1e-9 * max(float(mass.mean()), 1e-300))  # > 0: (L + W) is SPD

    # Energy per coordinate (see the docstring), over the free deltas d'_f:
    #   E = sum_j w_j A_j |G_j d' - (G_j x)(S_j^T - I)|^2 + sum_v W_v |d'_v - d_v|^2
    # Normal equations: (L_ff + W_f) d'_f = b_f - L_fc d_c + W_f d_f.

    free_ids = np.nonzero(free)[0]
    index = np.full(num, -1)
    index[free_ids] = np.arange(len(free_ids))
    lap_ff = lap[free_ids][:, free_ids]
    system = (lap_ff + sp.diags(w[free_ids])).tocsc()
    # (L + W) is symmetric positive definite: symmetric mode and a minimum-degree
    # ordering of A^T + A give a Cholesky-like fill.
    lu = (splu(system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
          if len(free_ids) else None)
    # Right-hand side: sum_j A_j (S_j - I) g_ji at corner i, with (S_j - I) g_ji =
    # c0 de1 + c1 de2 + c2 dn4 (c = V_j^-1 g_ji): a sparse map of the deltas for
    # the edge terms, of the fourth-vertex changes for the rest. Known deltas
    # enter as -L_fc d_c + W_f d_f.
    row = index[tk].ravel()  # free row of each (triangle, corner), -1 if fixed
    on = row >= 0
    r, tri = row[on], np.repeat(np.arange(nk), 3)[on]
    c0, c1, c2 = (coef[:, :, m].ravel()[on] for m in range(3))
    linear = sp.csr_matrix((np.concatenate([-c0 - c1, c0, c1]),
                            (np.tile(r, 3), np.concatenate([tk[tri, 0], tk[tri, 1], tk[tri, 2]]))),
                           shape=(len(free_ids), num))
    linear = (linear - lap[free_ids] @ sp.diags((~free).astype(np.float64))
              + sp.csr_matrix((w[free_ids], (np.arange(len(free_ids)), free_ids)), shape=(len(free_ids), num)))
    linear = linear.tocsr()
    normal = sp.csr_matrix((c2, (r, tri)), shape=(len(free_ids), nk))

    follow_ids = np.nonzero(follow)[0]
    if len(follow_ids) and len(free_ids):
        kn = min(int(follow_neighbours), len(free_ids))
        dist, nb = cKDTree(y[free_ids]).query(y[follow_ids], k=kn)
        dist, nb = dist.reshape(len(follow_ids), kn), nb.reshape(len(follow_ids), kn)
        wt = 1.0 / np.maximum(dist, 1e-6)
        wt /= wt.sum(1, keepdims=True)
        follow_map = sp.csr_matrix((wt.ravel(), (np.repeat(np.arange(len(follow_ids)), kn), nb.ravel())),
                                   shape=(len(follow_ids), len(free_ids)))
    else:
        follow = np.zeros(num, bool)
        follow_map = sp.csr_matrix((0, len(free_ids)))

    for a in (free, follow, src, rot, trans):
        a.setflags(write=False)
    return ShapeTransfer(
        num_vertices=num, free=free, follow=follow, source=src, scale=scale, rotation=rot, translation=trans,
        anchor_weight=float(anchor_weight), _tris=tk, _linear=linear, _normal=normal, _lu=lu,
        _follow_map=follow_map,
    )


def transfer(
    source_neutral: np.ndarray,
    target_neutral: np.ndarray,
    triangles: np.ndarray,
    source_deltas: np.ndarray,
    **kwargs,
) -> np.ndarray:
    """``prepare(source_neutral, target_neutral, triangles, **kwargs).transfer(source_deltas)``."""
    return prepare(source_neutral, target_neutral, triangles, **kwargs).transfer(source_deltas)


# ---------------------------------------------------------------------------
# ICT-FaceKit
# ---------------------------------------------------------------------------

def ict_masks(source_deltas: np.ndarray, triangles: np.ndarray, *, rings: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Free and follow masks for transferring ICT-topology shapes.

    Solved (free): the skin, mouth and eye sockets, gums and tongue, where any
    shape moves a vertex, plus ``rings`` rings of neighbours (the rest of the
    head stays still, as in ICT). Kept naive: the teeth and the eyeballs, rigid
    shells (the eyeballs do not move in ICT's expressions; their gaze rotations
    are added afterwards about the target's own eye centres). Following: the
    lacrimal, eye-blend and eye-occlusion films and the eyelash cards, small
    separate parts glued to the lid margins that must move with the
    transferred lids.

    Args:
        source_deltas: [K, V, 3] float ICT-topology deltas (V = 26719).
        triangles: [F, 3] int ICT triangles.
        rings: one-ring dilations of the moved vertices.

    Returns:
        (free [V] bool, follow [V] bool).

    Raises:
        InputError: ``source_deltas`` is not [K, 26719, 3].
    """
    d = np.asarray(source_deltas)
    if d.ndim != 3 or d.shape[1:] != (NUM_VERTICES, 3):
        raise InputError(f"source_deltas: expected shape [K, {NUM_VERTICES}, 3], got {list(d.shape)}")
    moved = (d != 0).any(axis=(0, 2))
    solvable = np.ones(NUM_VERTICES, bool)
    follow = np.zeros(NUM_VERTICES, bool)
    for name in ICT_NAIVE_PARTS + ICT_FOLLOW_PARTS:
        solvable[slice(*PARTS[name])] = False
    for name in ICT_FOLLOW_PARTS:
        follow[slice(*PARTS[name])] = True
    tris = np.asarray(triangles)
    free = grow(moved & solvable, tris[solvable[tris].all(1)], rings) & solvable
    return free, follow


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True, eq=False)
class _Eyeball:
    """One eyeball as a star-shaped surface about its centre: p = centre + R(u) u."""

    centre: np.ndarray  # [3] least-squares sphere centre of all its shells
    radii: np.ndarray  # [n] |p - centre| of the outer shell's vertices
    tree: cKDTree  # their unit directions

    @classmethod
    def fit(cls, vertices: np.ndarray, ids: np.ndarray, label: np.ndarray) -> _Eyeball:
        p = vertices[ids]
        # |p|^2 = 2 p.c + (r^2 - |c|^2) is linear in (c, k).
        a = np.concatenate([2.0 * p, np.ones((len(p), 1))], 1)
        centre = np.linalg.lstsq(a, (p**2).sum(1), rcond=None)[0][:3]
        shells = np.unique(label)
        mean_r = [np.linalg.norm(p[label == k] - centre, axis=1).mean() for k in shells]
        q = p[label == shells[int(np.argmax(mean_r))]] - centre  # the cornea-bearing outer shell
        r = np.linalg.norm(q, axis=1)
        return cls(centre, r, cKDTree(q / r[:, None]))

    def clearance(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(signed height above the outer shell along the ray from the centre [n], unit ray [n, 3])."""
        q = points - self.centre
        dist = np.linalg.norm(q, axis=1)
        u = q / np.maximum(dist, 1e-12)[:, None]
        return dist - self.radius(u), u

    def radius(self, u: np.ndarray, k: int = 4) -> np.ndarray:
        """R(u), inverse-angular-distance weighted over the k nearest shell directions."""
        d, nb = self.tree.query(u, k=k)
        w = 1.0 / np.maximum(d, 1e-9)
        return (w * self.radii[nb]).sum(1) / w.sum(1)


EYELID_NEAR = (4e-3, 9e-3)  # metres of clearance: full eyelid rule below, none above
EYELID_FRONT = (65.0, 85.0)  # degrees from the eye's forward axis (+Z): full below, none above
EYELID_SWEEP = np.radians(10.0)  # a vertex turning this far about the eye centre must clear it


def eyelid_clearance(
    source_neutral: np.ndarray,
    target_neutral: np.ndarray,
    triangles: np.ndarray,
    source_deltas: np.ndarray,
    target_deltas: np.ndarray,
) -> np.ndarray:
    """Corrections that keep transferred eyelids as clear of this head's eyeballs as ICT's.

    Gradient transfer knows nothing of the eyeball: a lid that closes along the
    generic eyeball cuts into a larger, flatter or more protruding one. Each
    eyeball is a star-shaped surface p = c + R(u) u about its sphere centre c
    (R interpolated from its outer, cornea-bearing shell), and a skin vertex p
    has the clearance h(p) = |p - c| - R(u(p)). For a vertex posed by the
    transfer at p_t + D, this keeps its direction u' from c and sets its
    height to

        h_t' = h_s' + (h_t - h_s) + m * max(h_s - h_t, 0)

    where h_s, h_s' are the source's clearances at rest and posed, h_t the
    target's at rest, and m = smoothstep(angle(u_s, u_s') / 10 deg): lids that
    sweep over the eye end up at least as clear as ICT authored them (even
    where the identity already sinks the lid into the eyeball), vertices that
    barely turn keep their height change. The correction (new - posed) is
    weighted by smoothstep((9 mm - h_t) / 5 mm) * smoothstep((85 deg - theta) / 20 deg),
    theta the angle of u_t from +Z, on the skin parts (face, head and neck, mouth
    and eye sockets) only.

    Args:
        source_neutral: [V, 3] float ICT-topology neutral of the deltas (metres, facing +Z).
        target_neutral: [V, 3] float neutral of the identity.
        triangles: [F, 3] int ICT triangles.
        source_deltas: [K, V, 3] float deltas on the source.
        target_deltas: [K, V, 3] float transferred deltas (e.g. :meth:`ShapeTransfer.transfer`).

    Returns:
        [K, V, 3] float64 corrections to add to ``target_deltas``; exactly 0
        where neither delta moves a vertex and off the eyelid region.

    Raises:
        InputError: wrong shapes.
    """
    src = _check_vertices("source_neutral", source_neutral, NUM_VERTICES)
    tgt = _check_vertices("target_neutral", target_neutral, NUM_VERTICES)
    d_s, d_t = np.asarray(source_deltas, np.float64), np.asarray(target_deltas, np.float64)
    if d_s.ndim != 3 or d_s.shape[1:] != (NUM_VERTICES, 3) or d_t.shape != d_s.shape:
        raise InputError(f"deltas: expected two [K, {NUM_VERTICES}, 3] arrays, got {list(d_s.shape)} and "
                         f"{list(d_t.shape)}")
    tris = np.asarray(triangles)
    e0, e1 = PARTS["eyeballs"]
    eye_tris = tris[((tris >= e0) & (tris < e1)).all(1)] - e0
    adj = sp.coo_matrix((np.ones(eye_tris.size), (eye_tris.ravel(), np.roll(eye_tris, 1, 1).ravel())),
                        shape=(e1 - e0, e1 - e0))
    label = connected_components(adj, directed=False)[1]
    skin_end = PARTS["eye_sockets"][1]  # face, head/neck, mouth and eye sockets
    out = np.zeros(d_s.shape)
    for sign in (1.0, -1.0):
        side = np.nonzero(src[e0:e1, 0] * sign > 0)[0]
        eye_s = _Eyeball.fit(src, e0 + side, label[side])
        eye_t = _Eyeball.fit(tgt, e0 + side, label[side])
        h_t, u_t = eye_t.clearance(tgt[:skin_end])
        theta = np.degrees(np.arccos(np.clip(u_t[:, 2], -1.0, 1.0)))
        weight = (_smoothstep((EYELID_NEAR[1] - h_t) / (EYELID_NEAR[1] - EYELID_NEAR[0]))
                  * _smoothstep((EYELID_FRONT[1] - theta) / (EYELID_FRONT[1] - EYELID_FRONT[0]))
                  * (tgt[:skin_end, 0] * sign > 0))
        ids = np.nonzero(weight > 0)[0]
        if not len(ids):
            continue
        h_s, u_s = eye_s.clearance(src[ids])
        h_t, w = h_t[ids], weight[ids]
        for k in range(len(d_s)):
            moved = (d_s[k, ids] != 0).any(1) | (d_t[k, ids] != 0).any(1)
            if not moved.any():
                continue
            v = ids[moved]
            h_sp, u_sp = eye_s.clearance(src[v] + d_s[k, v])
            turn = np.arccos(np.clip((u_s[moved] * u_sp).sum(1), -1.0, 1.0))
            gap = h_s[moved] - h_t[moved]
            h_tp = h_sp - gap + _smoothstep(turn / EYELID_SWEEP) * np.maximum(gap, 0.0)
            posed = tgt[v] + d_t[k, v]
            u_tp = eye_t.clearance(posed)[1]
            new = eye_t.centre + (eye_t.radius(u_tp) + h_tp)[:, None] * u_tp
            out[k, v] = w[moved, None] * (new - posed)
    return out


def rigid_fit(points: np.ndarray, moved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares rigid motion moved ~ points @ R.T + t (Kabsch).

    Args:
        points: [N, 3] float, N >= 3 not collinear.
        moved: [N, 3] float.

    Returns:
        (R [3, 3] proper rotation, t [3]) as float64.
    """
    p, q = np.asarray(points, np.float64), np.asarray(moved, np.float64)
    mp, mq = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((q - mq).T @ (p - mp))
    rot = u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt)) or 1.0]) @ vt
    return rot, mq - rot @ mp


def rigid_component(
    source_neutral: np.ndarray,
    target_neutral: np.ndarray,
    source_deltas: np.ndarray,
    rigid_mask: np.ndarray,
    rigid_follow: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The part of each shape that rides on a rigid body (the lower jaw), on both heads.

    Per shape, the rigid motion (R, t) of the ``rigid_mask`` vertices is fitted
    on the source (x -> x + d) and, separately, on the target with the same
    deltas (the rigid parts are kept naive, so the target's jaw turns by the
    same R about its own position). Each vertex follows it by ``rigid_follow``:

        base(v) = f(v) * (R x_v + t - x_v)

    Transferring d - base_source by gradients and adding base_target keeps the
    skin that rides on the jaw consistent with the teeth and the jaw joint;
    gradient transfer alone integrates a large hinge rotation from the fixed
    upper head and lets the lower lip lag the teeth by several millimetres on
    atypical heads.

    Args:
        source_neutral, target_neutral: [V, 3] float neutrals (metres).
        source_deltas: [K, V, 3] float deltas on the source.
        rigid_mask: [V] bool, the rigid body's vertices (at least 3).
        rigid_follow: [V] float in [0, 1], the fraction of the motion each vertex follows.

    Returns:
        (base_source, base_target), each [K, V, 3] float64; zero for shapes
        that do not move the rigid body.

    Raises:
        InputError: inconsistent shapes or fewer than 3 rigid vertices.
    """
    src, tgt = np.asarray(source_neutral, np.float64), np.asarray(target_neutral, np.float64)
    d = np.asarray(source_deltas, np.float64)
    mask = np.asarray(rigid_mask, bool)
    follow = np.asarray(rigid_follow, np.float64)
    num = len(src)
    if mask.shape != (num,) or follow.shape != (num,) or mask.sum() < 3:
        raise InputError(f"rigid_mask/rigid_follow: expected [{num}] arrays and >= 3 rigid vertices, got "
                         f"{list(mask.shape)}, {list(follow.shape)}, {int(mask.sum())}")
    if not (np.isfinite(follow).all() and follow.min() >= 0 and follow.max() <= 1):
        raise InputError("rigid_follow: values must be in [0, 1]")
    base_s, base_t = np.zeros(d.shape), np.zeros(d.shape)
    for k in range(len(d)):
        dk = d[k, mask]
        if not dk.any():
            continue
        for x, base in ((src, base_s), (tgt, base_t)):
            rot, t = rigid_fit(x[mask], x[mask] + dk)
            base[k] = follow[:, None] * (x @ rot.T + t - x)
    return base_s, base_t


def ict_transfer(
    source_neutral: np.ndarray,
    target_neutral: np.ndarray,
    triangles: np.ndarray,
    source_deltas: np.ndarray,
    *,
    jaw_mask: np.ndarray | None = None,
    jaw_follow: np.ndarray | None = None,
    anchor_weight: float = ICT_ANCHOR_WEIGHT,
    rings: int = 2,
    eyelids: bool = True,
) -> np.ndarray:
    """Transfer ICT-topology deltas to another identity (one factorisation for all shapes).

    ``prepare_ict(source_neutral, triangles, source_deltas, ...).transfer(target_neutral)``:
    the one implementation. Making many identities, keep the :class:`IctTransfer`
    (its source half is done once). Equal, to float rounding, to the composition
    of the general steps below (:func:`prepare`, :func:`rigid_component`,
    :func:`eyelid_clearance`, :meth:`ShapeTransfer.carry`), which
    ``tests/test_transfer.py`` keeps as the reference.

    1. With ``jaw_mask``/``jaw_follow``, take out each shape's rigid jaw
       motion (:func:`rigid_component`); it is put back computed on the target.
    2. Deformation transfer (:func:`prepare`, ``align=False``: ICT identities
       share one head frame, and a similarity fit would read identity shape as
       a head pitch of a few degrees and turn every expression by it) of the
       rest, on the parts :func:`ict_masks` solves.
    3. The eyelid clearance rule (:func:`eyelid_clearance`), shared with the
       eyelashes and eye films.

    Args:
        source_neutral: [V, 3] float neutral the deltas were authored on (metres).
        target_neutral: [V, 3] float neutral of the identity.
        triangles: [F, 3] int ICT triangles.
        source_deltas: [K, V, 3] float deltas.
        jaw_mask: [V] bool, the lower teeth (rigid, moved by the jaw shapes).
        jaw_follow: [V] float in [0, 1], how much each vertex follows the jaw.
        anchor_weight: see :func:`prepare` (default :data:`ICT_ANCHOR_WEIGHT`).
        rings: see :func:`ict_masks`.
        eyelids: apply :func:`eyelid_clearance`.

    Returns:
        [K, V, 3] float32 deltas for ``target_neutral``.

    Raises:
        InputError: wrong shapes or non-finite values.
    """
    return prepare_ict(source_neutral, triangles, source_deltas, jaw_mask=jaw_mask, jaw_follow=jaw_follow,
                       anchor_weight=anchor_weight, rings=rings, eyelids=eyelids).transfer(target_neutral)


# ---------------------------------------------------------------------------
# ICT-FaceKit, many identities
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _EyeSide:
    """The source half of :func:`eyelid_clearance` for one eye (see :class:`IctTransfer`)."""

    sign: float  # +1 left eye (+X), -1 right eye
    ids: np.ndarray  # [n] eyeball vertex ids of this eye
    label: np.ndarray  # [n] shell label of each
    eye: _Eyeball  # the source eyeball
    h_rest: np.ndarray  # [S] source clearance of every skin vertex at rest (S = skin vertices)
    u_rest: np.ndarray  # [S, 3] its unit ray
    posed_index: np.ndarray  # [K, S] int32 row of (shape, vertex) in h_posed/u_posed; -1: not precomputed
    h_posed: np.ndarray  # [P] source clearance of the vertices a source shape moves near this eye, posed
    u_posed: np.ndarray  # [P, 3]


@dataclass(frozen=True, eq=False)
class IctTransfer:
    """:func:`ict_transfer` for one set of source deltas and many target identities.

    Everything :func:`ict_transfer` computes from the source alone (the masks,
    the rigid jaw component on the source, the source side of each triangle's
    deformation gradient, the source eyeballs and the source clearances of the
    posed eyelids) is computed once here; :meth:`transfer` then builds and
    factorises the target's system (it depends on the target's geometry: the
    cotangent Laplacian and hat gradients of the target neutral) and solves
    it. :func:`ict_transfer` is this class used once. The result equals the
    composition of the general steps that :func:`ict_transfer` documents to
    float rounding (``tests/test_transfer.py``: within 1e-6 m; observed
    bit-identical).

    Build with :func:`prepare_ict`. Holds ~[V + F'] x 3K float64 (about 70 MB
    for ICT's 54 shapes).
    """

    source_neutral: np.ndarray  # [V, 3] float64
    triangles: np.ndarray  # [F, 3] int64
    num_shapes: int  # K
    anchor_weight: float
    free: np.ndarray  # [V] bool (ict_masks)
    follow: np.ndarray  # [V] bool
    _moved: np.ndarray  # [K, V] bool, source delta != 0
    _flat: np.ndarray  # [V, 3K] float64 source deltas minus the source jaw component, columns (shape, xyz)
    _naive: np.ndarray  # [K, V, 3] float32 the same, shape-major: the result on vertices neither free nor following
    _dn4: np.ndarray  # [F', 3K] float64 change of each kept triangle's fourth vertex
    _deltas: np.ndarray  # [K, V, 3] the source deltas as given (for the eyelid rule's rare uncached entries)
    _jaw: tuple  # (mask [V] bool, follow [V] float64, shapes [j] int, deltas on the jaw [j, m, 3]) or None
    _eyes: tuple  # of _EyeSide, or () without the eyelid rule

    def transfer(self, target_neutral: np.ndarray) -> np.ndarray:
        """Return the [K, V, 3] float32 deltas for ``target_neutral`` (as :func:`ict_transfer`).

        Raises:
            InputError: wrong shape or non-finite values.
        """
        tgt = _check_vertices("target_neutral", target_neutral, len(self.source_neutral))
        src, num, k = self.source_neutral, len(self.source_neutral), self.num_shapes
        st = prepare(src, tgt, self.triangles, anchor_weight=self.anchor_weight, free=self.free,
                     follow=self.follow, align=False)
        free_ids, follow_ids = np.nonzero(st.free)[0], np.nonzero(st.follow)[0]
        # ShapeTransfer.transfer for all shapes at once; align=False: no similarity to undo. Rounded to
        # float32 as it returns it, and only the solved rows: the others keep the (naive) source deltas.
        out = self._naive.copy()  # [K, V, 3] float32
        if len(free_ids):
            rhs = st._linear @ self._flat + st._normal @ self._dn4
            sol = st._lu.solve(np.asfortranarray(rhs))  # [n_free, 3K]
            if len(follow_ids):
                moved = self._flat[follow_ids] + st._follow_map @ (sol - self._flat[free_ids])
                out[:, follow_ids] = moved.reshape(len(follow_ids), k, 3).transpose(1, 0, 2)
            out[:, free_ids] = sol.reshape(len(free_ids), k, 3).transpose(1, 0, 2)
        # ict_transfer then adds, in float64, the target's jaw component and the carried eyelid
        # corrections, and rounds once. Both touch few entries: only those are recomputed.
        exact: dict[int, np.ndarray] = {}  # shape -> [V, 3] float64 for the shapes the jaw moves
        if self._jaw is not None:
            mask, follow, shapes, dj = self._jaw
            for i, s_ in enumerate(shapes):
                rot, t = rigid_fit(tgt[mask], tgt[mask] + dj[i])
                exact[int(s_)] = out[s_].astype(np.float64) + follow[:, None] * (tgt @ rot.T + t - tgt)
        shape_of, v, corr = self._eyelids(tgt, out, exact) if self._eyes else (np.zeros(0, np.int64),) * 2 + (None,)
        if len(shape_of):
            carried = None
            if len(follow_ids):  # ShapeTransfer.carry: followers take their free neighbours' corrections
                index = np.full(num, -1)
                index[free_ids] = np.arange(len(free_ids))
                on = index[v] >= 0
                cols, inv = np.unique(index[v][on], return_inverse=True)
                dense = np.zeros((len(cols), k, 3))
                dense[inv, shape_of[on]] = corr[on]
                carried = (st._follow_map[:, cols] @ dense.reshape(len(cols), 3 * k)).reshape(-1, k, 3)
            for s_ in range(k):
                sel = shape_of == s_
                if s_ in exact:
                    exact[s_][v[sel]] += corr[sel]
                    if carried is not None:
                        exact[s_][follow_ids] += carried[:, s_]
                    continue
                if sel.any():
                    out[s_, v[sel]] = (out[s_, v[sel]].astype(np.float64) + corr[sel]).astype(np.float32)
                if carried is not None and carried[:, s_].any():
                    out[s_, follow_ids] = (out[s_, follow_ids].astype(np.float64) + carried[:, s_]).astype(np.float32)
        for s_, x in exact.items():
            out[s_] = x.astype(np.float32)
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything this transfer holds as named numpy arrays (for a disk cache; see :meth:`from_arrays`)."""
        out = {"source_neutral": self.source_neutral, "triangles": self.triangles,
               "num_shapes": np.array(self.num_shapes), "anchor_weight": np.array(self.anchor_weight),
               "free": self.free, "follow": self.follow, "moved": self._moved, "flat": self._flat,
               "dn4": self._dn4, "deltas": self._deltas, "eyes": np.array(len(self._eyes))}
        if self._jaw is not None:
            out |= dict(zip(("jaw_mask", "jaw_follow", "jaw_shapes", "jaw_deltas"), self._jaw))
        for i, side in enumerate(self._eyes):
            out |= {f"eye{i}_sign": np.array(side.sign), f"eye{i}_ids": side.ids, f"eye{i}_label": side.label,
                    f"eye{i}_centre": side.eye.centre, f"eye{i}_radii": side.eye.radii,
                    f"eye{i}_dirs": side.eye.tree.data, f"eye{i}_h_rest": side.h_rest, f"eye{i}_u_rest": side.u_rest,
                    f"eye{i}_posed_index": side.posed_index, f"eye{i}_h_posed": side.h_posed,
                    f"eye{i}_u_posed": side.u_posed}
        return out

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> IctTransfer:
        """The transfer :meth:`to_arrays` described (equal arrays give equal results, bit for bit)."""
        k, num = int(a["num_shapes"]), len(a["source_neutral"])
        flat = np.ascontiguousarray(a["flat"], np.float64)
        naive = np.ascontiguousarray(flat.reshape(num, k, 3).transpose(1, 0, 2), dtype=np.float32)
        jaw = None
        if "jaw_mask" in a:
            jaw = (a["jaw_mask"].astype(bool), a["jaw_follow"], a["jaw_shapes"].astype(np.int64), a["jaw_deltas"])
        eyes = []
        for i in range(int(a["eyes"])):
            e = {n: a[f"eye{i}_{n}"] for n in ("sign", "ids", "label", "centre", "radii", "dirs", "h_rest", "u_rest",
                                                "posed_index", "h_posed", "u_posed")}
            eye = _Eyeball(e["centre"], e["radii"], cKDTree(e["dirs"]))
            eyes.append(_EyeSide(float(e["sign"]), e["ids"], e["label"], eye, e["h_rest"], e["u_rest"],
                                 e["posed_index"].astype(np.int32), e["h_posed"], e["u_posed"]))
        arrays = [a["source_neutral"].astype(np.float64), a["triangles"].astype(np.int64), a["free"].astype(bool),
                  a["follow"].astype(bool), a["moved"].astype(bool), flat, naive, a["dn4"], a["deltas"]]
        for x in arrays:
            x.setflags(write=False)
        src, tris, free, follow, moved, flat, naive, dn4, deltas = arrays
        return cls(src, tris, k, float(a["anchor_weight"]), free, follow, moved, flat, naive, dn4, deltas, jaw,
                   tuple(eyes))

    def _eyelids(self, tgt: np.ndarray, out: np.ndarray, exact: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:func:`eyelid_clearance` with the source half precomputed (same formula, same values).

        Args:
            tgt: [V, 3] float64 target neutral.
            out: [K, V, 3] float32 transferred deltas; ``exact[k]`` replaces shape k (float64).

        Returns:
            (shape [n] int, vertex [n] int, correction [n, 3] float64): the non-zero
            entries of :func:`eyelid_clearance`'s result.
        """
        skin_end = PARTS["eye_sockets"][1]
        found = []
        for side in self._eyes:
            eye_t = _Eyeball.fit(tgt, side.ids, side.label)
            # Only vertices on this side and in front of the eye can get a weight: query R(u) for those alone.
            q = tgt[:skin_end] - eye_t.centre
            u_t = q / np.maximum(np.linalg.norm(q, axis=1), 1e-12)[:, None]
            theta = np.degrees(np.arccos(np.clip(u_t[:, 2], -1.0, 1.0)))
            cand = np.nonzero((theta < EYELID_FRONT[1]) & (tgt[:skin_end, 0] * side.sign > 0))[0]
            if not len(cand):
                continue
            h_t = eye_t.clearance(tgt[cand])[0]
            weight = (_smoothstep((EYELID_NEAR[1] - h_t) / (EYELID_NEAR[1] - EYELID_NEAR[0]))
                      * _smoothstep((EYELID_FRONT[1] - theta[cand]) / (EYELID_FRONT[1] - EYELID_FRONT[0])))
            keep = weight > 0
            ids, h_t, w = cand[keep], h_t[keep], weight[keep]
            if not len(ids):
                continue
            d_t = out[:, ids].astype(np.float64)  # [K, n, 3] the deltas ict_transfer passes, at ids
            for s_, x in exact.items():
                d_t[s_] = x[ids]
            moved = self._moved[:, ids] | (d_t != 0).any(2)  # [K, n]
            shape_of, col = np.nonzero(moved)
            v = ids[col]
            row = side.posed_index[shape_of, v]
            h_sp, u_sp = side.h_rest[v], side.u_rest[v]  # where the source shape leaves v still
            h_sp = np.where(row >= 0, side.h_posed[row], h_sp)
            u_sp = np.where((row >= 0)[:, None], side.u_posed[row], u_sp)
            late = np.nonzero((row < 0) & self._moved[shape_of, v])[0]  # moved, but not precomputed
            if len(late):
                d_s = self._deltas[shape_of[late], v[late]].astype(np.float64)
                h_sp[late], u_sp[late] = side.eye.clearance(self.source_neutral[v[late]] + d_s)
            turn = np.arccos(np.clip((side.u_rest[v] * u_sp).sum(1), -1.0, 1.0))
            gap = side.h_rest[v] - h_t[col]
            h_tp = h_sp - gap + _smoothstep(turn / EYELID_SWEEP) * np.maximum(gap, 0.0)
            posed = tgt[v] + d_t[shape_of, col]
            qp = posed - eye_t.centre
            u_tp = qp / np.maximum(np.linalg.norm(qp, axis=1), 1e-12)[:, None]
            new = eye_t.centre + (eye_t.radius(u_tp) + h_tp)[:, None] * u_tp
            found.append((shape_of, v, w[col, None] * (new - posed)))
        if not found:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
        return tuple(np.concatenate(x) for x in zip(*found))


def prepare_ict(
    source_neutral: np.ndarray,
    triangles: np.ndarray,
    source_deltas: np.ndarray,
    *,
    jaw_mask: np.ndarray | None = None,
    jaw_follow: np.ndarray | None = None,
    anchor_weight: float = ICT_ANCHOR_WEIGHT,
    rings: int = 2,
    eyelids: bool = True,
) -> IctTransfer:
    """Do the identity-independent half of :func:`ict_transfer` once (arguments as there).

    ``prepare_ict(src, tris, deltas, ...).transfer(target)`` equals
    ``ict_transfer(src, target, tris, deltas, ...)`` to float rounding.

    Raises:
        InputError: wrong shapes or non-finite values.
    """
    src = _check_vertices("source_neutral", source_neutral, NUM_VERTICES)
    d = np.asarray(source_deltas)
    if d.ndim != 3 or d.shape[1:] != (NUM_VERTICES, 3):
        raise InputError(f"source_deltas: expected shape [K, {NUM_VERTICES}, 3], got {list(d.shape)}")
    if not np.issubdtype(d.dtype, np.number) or not np.isfinite(d).all():
        raise InputError("source_deltas: values must be finite numbers")
    if (jaw_mask is None) != (jaw_follow is None):
        raise InputError("jaw_mask and jaw_follow go together")
    if not (np.isfinite(anchor_weight) and anchor_weight > 0):
        raise InputError(f"anchor_weight must be finite and > 0, got {anchor_weight}")
    tris = np.asarray(triangles)
    if tris.ndim != 2 or tris.shape[1] != 3 or not np.issubdtype(tris.dtype, np.integer):
        raise InputError(f"triangles: expected an [F, 3] integer array, got {tris.dtype} {list(tris.shape)}")
    tris = tris.astype(np.int64)
    free, follow = ict_masks(d, tris, rings=rings)
    follow &= ~free
    d64 = d.astype(np.float64)
    jaw = None
    if jaw_mask is not None:
        base_s, _ = rigid_component(src, src, d64, jaw_mask, jaw_follow)
        mask = np.asarray(jaw_mask, bool)
        shapes = np.array([k for k in range(len(d64)) if d64[k, mask].any()], np.int64)
        jaw = (mask, np.asarray(jaw_follow, np.float64), shapes, d64[shapes][:, mask])
        d64 = d64 - base_s
    k, num = len(d64), len(src)
    flat = np.ascontiguousarray(d64.transpose(1, 0, 2).reshape(num, 3 * k))
    kept = tris[free[tris].any(1)]  # the triangles prepare() keeps
    t0, t1, t2 = kept.T
    e1, e2 = src[t1] - src[t0], src[t2] - src[t0]
    n4 = _scaled_normal(e1, e2)
    dn4 = np.empty((len(kept), 3 * k))
    for k0 in range(0, k, 32):  # as ShapeTransfer.transfer's chunks, to bound the temporaries
        f = flat[:, 3 * k0 : 3 * min(k, k0 + 32)]
        kk = f.shape[1] // 3
        de1, de2 = (f[t1] - f[t0]).reshape(-1, kk, 3), (f[t2] - f[t0]).reshape(-1, kk, 3)
        dn4[:, 3 * k0 : 3 * (k0 + kk)] = (_scaled_normal(e1[:, None] + de1, e2[:, None] + de2)
                                          - n4[:, None]).reshape(-1, 3 * kk)
    moved = (d != 0).any(2)
    eyes = _eye_sides(src, tris, d, moved) if eyelids else ()
    naive = np.ascontiguousarray(flat.reshape(num, k, 3).transpose(1, 0, 2), dtype=np.float32)
    deltas = np.array(d)
    for a in (src, tris, free, follow, moved, flat, naive, dn4, deltas):
        a.setflags(write=False)
    return IctTransfer(src, tris, k, float(anchor_weight), free, follow, moved, flat, naive, dn4, deltas, jaw, eyes)


# Source vertices whose posed clearance is precomputed: near enough to an eye that a target's
# eyelid rule will almost surely ask (it weighs vertices within 9 mm and 85 degrees of its own eye).
_PRECOMPUTE_NEAR = 0.02  # metres of source clearance
_PRECOMPUTE_FRONT = 100.0  # degrees from the eye's forward axis


def _eye_sides(src: np.ndarray, tris: np.ndarray, d_s: np.ndarray, moved: np.ndarray) -> tuple[_EyeSide, ...]:
    """The source half of :func:`eyelid_clearance`, per eye."""
    e0, e1 = PARTS["eyeballs"]
    eye_tris = tris[((tris >= e0) & (tris < e1)).all(1)] - e0
    adj = sp.coo_matrix((np.ones(eye_tris.size), (eye_tris.ravel(), np.roll(eye_tris, 1, 1).ravel())),
                        shape=(e1 - e0, e1 - e0))
    label = connected_components(adj, directed=False)[1]
    skin_end = PARTS["eye_sockets"][1]
    out = []
    for sign in (1.0, -1.0):
        side = np.nonzero(src[e0:e1, 0] * sign > 0)[0]
        eye = _Eyeball.fit(src, e0 + side, label[side])
        h_rest, u_rest = eye.clearance(src[:skin_end])
        theta = np.degrees(np.arccos(np.clip(u_rest[:, 2], -1.0, 1.0)))
        near = (h_rest < _PRECOMPUTE_NEAR) & (theta < _PRECOMPUTE_FRONT)
        shape_of, v = np.nonzero(moved[:, :skin_end] & near)
        index = np.full((len(d_s), skin_end), -1, np.int32)
        index[shape_of, v] = np.arange(len(v))
        h_posed, u_posed = eye.clearance(src[v] + d_s[shape_of, v].astype(np.float64))
        arrays = (h_rest, u_rest, index, h_posed, u_posed)
        for a in arrays:
            a.setflags(write=False)
        out.append(_EyeSide(sign, e0 + side, label[side], eye, *arrays))
    return tuple(out)

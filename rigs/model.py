"""The ICT head as a morphable, rigged model: topology, bases, skeleton, ARKit shapes.

Everything here is derived from :mod:`avatarsdk.rigs.ict` data with plain numpy;
nothing reads files except through that module. :func:`blend_shapes` is the one
blend-shape sum of the SDK, for numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from avatarsdk.errors import InputError
from avatarsdk.rigs.ict import ICT_EXPRESSIONS, LANDMARKS68, PARTS, IctData, load_data
from avatarsdk.rigs.transfer import IctTransfer, prepare_ict
from avatarsdk.datatypes import JOINT_NAMES, Rig, Skeleton, Topology

# ---------------------------------------------------------------------------
# Blend shapes
# ---------------------------------------------------------------------------


def blend_shapes(weights, basis):
    """Sum of weighted shapes: ``out[..., v, c] = sum_k weights[..., k] * basis[k, v, c]``.

    The SDK's one blend-shape sum (as FLAME's ``lbs.blend_shapes``): identity
    and expression bases, ARKit shapes, glTF morph targets, batched or not.

    Args:
        weights: [K] or [B, K] float coefficients (numpy array or torch tensor).
        basis: [K, V, C] float shapes (deltas), the same library as ``weights``.

    Returns:
        [V, C] or [B, V, C] (numpy or torch, like the inputs; dtype promoted as
        ``einsum`` does), differentiable w.r.t. torch inputs.
    """
    equation = "k,kvc->vc" if weights.ndim == 1 else "bk,kvc->bvc"
    if isinstance(weights, torch.Tensor):
        return torch.einsum(equation, weights, basis)
    return np.einsum(equation, weights, basis)


# ---------------------------------------------------------------------------
# Blendshape names
# ---------------------------------------------------------------------------

ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight",
    "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight", "eyeWideRight", "jawForward",
    "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft",
    "mouthRight", "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp",
    "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
)
"""Apple ARKit's 52 face blendshape names, in ARKit's documented order."""


def arkit_to_ict(name: str) -> tuple[str, ...]:
    """Return the ICT shapes whose sum is the ARKit shape ``name`` (empty for ``tongueOut``).

    49 names map one to one (``eyeBlinkLeft`` <- ``eyeBlink_L``); ``browInnerUp``
    and ``cheekPuff`` are the sums of ICT's ``_L``/``_R`` pairs; ``tongueOut``
    has no ICT shape and is authored by :func:`tongue_out`.

    Raises:
        InputError: ``name`` is not an ARKit blendshape name.
    """
    if name not in ARKIT_NAMES:
        raise InputError(f"unknown ARKit blendshape {name!r}")
    if name == "tongueOut":
        return ()
    if name in ("browInnerUp", "cheekPuff"):
        return (name + "_L", name + "_R")
    if name in ICT_EXPRESSIONS:  # jawLeft, mouthRight, ...: unsided ICT names
        return (name,)
    for side, suffix in (("Left", "_L"), ("Right", "_R")):
        if name.endswith(side):
            return (name[: -len(side)] + suffix,)
    return (name,)


# ---------------------------------------------------------------------------
# Unified head UV
# ---------------------------------------------------------------------------

# ICT's skin lives on two artist-made charts: the face chart (tile u in [0,1]:
# face, ears, front of the neck, one low-distortion disc) and the back-of-head
# chart (tile u in [1,2]: scalp, back of the neck, and small islands for the
# mouth and eye sockets). A cylindrical projection, the paper's choice, would fold
# the ears and the interior sockets onto the face and collapse the crown, so no
# map could hold those vertices. We keep ICT's charts and pack them into one
# square, giving the face (where likeness lives) most of the texels.
FACE_CHART_SCALE = 0.75
BACK_CHART_SCALE = 0.25
_SKIN_MATERIALS = ("M_Face", "M_BackHead")


def _pack_head_uv(uv_obj: np.ndarray, tile: np.ndarray) -> np.ndarray:
    """Map ICT UVs (OBJ convention, tiled) of the skin charts to the unified square.

    Args:
        uv_obj: [N, 2] float ICT texture coordinates, v up.
        tile: [N] int 0 for the face chart, 1 for the back-of-head chart.

    Returns:
        [N, 2] float32 unified UV in [0, 1]^2, glTF convention (v down): the face
        chart fills the top-left square of side 0.75, the back chart the
        top-right square of side 0.25.
    """
    u = uv_obj[:, 0] - tile
    v = 1.0 - uv_obj[:, 1]
    face = tile == 0
    out = np.empty_like(uv_obj, dtype=np.float32)
    out[face, 0] = u[face] * FACE_CHART_SCALE
    out[face, 1] = v[face] * FACE_CHART_SCALE
    out[~face, 0] = FACE_CHART_SCALE + u[~face] * BACK_CHART_SCALE
    out[~face, 1] = v[~face] * BACK_CHART_SCALE
    return out


# Export materials: name -> ICT materials, and the atlas slot (u offset, u scale)
# each ICT tile gets inside that material's texture.
EXPORT_MATERIALS: dict[str, dict[str, tuple[float, float]]] = {
    "skin": {"M_Face": (0.0, 1.0), "M_BackHead": (0.0, 1.0)},
    "eyes": {"M_ScleraLeft": (0.0, 0.5), "M_ScleraRight": (0.0, 0.5),
             "M_IrisLeft": (0.5, 0.5), "M_IrisRight": (0.5, 0.5)},
    "teeth": {"M_GumsTongue": (0.0, 0.5), "M_Teeth": (0.5, 0.5)},
    "eye_wet": {"M_LacrimalFluid": (0.0, 1.0), "M_EyeBlend": (0.0, 1.0), "M_EyeOcclusion": (0.0, 1.0)},
    "eyelashes": {"M_EyeLashes": (0.0, 1.0)},
}


def _collapsed_in_uv(vertices: np.ndarray, tris: np.ndarray, uv: np.ndarray, ratio: float = 0.05) -> np.ndarray:
    """Vertices whose triangles have almost no UV area for their 3D area.

    Returns:
        [V] bool, True where (UV area / 3D area) of the vertex's triangles is
        below ``ratio`` times the median over the chart.
    """
    p = vertices[tris].astype(np.float64)
    area3 = 0.5 * np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=1)
    q = uv.astype(np.float64)
    area2 = 0.5 * np.abs((q[:, 1, 0] - q[:, 0, 0]) * (q[:, 2, 1] - q[:, 0, 1])
                         - (q[:, 2, 0] - q[:, 0, 0]) * (q[:, 1, 1] - q[:, 0, 1]))
    a3 = np.bincount(tris.ravel(), np.repeat(area3, 3), minlength=len(vertices))
    a2 = np.bincount(tris.ravel(), np.repeat(area2, 3), minlength=len(vertices))
    used = a3 > 0
    density = np.where(used, a2 / np.maximum(a3, 1e-20), np.inf)
    return used & (density < ratio * np.median(density[used]))


def build_topology(data: IctData) -> Topology:
    """Triangulate the ICT polygons and lay out per-material texture coordinates.

    Quads (a, b, c, d) become (a, b, c) and (a, c, d), keeping ICT's
    counter-clockwise outward winding.
    """
    pv, pt, pm = data.poly_vertices, data.poly_uv, data.poly_material
    quad = pv[:, 3] != pv[:, 2]
    tri_v = np.concatenate([pv[:, [0, 1, 2]], pv[quad][:, [0, 2, 3]]]).astype(np.int32)
    tri_t = np.concatenate([pt[:, [0, 1, 2]], pt[quad][:, [0, 2, 3]]])
    tri_m_ict = np.concatenate([pm, pm[quad]])
    names = list(EXPORT_MATERIALS)
    ict_to_export = {}
    for i, (_, slots) in enumerate(EXPORT_MATERIALS.items()):
        for ict_name in slots:
            ict_to_export[ict_name] = i
    tri_material = np.array([ict_to_export[data.materials[m]] for m in tri_m_ict], np.int8)

    uv = data.uv[tri_t]  # [F, 3, 2] OBJ convention, tiled
    corner_uv = np.empty(uv.shape, np.float32)
    for mi, ict_name in enumerate(data.materials):
        sel = tri_m_ict == mi
        if not sel.any():
            continue
        flat = uv[sel].reshape(-1, 2)
        if ict_name in _SKIN_MATERIALS:
            packed = _pack_head_uv(flat, np.full(len(flat), _SKIN_MATERIALS.index(ict_name)))
        else:
            offset, scale = EXPORT_MATERIALS[names[ict_to_export[ict_name]]][ict_name]
            # Fractional part of the tiled u, tile chosen per triangle (the tear
            # line spans two tiles); exact tile edges stay inside the tile.
            tile = np.repeat(np.floor(uv[sel][:, :, 0].mean(1)), 3)
            packed = np.stack([offset + (flat[:, 0] - tile) * scale, 1.0 - flat[:, 1]], 1)
        corner_uv[sel] = np.clip(packed, 0.0, 1.0).reshape(-1, 3, 2)

    # One unified UV per skin vertex; seam vertices take their face-chart UV.
    head_uv = np.full((data.neutral.shape[0], 2), np.nan, np.float32)
    skin_tris = np.nonzero(tri_material == names.index("skin"))[0]
    back = tri_m_ict[skin_tris] == data.materials.index("M_BackHead")
    for subset in (skin_tris[back], skin_tris[~back]):  # face chart written last wins
        head_uv[tri_v[subset].ravel()] = corner_uv[subset].reshape(-1, 2)
    # ICT collapses some hidden vertices (deep inside the nostrils) onto one UV
    # point; a map cannot hold them, so they follow the skin like the teeth do.
    head_uv[_collapsed_in_uv(data.neutral, tri_v[skin_tris], corner_uv[skin_tris])] = np.nan
    # The mouth and eye sockets are interior and get only tiny islands of the back
    # chart (up to 9 mm round-trip error there); they follow the skin like the teeth.
    for part in ("mouth_socket", "eye_sockets"):
        head_uv[slice(*PARTS[part])] = np.nan
    return Topology(
        num_vertices=int(data.neutral.shape[0]),
        triangles=tri_v,
        corner_uv=corner_uv,
        tri_material=tri_material,
        materials=tuple(names),
        parts=dict(PARTS),
        landmarks68=np.asarray(LANDMARKS68, np.int32),
        head_uv=head_uv,
    )


# ---------------------------------------------------------------------------
# Skeleton and skin weights
# ---------------------------------------------------------------------------

def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _sphere_centre(points: np.ndarray) -> np.ndarray:
    """Least-squares sphere centre: |p|^2 = 2 p.c + (r^2 - |c|^2), linear in (c, k)."""
    a = np.concatenate([2.0 * points, np.ones((len(points), 1))], 1)
    b = (points**2).sum(1)
    sol, *_ = np.linalg.lstsq(a.astype(np.float64), b.astype(np.float64), rcond=None)
    return sol[:3]


def _fit_hinge(points: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, float]:
    """Fit a rotation about an axis parallel to +X that moves ``points`` by ``deltas``.

    Returns:
        (pivot [3] with x = 0, angle in radians, positive opens the mouth).
    """
    yz, dyz = points[:, 1:].astype(np.float64), deltas[:, 1:].astype(np.float64)

    def residual(p):
        cy, cz, th = p
        c, s = np.cos(th), np.sin(th)
        ry, rz = yz[:, 0] - cy, yz[:, 1] - cz
        # Rotation about +X by th: y' = c*y - s*z, z' = s*y + c*z.
        moved = np.stack([cy + c * ry - s * rz, cz + s * ry + c * rz], 1)
        return (moved - yz - dyz).ravel()

    start = [yz[:, 0].mean() + 0.04, yz[:, 1].mean() - 0.08, 0.2]
    sol = least_squares(residual, start).x
    return np.array([0.0, sol[0], sol[1]]), float(sol[2])


def _lower_jaw_mask(data: IctData) -> np.ndarray:
    """Teeth vertices that move with ``jawOpen`` (the lower teeth)."""
    a, b = PARTS["teeth"]
    jaw = data.expression[ICT_EXPRESSIONS.index("jawOpen")]
    mask = np.zeros(data.neutral.shape[0], bool)
    mask[a:b] = np.linalg.norm(jaw[a:b], axis=1) > 2e-3
    return mask


@dataclass(frozen=True)
class _JawHinge:
    pivot: np.ndarray  # [3] metres, on the generic neutral
    angle: float  # radians that jawOpen=1 opens the jaw by


def skeleton_from_geometry(vertices: np.ndarray, hinge_pivot: np.ndarray) -> Skeleton:
    """Place the six joints on a head's neutral geometry.

    Args:
        vertices: [V, 3] float32 neutral positions in metres (ICT topology).
        hinge_pivot: [3] jaw hinge on these vertices (see :func:`FaceModel.jaw_pivot`).

    Returns:
        Skeleton with root at the neck base floor, neck at the base of the neck,
        head at the skull base, jaw at the hinge, eyes at the eyeball centres.
    """
    a, b = PARTS["head_neck"]
    neck_part = vertices[a:b]
    y_min = float(vertices[: PARTS["eye_sockets"][1], 1].min())
    base = neck_part[neck_part[:, 1] < y_min + 0.01]
    neck_xz = base[:, [0, 2]].mean(0)
    chin_y = float(vertices[LANDMARKS68[8], 1])
    head_y = 0.5 * (chin_y + float(hinge_pivot[1]))
    ring = neck_part[np.abs(neck_part[:, 1] - head_y) < 0.01]
    head_z = float(ring[:, 2].mean()) if len(ring) else float(hinge_pivot[2])
    e0, e1 = PARTS["eyeballs"]
    eyes = vertices[e0:e1]
    left = _sphere_centre(eyes[eyes[:, 0] > 0])
    right = _sphere_centre(eyes[eyes[:, 0] < 0])
    positions = np.array([
        [0.0, y_min, neck_xz[1]],
        [0.0, y_min + 0.02, neck_xz[1]],
        [0.0, head_y, head_z],
        hinge_pivot,
        left,
        right,
    ], np.float32)
    parents = np.array([-1, 0, 1, 2, 2, 2], np.int32)
    return Skeleton(names=JOINT_NAMES, parents=parents, positions=positions)


def skin_weights(vertices: np.ndarray, skeleton: Skeleton, jaw_follow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skin weights: eyes rigid, jaw from ``jaw_follow``, head/neck falloff.

    Args:
        vertices: [V, 3] float32 neutral positions.
        skeleton: from :func:`skeleton_from_geometry`.
        jaw_follow: [V] float32 in [0, 1], how much each vertex follows the jaw.

    Returns:
        ([V, 4] uint8 joint indices, [V, 4] float32 weights summing to 1); unused
        slots have index 0 and weight 0.
    """
    j = {n: i for i, n in enumerate(skeleton.names)}
    p = skeleton.positions
    num = vertices.shape[0]
    # Neck -> head falloff between the base of the neck and the skull base.
    t = (vertices[:, 1] - p[j["neck"], 1]) / max(float(p[j["head"], 1] - p[j["neck"], 1]), 1e-3)
    w_head = _smoothstep(t)
    w_jaw = np.clip(jaw_follow, 0.0, 1.0) * w_head
    w_head = w_head - w_jaw
    w_neck = 1.0 - w_head - w_jaw
    joints = np.zeros((num, 4), np.uint8)
    weights = np.zeros((num, 4), np.float32)
    joints[:, 0], joints[:, 1], joints[:, 2] = j["head"], j["neck"], j["jaw"]
    weights[:, 0], weights[:, 1], weights[:, 2] = w_head, w_neck, w_jaw
    e0, e1 = PARTS["eyeballs"]
    eye = np.zeros(num, bool)
    eye[e0:e1] = True
    for name, side in (("eye_L", vertices[:, 0] > 0), ("eye_R", vertices[:, 0] < 0)):
        sel = eye & side
        joints[sel] = [j[name], 0, 0, 0]
        weights[sel] = [1.0, 0.0, 0.0, 0.0]
    # Sort each row by weight (largest first), zero indices of empty slots, renormalise.
    order = np.argsort(-weights, axis=1, kind="stable")
    weights = np.take_along_axis(weights, order, 1)
    joints = np.take_along_axis(joints, order, 1)
    weights[weights < 1e-4] = 0.0
    joints[weights == 0.0] = 0
    weights /= weights.sum(1, keepdims=True)
    return joints, weights.astype(np.float32)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------



@dataclass(frozen=True, eq=False)
class FaceModel:
    """ICT-FaceKit as a linear morphable, rigged head model.

    Attributes:
        data: the parsed ICT files (metres).
        topology: triangles, UVs, parts, materials shared by every avatar.
        tongue_out: [V, 3] float32 authored ``tongueOut`` deltas.
        jaw_pivot: [3] float32 jaw hinge on the generic neutral (fitted to jawOpen).
        jaw_angle: radians the jaw rotates for jawOpen = 1.
        jaw_follow: [V] float32 in [0, 1], fraction of the jaw rotation each
            vertex follows in ICT's jawOpen (drives the jaw skin weights).
    """

    data: IctData
    topology: Topology
    tongue_out: np.ndarray
    jaw_pivot: np.ndarray
    jaw_angle: float
    jaw_follow: np.ndarray

    @property
    def neutral(self) -> np.ndarray:
        """[V, 3] float32 generic neutral in metres."""
        return self.data.neutral

    @property
    def identity_basis(self) -> np.ndarray:
        """[100, V, 3] float32 identity deltas; coefficients ~ N(0, 1)."""
        return self.data.identity

    @property
    def expression_basis(self) -> np.ndarray:
        """[53, V, 3] float32 ICT expression deltas (``ICT_EXPRESSIONS`` order)."""
        return self.data.expression

    def morph(self, identity: np.ndarray | None = None, expression: np.ndarray | None = None) -> np.ndarray:
        """Return neutral + identity and expression deltas.

        verts[v, k] = neutral[v, k] + sum_i id[i] * I[i, v, k] + sum_e ex[e] * E[e, v, k]

        Args:
            identity: [<=100] float identity coefficients (missing trailing ones are 0).
            expression: [53] float ICT expression weights, usually in [0, 1].

        Returns:
            [V, 3] float32 vertex positions in metres.

        Raises:
            InputError: wrong lengths or non-finite values.
        """
        out = self.neutral.astype(np.float64)
        if identity is not None:
            identity = np.asarray(identity, np.float64).ravel()
            if len(identity) > self.identity_basis.shape[0] or not np.isfinite(identity).all():
                raise InputError(f"identity: need <= {self.identity_basis.shape[0]} finite values, got {len(identity)}")
            out += blend_shapes(identity, self.identity_basis[: len(identity)])
        if expression is not None:
            expression = np.asarray(expression, np.float64).ravel()
            if len(expression) != len(ICT_EXPRESSIONS) or not np.isfinite(expression).all():
                raise InputError(f"expression: need {len(ICT_EXPRESSIONS)} finite ICT weights, got {len(expression)}")
            out += blend_shapes(expression, self.expression_basis)
        return out.astype(np.float32)

    @functools.cached_property
    def expression_transfer(self) -> IctTransfer:
        """The transfer of ICT's 53 shapes and ``tongueOut`` to any identity, its source half done once.

        ``expression_transfer.transfer(vertices)`` is :func:`avatarsdk.rigs.transfer.ict_transfer`
        of those 54 shapes with the lower teeth as the rigid jaw (to float rounding,
        see :class:`~avatarsdk.rigs.transfer.IctTransfer`); built on first use
        (~0.6 CPU-s) and kept with the model and in the disk cache (:mod:`avatarsdk.cache`,
        ~100 MB, read in ~0.1 s; its key covers the ICT files and this code).
        """
        # local: avatarsdk.cache imports avatarsdk.rigs.ict, so importing it while avatarsdk.rigs loads is a cycle
        from avatarsdk.cache import cached_arrays, code_digest

        def compute() -> dict[str, np.ndarray]:
            shapes = np.concatenate([self.expression_basis, self.tongue_out[None]])
            return prepare_ict(self.neutral, self.topology.triangles, shapes, jaw_mask=_lower_jaw_mask(self.data),
                               jaw_follow=self.jaw_follow).to_arrays()

        # The arrays themselves too: a float16 pack carries its source files' checksum.
        h = hashlib.blake2b(digest_size=20)
        for a in (self.neutral, self.expression_basis, self.tongue_out, self.jaw_follow, self.topology.triangles):
            h.update(np.ascontiguousarray(a).tobytes())
        key = {"ict": self.data.source_sha256, "arrays": h.hexdigest(),
               "code": code_digest("avatarsdk.rigs.transfer", "avatarsdk.rigs.model", "avatarsdk.rigs.ict")}
        return IctTransfer.from_arrays(cached_arrays("ict-transfer", key, compute))

    def ict_blendshapes(self, vertices: np.ndarray | None = None) -> np.ndarray:
        """Return ICT's 53 expression shapes as [53, V, 3] float32 deltas for a head.

        ICT authored the deltas on the generic neutral; for any other head they
        are adapted to it by deformation transfer with the jaw kept rigid and
        the eyelids clear of this head's eyeballs (see
        :func:`avatarsdk.rigs.transfer.ict_transfer`; 1-2 s per head on 2 cores).
        ICT's ``eyeLook*`` shapes move only the eyelids; the eyeballs get their
        rotation here (see :func:`eye_rotation_deltas`), about the eye centres of
        ``vertices`` (default: the generic neutral), after the transfer.

        Raises:
            InputError: ``vertices`` is not [V, 3] finite.
        """
        return self._expression_shapes(vertices)[0]

    def arkit_blendshapes(self, vertices: np.ndarray | None = None) -> np.ndarray:
        """Return the 52 ARKit blendshapes as [52, V, 3] float32 deltas (``ARKIT_NAMES`` order)."""
        ict, tongue = self._expression_shapes(vertices)
        index = {n: i for i, n in enumerate(ICT_EXPRESSIONS)}
        out = np.empty((len(ARKIT_NAMES),) + self.neutral.shape, np.float32)
        for k, name in enumerate(ARKIT_NAMES):
            parts = arkit_to_ict(name)
            out[k] = tongue if not parts else sum(ict[index[p]] for p in parts)
        return out

    def _expression_shapes(self, vertices: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """([53, V, 3] ICT shapes with gaze rotations, [V, 3] tongueOut), adapted to ``vertices``."""
        vertices = self.neutral if vertices is None else np.asarray(vertices, np.float32)
        ict, tongue = self.expression_basis.copy(), self.tongue_out.copy()
        if not np.array_equal(vertices, self.neutral):
            # One factorisation for all 54 shapes. The lower teeth keep a rigid jaw
            # motion, the eyeballs are never moved by ICT's shapes; the gaze
            # rotations below are about this head's own eye centres.
            # The identity-independent half is done once per model (expression_transfer).
            shapes = self.expression_transfer.transfer(vertices)
            ict, tongue = shapes[:-1], shapes[-1]
        for name, delta in eye_rotation_deltas(vertices).items():
            ict[ICT_EXPRESSIONS.index(name)] += delta
        return ict, tongue

    def rig(self, vertices: np.ndarray, *, names: str = "arkit") -> Rig:
        """Build the skeleton, skin weights and blendshapes for a neutral head.

        Args:
            vertices: [V, 3] float32 neutral positions in metres (ICT topology).
            names: "arkit" (52 shapes) or "ict" (53 shapes).

        Raises:
            InputError: wrong vertex shape or unknown ``names``.
        """
        vertices = np.asarray(vertices, np.float32)
        if vertices.shape != self.neutral.shape:
            raise InputError(f"vertices: expected shape {self.neutral.shape}, got {vertices.shape}")
        if names not in ("arkit", "ict"):
            raise InputError(f"names must be 'arkit' or 'ict', got {names!r}")
        # The hinge moves with the identity: carry it by the offset of the lower teeth.
        lower = _lower_jaw_mask(self.data)
        pivot = self.jaw_pivot + (vertices[lower] - self.neutral[lower]).mean(0)
        skeleton = skeleton_from_geometry(vertices, pivot)
        joints, weights = skin_weights(vertices, skeleton, self.jaw_follow)
        if names == "arkit":
            shapes, shape_names = self.arkit_blendshapes(vertices), ARKIT_NAMES
        else:
            shapes, shape_names = self.ict_blendshapes(vertices), ICT_EXPRESSIONS
        return Rig(skeleton, joints, weights, tuple(shape_names), shapes)


# Gaze range at weight 1 (ARKit leaves it to the rig): degrees.
EYE_LOOK_DEGREES = {"Up": 25.0, "Down": 25.0, "In": 30.0, "Out": 30.0}


def _rotation(axis: str, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def eye_rotation_deltas(vertices: np.ndarray) -> dict[str, np.ndarray]:
    """Eyeball rotations for ICT's ``eyeLook*`` shapes, as linear vertex deltas.

    Each eyeball (sclera, cornea, iris) turns about its sphere centre: up/down
    about +X, in/out about +Y, by ``EYE_LOOK_DEGREES`` at weight 1 (a morph
    target is linear, so at weight 0.5 the surface sits ~0.5 mm inside the
    rotated sphere for 30 degrees). "In" turns the pupil toward the nose.

    Args:
        vertices: [V, 3] float32 neutral positions.

    Returns:
        ICT shape name -> [V, 3] float32 deltas (zero off the eyeballs).
    """
    e0, e1 = PARTS["eyeballs"]
    out = {}
    for side, sign in (("L", 1.0), ("R", -1.0)):
        ids = np.arange(e0, e1)[vertices[e0:e1, 0] * sign > 0]
        centre = _sphere_centre(vertices[ids])
        rel = vertices[ids].astype(np.float64) - centre
        # Pupil up = rotate about +X by a negative angle; outward for the left
        # eye (+X) = positive angle about +Y, mirrored for the right eye.
        turns = {"Up": ("x", -1.0), "Down": ("x", 1.0), "Out": ("y", sign), "In": ("y", -sign)}
        for direction, (axis, s) in turns.items():
            d = np.zeros_like(vertices)
            d[ids] = rel @ _rotation(axis, s * EYE_LOOK_DEGREES[direction]).T - rel
            out[f"eyeLook{direction}_{side}"] = d
    return out


def _tongue_mask(data: IctData) -> np.ndarray:
    """[V] bool: the tongue inside ICT's gums_tongue part.

    ICT gives gums, palate, mouth floor and tongue as UV islands of one
    material. The tongue's islands are the ones that ride on the jaw (jawOpen
    moves them by over 15 mm on average) and stay clear of the teeth (median
    distance over 5 mm); the gums hug the teeth and the palate does not move.
    """
    sel = np.nonzero(data.poly_material == data.materials.index("M_GumsTongue"))[0]
    pt = data.poly_uv[sel]
    edges = np.concatenate([pt[:, [0, 1]], pt[:, [1, 2]], pt[:, [2, 3]], pt[:, [3, 0]]])
    n = data.uv.shape[0]
    _, label = connected_components(coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)),
                                    directed=False)
    island = label[pt[:, 0]]
    teeth = cKDTree(data.neutral[slice(*PARTS["teeth"])])
    jaw = data.expression[ICT_EXPRESSIONS.index("jawOpen")]
    mask = np.zeros(data.neutral.shape[0], bool)
    for c in np.unique(island):
        vs = np.unique(data.poly_vertices[sel[island == c]])
        if np.linalg.norm(jaw[vs], axis=1).mean() > 0.015 and np.median(teeth.query(data.neutral[vs])[0]) > 0.005:
            mask[vs] = True
    return mask


def _tongue_out(data: IctData) -> np.ndarray:
    """Author ``tongueOut``: the tongue slides forward and down out of the mouth.

    Each tongue vertex moves forward (+Z) by up to 4.5 cm and 60% of the way to
    the tongue's mid-height and 35% narrower (it thins as it stretches), weighted by a
    smoothstep from the back of the tongue (0) to its tip (1) and by a
    smoothstep of its distance to the surrounding mouth floor (0 at the seam,
    1 beyond 6 mm), so the root and the seams stay attached.
    """
    v = data.neutral
    tongue = _tongue_mask(data)
    a, b = PARTS["gums_tongue"]
    rest = np.zeros_like(tongue)
    rest[a:b] = ~tongue[a:b]
    z = v[:, 2]
    z_back, z_tip = np.percentile(z[tongue], 5), z[tongue].max()
    free = cKDTree(v[rest]).query(v[tongue])[0]
    w = np.zeros(len(v))
    w[tongue] = _smoothstep((z[tongue] - z_back) / max(z_tip - z_back, 1e-3)) * _smoothstep(free / 0.006)
    # Slide forward, and flatten toward the tongue's mid-height as it extends so
    # the underside clears the lower lip instead of pushing through it.
    out = np.zeros_like(v, dtype=np.float64)
    y_mid = float(np.median(v[tongue & (w > 0.5), 1]))
    out[:, 2] = 0.045 * w
    out[:, 1] = 0.6 * w * (y_mid - v[:, 1])
    out[:, 0] = -0.35 * w * v[:, 0]  # and narrows
    return out.astype(np.float32)


def _jaw(data: IctData) -> tuple[np.ndarray, float, np.ndarray]:
    lower = _lower_jaw_mask(data)
    jaw = data.expression[ICT_EXPRESSIONS.index("jawOpen")]
    pivot, angle = _fit_hinge(data.neutral[lower], jaw[lower])
    # How much of the rigid hinge motion each vertex follows in ICT's jawOpen.
    rel = data.neutral[:, 1:] - pivot[1:]
    c, s = np.cos(angle), np.sin(angle)
    rigid = np.stack([c * rel[:, 0] - s * rel[:, 1], s * rel[:, 0] + c * rel[:, 1]], 1) - rel
    num = (jaw[:, 1:] * rigid).sum(1)
    den = (rigid**2).sum(1) + 1e-12
    follow = np.clip(num / den, 0.0, 1.0)
    follow[np.linalg.norm(jaw, axis=1) < 1e-4] = 0.0
    follow[lower] = 1.0
    return pivot.astype(np.float32), angle, follow.astype(np.float32)


@functools.lru_cache(maxsize=4)
def _load(key: str | None) -> FaceModel:
    data = load_data(key)
    pivot, angle, follow = _jaw(data)
    return FaceModel(data, build_topology(data), _tongue_out(data), pivot, angle, follow)


def load_ict(ict_dir: str | os.PathLike | None = None) -> FaceModel:
    """Load the ICT-FaceKit model (cached per folder for the process).

    Args:
        ict_dir: folder of the ICT files; default: see :mod:`avatarsdk.rigs.ict`.

    Raises:
        DataError: the files are missing or malformed.
    """
    return _load(None if ict_dir is None else str(ict_dir))

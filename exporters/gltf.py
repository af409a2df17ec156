"""glTF 2.0 binary (.glb) export of an :class:`~avatarsdk.datatypes.Avatar`.

The file holds one skinned mesh with one primitive per material, the six-joint
skeleton, every blendshape as a morph target and the textures embedded as PNG::

    scene "Scene" ─┬─ node "avatar" (mesh "avatar", skin 0)   # a root node, no transform
                   └─ node "root" ── "neck" ── "head" ── ...  # the skeleton in bind pose

Layout decisions an importer may care about:

* Units, axes and UV orientation are the SDK's (metres, +Y up, +Z forward, v
  down), which are glTF's, so nothing is converted.
* Vertices are welded per primitive by unique (ICT vertex, corner UV) pairs, so
  a vertex on a UV seam appears once per UV. Each primitive carries the custom
  attribute ``_ICT_VERTEX`` (FLOAT SCALAR, exact integers below 2**24): the ICT
  vertex each glTF vertex came from. :func:`weld` gives the same mapping in Python.
* Normals are area-weighted smooth normals of the ICT vertices, so shading has
  no creases along UV seams.
* Morph targets are POSITION and NORMAL deltas. A NORMAL delta is the smooth
  normal of the fully deformed mesh (base + that target) minus the base normal,
  so shading follows an expression (a crease lit as a crease); importers that
  blend normals linearly and renormalise get the exact normal at weight 0 and 1.
  A target that moves few vertices of a primitive is a sparse accessor; one
  that moves none is all zeros. Both point their ``bufferView`` at one shared
  zero-filled view (sparse values then replace some of those zeros; the view
  costs 12 bytes per vertex of the largest primitive, once per file). glTF
  allows leaving bufferView out, but Godot 3.2's importer
  (``editor_scene_importer_gltf.cpp``) starts each accessor at ``buffer_view =
  0`` and decodes bufferView 0 in its place: the target comes out empty (error
  "buffer_end > bv.byte_length") or as the bytes of the first texture. Names
  are in ``mesh.extras.targetNames`` (the convention Blender, three.js and
  Babylon read).
* TEXCOORD_0 is written only for primitives whose material has a texture (the
  untextured ``eye_wet`` film has none, so no unused attribute).
* A material with a normal map (texture ``<material>_normal``) gets TANGENT
  attributes from its UVs (:func:`vertex_tangents`); a ``<material>_orm``
  texture (occlusion R, roughness G, metallic B) is both its
  metallicRoughnessTexture and its occlusionTexture.
* Joint nodes carry the skeleton's names, translations relative to their
  parent and no rotation; inverse bind matrices are translations by minus each
  joint's world position.

Only pure functions: :func:`to_glb` returns bytes and never touches the file system.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import struct
import weakref

import numpy as np
import pygltflib as gl

from avatarsdk import __version__
from avatarsdk.errors import ExportError
from avatarsdk.files import png_bytes
from avatarsdk.files import json_safe
from avatarsdk.datatypes import Avatar, Topology

log = logging.getLogger(__name__)

__all__ = ["MAP_SUFFIXES", "Primitive", "morph_normal_deltas", "primitives", "to_glb", "vertex_normals",
           "vertex_tangents", "weld"]

MAP_SUFFIXES = ("_normal", "_orm")
"""Texture keys ``<material><suffix>`` hold that material's normal map and packed occlusion-roughness-metallic map."""

MESH_NAME = "avatar"
SCENE_NAME = "Scene"  # as Blender's exporter names it; distinct from every node name
ICT_VERTEX_ATTRIBUTE = "_ICT_VERTEX"

# Per-material look. Textured materials multiply baseColorFactor by the texture.
_MATERIAL_STYLE: dict[str, dict] = {
    "skin": dict(roughness=0.6, colour=(0.80, 0.62, 0.52, 1.0)),
    "eyes": dict(roughness=0.1, colour=(0.93, 0.91, 0.88, 1.0)),
    "teeth": dict(roughness=0.35, colour=(0.93, 0.90, 0.82, 1.0)),
    # Tear line, eye blend and eye occlusion share one UV square and partly lie
    # in front of the lid skin, so they are a nearly clear glossy film (any
    # visible tint would draw a grey veil over the eye and jagged lines where the
    # sheets cut through the lids).
    "eye_wet": dict(roughness=0.05, colour=(0.92, 0.92, 0.92, 0.03), alpha="BLEND", double_sided=False),
    "eyelashes": dict(roughness=0.8, colour=(0.06, 0.045, 0.04, 1.0), alpha="BLEND", double_sided=True),
}
_DEFAULT_STYLE = dict(roughness=0.6, colour=(0.8, 0.8, 0.8, 1.0))

_SPARSE_INDEX_BYTES = {gl.UNSIGNED_SHORT: 2, gl.UNSIGNED_INT: 4}


# ---------------------------------------------------------------------------
# Welding and normals
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Primitive:
    """The welded triangles of one material.

    Attributes:
        material: material name (from ``Topology.materials``).
        vertex_map: [N] int64 ICT vertex of each glTF vertex, ascending.
        uv: [N, 2] float32 texture coordinate of each glTF vertex.
        indices: [F, 3] int64 triangles into the N glTF vertices, in the order of
            that material's triangles in the topology.
    """

    material: str
    vertex_map: np.ndarray
    uv: np.ndarray
    indices: np.ndarray


def weld(triangles: np.ndarray, corner_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge triangle corners that share both a vertex and a texture coordinate.

    Two corners are merged iff their vertex indices are equal and their UVs are
    bit-identical float32 values.

    Args:
        triangles: [F, 3] int vertex indices.
        corner_uv: [F, 3, 2] float texture coordinates of the corners.

    Returns:
        ``(vertex_map [N] int64, uv [N, 2] float32, indices [F, 3] int64)``, sorted
        by (vertex, u bits, v bits), with ``vertex_map[indices] == triangles`` and
        ``uv[indices] == corner_uv``.

    Raises:
        ExportError: the shapes disagree.
    """
    triangles = np.asarray(triangles)
    corner_uv = np.asarray(corner_uv, np.float32)
    if triangles.ndim != 2 or triangles.shape[1:] != (3,) or corner_uv.shape != triangles.shape + (2,):
        raise ExportError(f"weld: need triangles [F, 3] and corner_uv [F, 3, 2], got {triangles.shape} and {corner_uv.shape}")
    if triangles.size == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.float32), np.zeros((0, 3), np.int64)
    bits = np.ascontiguousarray(corner_uv.reshape(-1, 2)).view(np.uint32).astype(np.int64)
    keys = np.concatenate([triangles.reshape(-1, 1).astype(np.int64), bits], axis=1)  # [3F, 3]
    uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    uv = corner_uv.reshape(-1, 2)[first]
    return uniq[:, 0].copy(), np.ascontiguousarray(uv), inverse.reshape(-1, 3).astype(np.int64)


_WELDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Topology -> tuple of Primitive


def primitives(topology: Topology) -> list[Primitive]:
    """Weld each material of ``topology`` that has triangles, in ``topology.materials`` order.

    Remembered per topology object (every avatar shares the ICT one, and welding
    it takes ~0.1 s); the arrays are read-only.
    """
    known = _WELDED.get(topology)
    if known is None:
        known = tuple(_primitives(topology))
        for p in known:
            for a in (p.vertex_map, p.uv, p.indices):
                a.setflags(write=False)
        _WELDED[topology] = known
    return list(known)


def _primitives(topology: Topology) -> list[Primitive]:
    out = []
    for mi, name in enumerate(topology.materials):
        sel = topology.tri_material == mi
        if not sel.any():
            continue
        vmap, uv, idx = weld(topology.triangles[sel], topology.corner_uv[sel])
        out.append(Primitive(name, vmap, uv, idx))
    return out


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted smooth vertex normals.

    n[v] = normalize(sum over triangles t at v of cross(b - a, c - a)), whose
    length is twice the area of t. Vertices with no (or only degenerate)
    triangles get +Z.

    Args:
        vertices: [V, 3] float positions.
        triangles: [F, 3] int counter-clockwise triangles.

    Returns:
        [V, 3] float32 unit normals.
    """
    v = np.asarray(vertices, np.float64)
    acc = _corner_sums(v, np.asarray(triangles))
    length = np.linalg.norm(acc, axis=1, keepdims=True)
    ok = length[:, 0] > 1e-20
    out = np.tile(np.array([0.0, 0.0, 1.0]), (len(v), 1))
    out[ok] = acc[ok] / length[ok]
    return out.astype(np.float32)


def _corner_sums(v: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """[V, 3] float64: each vertex's sum of cross(b - a, c - a) over its triangles.

    Summed by ``np.bincount`` over the corners in the order corner 0, 1, 2 of
    every triangle: the order (and so the float result) of ``np.add.at`` per
    corner, at a fraction of its cost.
    """
    a, b, c = (v[triangles[:, i]] for i in range(3))
    face = np.cross(b - a, c - a)
    index = triangles.T.ravel()
    return np.stack([np.bincount(index, np.tile(face[:, k], 3), minlength=len(v)) for k in range(3)], 1)


def moved_rows(deltas: np.ndarray, epsilon: float) -> np.ndarray:
    """[..., N] bool: rows of ``deltas`` [..., N, 3] with some component's magnitude above ``epsilon``.

    Equal to ``np.abs(deltas).max(axis=-1) > epsilon`` (NaN rows included: both
    give False), without numpy's slow reduction over a length-3 axis.
    """
    a = np.abs(deltas)
    return np.maximum(np.maximum(a[..., 0], a[..., 1]), a[..., 2]) > epsilon


def morph_normal_deltas(vertices: np.ndarray, triangles: np.ndarray, deltas: np.ndarray,
                        epsilon: float = 0.0, moved: np.ndarray | None = None) -> np.ndarray:
    """NORMAL morph deltas: smooth normals of each fully applied target minus the base normals.

    dn[k, v] = vertex_normals(vertices + deltas[k])[v] - vertex_normals(vertices)[v]

    Only vertices of triangles that touch a moved vertex (|delta| > ``epsilon`` in
    some axis) are recomputed; every other normal is unchanged by construction.

    Args:
        vertices: [V, 3] float base positions.
        triangles: [F, 3] int triangles.
        deltas: [K, V, 3] float POSITION deltas.
        epsilon: a vertex whose delta is at most this in every axis counts as
            not moved (as in the POSITION accessor, so both agree).
        moved: optional [K, V] bool, ``moved_rows(deltas, epsilon)`` of the deltas
            in float64, when the caller has it already.

    Returns:
        [K, V, 3] float32 normal deltas (zero where the normal is unchanged).
    """
    v = np.asarray(vertices, np.float64)
    tri = np.asarray(triangles, np.int64)
    base = vertex_normals(v, tri)
    out = np.zeros(np.shape(deltas), np.float32)
    moved_all = moved_rows(np.asarray(deltas, np.float64), epsilon) if moved is None else moved
    local_index = np.zeros(len(v), np.int64)  # vertex -> its row among one target's used vertices
    for k, d in enumerate(deltas):
        moved = moved_all[k]
        if not moved.any():
            continue
        near_mask = np.zeros(len(v), bool)  # vertices whose normal can change
        near_mask[tri[moved[tri].any(1)]] = True
        near = np.nonzero(near_mask)[0]
        touching = tri[near_mask[tri].any(1)]  # every triangle around those vertices
        used = np.zeros(len(v), bool)
        used[touching] = True
        ids = np.nonzero(used)[0]
        local_index[ids] = np.arange(len(ids))
        # The deltas as the file stores them, on the used vertices only; the corner sums of
        # vertex_normals(v + d, touching) in local numbering add the same terms in the same order.
        d = np.where(moved[ids, None], np.asarray(d[ids], np.float64), 0.0)
        acc = _corner_sums(v[ids] + d, local_index[touching])[local_index[near]]
        x, y, z = acc[:, 0], acc[:, 1], acc[:, 2]
        length = np.sqrt(x * x + y * y + z * z)[:, None]  # np.linalg.norm's sum, in its order
        ok = length[:, 0] > 1e-20
        local = np.tile(np.array([0.0, 0.0, 1.0]), (len(near), 1))
        local[ok] = acc[ok] / length[ok]
        out[k, near] = local.astype(np.float32) - base[near]
    return out


def vertex_tangents(vertices: np.ndarray, normals: np.ndarray, uv: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Per-vertex tangent frames from texture coordinates (glTF TANGENT).

    Per triangle, T = dP/du and B = dP/dv solve [e1 e2] = [T B] [[du1 du2], [dv1 dv2]]
    (Lengyel's method, the basis MikkTSpace also starts from); each vertex sums
    the T and B of its triangles weighted by the triangle's 3D area, T is made
    orthogonal to the vertex normal (Gram-Schmidt) and w = +1 when
    cross(N, T) points along -dP/dv: glTF's bitangent points to the top of the
    image (v is down in glTF), the convention of its normal textures.
    Vertices with no usable UV gradient get any unit vector orthogonal to N.

    Args:
        vertices: [N, 3] float positions; normals: [N, 3] unit normals;
        uv: [N, 2] float texture coordinates (v down); triangles: [F, 3] int.

    Returns:
        [N, 4] float32: unit xyz orthogonal to the normal, w in {-1, +1}.
    """
    p = np.asarray(vertices, np.float64)
    n = np.asarray(normals, np.float64)
    t_uv = np.asarray(uv, np.float64)
    tri = np.asarray(triangles, np.int64)
    e1, e2 = p[tri[:, 1]] - p[tri[:, 0]], p[tri[:, 2]] - p[tri[:, 0]]
    d1, d2 = t_uv[tri[:, 1]] - t_uv[tri[:, 0]], t_uv[tri[:, 2]] - t_uv[tri[:, 0]]
    det = d1[:, 0] * d2[:, 1] - d2[:, 0] * d1[:, 1]
    ok = np.abs(det) > 1e-14
    inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)[:, None]
    t_face = (e1 * d2[:, 1:2] - e2 * d1[:, 1:2]) * inv
    b_face = (e2 * d1[:, 0:1] - e1 * d2[:, 0:1]) * inv
    area = 0.5 * np.linalg.norm(np.cross(e1, e2), axis=1, keepdims=True)
    # Normalise per face before weighting by area, so stretched UVs do not dominate.
    t_face = t_face / np.maximum(np.linalg.norm(t_face, axis=1, keepdims=True), 1e-30) * area
    b_face = b_face / np.maximum(np.linalg.norm(b_face, axis=1, keepdims=True), 1e-30) * area
    t_acc, b_acc = np.zeros_like(p), np.zeros_like(p)
    for i in range(3):
        np.add.at(t_acc, tri[:, i], t_face)
        np.add.at(b_acc, tri[:, i], b_face)
    t = t_acc - (t_acc * n).sum(1, keepdims=True) * n
    length = np.linalg.norm(t, axis=1, keepdims=True)
    bad = length[:, 0] < 1e-12
    if bad.any():  # any vector orthogonal to N
        helper = np.where(np.abs(n[bad, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
        t[bad] = np.cross(n[bad], helper)
        length[bad] = np.linalg.norm(t[bad], axis=1, keepdims=True)
    t /= length
    w = np.where((np.cross(n, t) * -b_acc).sum(1) < 0, -1.0, 1.0)
    return np.concatenate([t, w[:, None]], 1).astype(np.float32)


# ---------------------------------------------------------------------------
# Binary buffer builder
# ---------------------------------------------------------------------------

class _Builder:
    """Accumulates the BIN chunk and the bufferViews/accessors pointing into it."""

    def __init__(self, gltf: gl.GLTF2) -> None:
        self.gltf = gltf
        self.blob = bytearray()
        self.zero_view: int | None = None  # shared zero-filled base of sparse and all-zero accessors

    def view(self, data: bytes, *, target: int | None = None) -> int:
        """Append ``data`` at a 4-byte aligned offset as a new bufferView; return its index."""
        self.blob.extend(b"\0" * (-len(self.blob) % 4))
        self.gltf.bufferViews.append(gl.BufferView(buffer=0, byteOffset=len(self.blob), byteLength=len(data),
                                                   target=target))
        self.blob.extend(data)
        return len(self.gltf.bufferViews) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, *, target: int | None = None,
                 minmax: bool = False, name: str | None = None) -> int:
        array = np.ascontiguousarray(array)
        view = self.view(array.tobytes(), target=target)
        acc = gl.Accessor(bufferView=view, byteOffset=0, componentType=component, count=int(array.shape[0]),
                          type=kind, name=name)
        if minmax:
            acc.min, acc.max = _bounds(array)
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1

    def morph_accessor(self, deltas: np.ndarray, epsilon: float, name: str, *, minmax: bool = True,
                       moved: np.ndarray | None = None) -> int:
        """Morph target accessor (POSITION or NORMAL deltas): none, sparse or dense, whichever is smallest.

        ``moved``: [n] bool, ``np.abs(deltas).max(axis=1) > epsilon`` when the caller has it already.
        """
        n = deltas.shape[0]
        moved = np.nonzero(np.abs(deltas).max(axis=1) > epsilon if moved is None else moved)[0]
        acc = gl.Accessor(componentType=gl.FLOAT, count=n, type=gl.VEC3, name=name)
        if len(moved) == 0:  # all zeros: no copy of the deltas needed
            if minmax:
                acc.min, acc.max = [0.0] * 3, [0.0] * 3
            acc.bufferView, acc.byteOffset = self.zeros(n * 12), 0
            self.gltf.accessors.append(acc)
            return len(self.gltf.accessors) - 1
        values = np.zeros_like(deltas)
        values[moved] = deltas[moved]
        if minmax:  # required for POSITION only
            acc.min, acc.max = _bounds(values)
        index_type = gl.UNSIGNED_SHORT if n <= 0xFFFF else gl.UNSIGNED_INT
        if len(moved) == 0:
            acc.bufferView, acc.byteOffset = self.zeros(n * 12), 0  # all zeros
        elif len(moved) * (_SPARSE_INDEX_BYTES[index_type] + 12) < n * 12:
            idx = moved.astype(np.uint16 if index_type == gl.UNSIGNED_SHORT else np.uint32)
            acc.bufferView, acc.byteOffset = self.zeros(n * 12), 0  # zeros, then the sparse values
            acc.sparse = gl.Sparse(
                count=int(len(moved)),
                indices=gl.AccessorSparseIndices(bufferView=self.view(idx.tobytes()), byteOffset=0,
                                                 componentType=index_type),
                values=gl.AccessorSparseValues(bufferView=self.view(np.ascontiguousarray(values[moved]).tobytes()),
                                               byteOffset=0),
            )
        else:
            acc.bufferView = self.view(np.ascontiguousarray(values).tobytes(), target=gl.ARRAY_BUFFER)
            acc.byteOffset = 0
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1

    def zeros(self, nbytes: int) -> int:
        """The shared zero-filled bufferView, at least ``nbytes`` long; return its index.

        to_glb creates it for its largest primitive before the first morph
        target, so one view serves every target of the file.
        """
        if self.zero_view is None or self.gltf.bufferViews[self.zero_view].byteLength < nbytes:
            self.zero_view = self.view(bytes(nbytes), target=gl.ARRAY_BUFFER)
            # Shared by many VEC3 float accessors, so glTF wants the stride stated.
            self.gltf.bufferViews[self.zero_view].byteStride = 12
        return self.zero_view


def _bounds(array: np.ndarray) -> tuple[list, list]:
    a = array.reshape(array.shape[0], -1)
    if array.dtype.kind == "f":
        return [float(x) for x in a.min(0)], [float(x) for x in a.max(0)]
    return [int(x) for x in a.min(0)], [int(x) for x in a.max(0)]


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------

def to_glb(
    avatar: Avatar,
    *,
    blendshapes: str = "all",
    extra_shapes: dict[str, np.ndarray] | None = None,
    morph_epsilon: float = 1e-5,
    normal_epsilon: float = 5e-3,
    hair=None,
    hair_texture: np.ndarray | None = None,
) -> bytes:
    """Encode an avatar as a binary glTF 2.0 file.

    Args:
        avatar: the avatar; ``avatar.textures["skin"]`` is required, other
            materials without a texture get a plain colour.
        blendshapes: "all" exports every shape of ``avatar.rig`` (52 ARKit or 53
            ICT, as the rig was built) as morph targets; "none" exports none.
        extra_shapes: more morph targets, name -> [V, 3] float deltas in metres,
            appended after the rig's shapes (names must not repeat).
        morph_epsilon: metres; a vertex whose delta is at most this in every
            axis is stored as not moving. The default, 10 microns, is far below
            a pixel even in a 4K close-up and keeps the ICT shapes' long
            near-zero tails (float noise and faint falloff) out of the file,
            about a fifth of the morph data; 0 keeps every non-zero delta.
        normal_epsilon: a NORMAL delta at most this in every axis is stored as
            zero. The default, 0.005 (0.3 degree of tilt; N.L changes by at
            most 0.005, about one 8-bit level of diffuse light) keeps the long
            tails of tiny normal changes around a moved region out of the
            file: on the ICT head the NORMAL deltas add 44 % to the file at
            0.005, 54 % at 0.002, 61 % at 0.001; 0 keeps every non-zero delta.
        hair: optional hair cards (:class:`avatarsdk.hair.Cards`: positions,
            normals, uv, triangles, joints, weights), exported as their own
            skinned mesh "hair" with material "hair" (alpha-tested, double-sided).
        hair_texture: [H, W, 4] uint8 sRGBA strand atlas of the hair material.

    Returns:
        The .glb file contents.

    Raises:
        ExportError: inconsistent or non-finite inputs, a missing skin texture,
            a texture that is not uint8 [H, W, 3 or 4] with power-of-two sides, or
            an unknown ``blendshapes`` value.
    """
    names, deltas = _check(avatar, blendshapes, extra_shapes, morph_epsilon)
    if not (isinstance(normal_epsilon, (int, float)) and math.isfinite(normal_epsilon) and normal_epsilon >= 0):
        raise ExportError(f"normal_epsilon must be a finite number >= 0, got {normal_epsilon!r}")
    topo, rig = avatar.topology, avatar.rig
    vertices = np.asarray(avatar.vertices, np.float32)
    normals = vertex_normals(vertices, topo.triangles)
    # Which vertices each target moves, found once for all primitives ([K, V] bool).
    moved_pos = moved_rows(deltas, morph_epsilon)
    # The NORMAL deltas test the deltas in float64; for float32 deltas the float32 test above agrees
    # unless the epsilon rounds up to float32.
    same_test = deltas.dtype == np.float64 or float(np.float32(morph_epsilon)) <= morph_epsilon
    normal_deltas = morph_normal_deltas(vertices, topo.triangles, deltas, morph_epsilon,
                                        moved=moved_pos if same_test else None)
    joints, weights = _skin_attributes(rig.skin_joints, rig.skin_weights)
    prims = primitives(topo)
    moved_nrm = moved_rows(normal_deltas, normal_epsilon)

    gltf = gl.GLTF2(
        asset=gl.Asset(generator=f"avatarsdk {__version__}", version="2.0",
                       extras={"avatarsdk": {"version": __version__, "meta": _json_safe(dict(avatar.meta))}}),
        buffers=[gl.Buffer()],
    )
    b = _Builder(gltf)
    materials = _materials(b, avatar.textures, [p.material for p in prims])
    normal_mapped = {name for name in materials if f"{name}_normal" in avatar.textures}

    mesh = gl.Mesh(name=MESH_NAME)
    if names:
        b.zeros(12 * max(len(p.vertex_map) for p in prims))
    for prim in prims:
        vm = prim.vertex_map
        n = len(vm)
        textured = prim.material in avatar.textures
        attrs = gl.Attributes(
            POSITION=b.accessor(vertices[vm], gl.VEC3, gl.FLOAT, target=gl.ARRAY_BUFFER, minmax=True),
            NORMAL=b.accessor(normals[vm], gl.VEC3, gl.FLOAT, target=gl.ARRAY_BUFFER),
            TEXCOORD_0=b.accessor(prim.uv, gl.VEC2, gl.FLOAT, target=gl.ARRAY_BUFFER) if textured else None,
            JOINTS_0=b.accessor(joints[vm], gl.VEC4, gl.UNSIGNED_BYTE, target=gl.ARRAY_BUFFER),
            WEIGHTS_0=b.accessor(weights[vm], gl.VEC4, gl.FLOAT, target=gl.ARRAY_BUFFER),
            **{ICT_VERTEX_ATTRIBUTE: b.accessor(vm.astype(np.float32), gl.SCALAR, gl.FLOAT,
                                                target=gl.ARRAY_BUFFER)},
        )
        if prim.material in normal_mapped:
            tangents = vertex_tangents(vertices[vm], normals[vm], prim.uv, prim.indices)
            attrs.TANGENT = b.accessor(tangents, gl.VEC4, gl.FLOAT, target=gl.ARRAY_BUFFER)
        if n <= 0xFFFF:
            idx, ctype = prim.indices.astype(np.uint16), gl.UNSIGNED_SHORT
        else:
            idx, ctype = prim.indices.astype(np.uint32), gl.UNSIGNED_INT
        indices = b.accessor(idx.reshape(-1), gl.SCALAR, ctype, target=gl.ELEMENT_ARRAY_BUFFER)
        targets = [gl.Attributes(POSITION=b.morph_accessor(d[vm], morph_epsilon, f"{prim.material}/{name}",
                                                           moved=mp[vm]),
                                 NORMAL=b.morph_accessor(dn[vm], normal_epsilon, f"{prim.material}/{name}/normal",
                                                         minmax=False, moved=mn[vm]))
                   for name, d, dn, mp, mn in zip(names, deltas, normal_deltas, moved_pos, moved_nrm)]
        mesh.primitives.append(gl.Primitive(attributes=attrs, indices=indices, material=materials[prim.material],
                                            mode=gl.TRIANGLES, targets=targets or None))
    if names:
        mesh.weights = [0.0] * len(names)
        mesh.extras = {"targetNames": list(names)}
    gltf.meshes.append(mesh)

    gltf.nodes.append(gl.Node(name=MESH_NAME, mesh=0, skin=0))
    if hair is not None:
        _add_hair(b, hair, hair_texture)
    root = _skeleton(b, rig.skeleton)
    # The scene is not named after the mesh node: Godot's importer makes scene and node names unique
    # together, and would import the node as "avatar 2".
    gltf.scenes.append(gl.Scene(name=SCENE_NAME, nodes=[*range(root), root]))
    gltf.scene = 0

    gltf.buffers[0].byteLength = len(b.blob)
    return _pack_glb(gltf, bytes(b.blob))


def _as_plain(obj):
    """pygltflib's ``gltf_asdict``: dataclasses to dicts (Attributes as their __dict__), new lists and dicts.

    The leaves (numbers, strings, None) are immutable, so they are shared instead of deep-copied.
    """
    if type(obj) is gl.Attributes:
        return copy.deepcopy(obj.__dict__)
    fields = _FIELDS.get(type(obj))
    if fields is None and dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = _FIELDS[type(obj)] = tuple(f.name for f in dataclasses.fields(obj))
    if fields is not None:
        return {name: _as_plain(getattr(obj, name)) for name in fields}
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_as_plain(v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((_as_plain(k), _as_plain(v)) for k, v in obj.items())
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return copy.deepcopy(obj)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _pack_glb(gltf: gl.GLTF2, blob: bytes) -> bytes:
    """GLB container: 12-byte header, JSON chunk padded with spaces, BIN chunk padded with zeros."""
    # gltf.gltf_to_json(separators=(",", ":"), indent=None), without its deep copy of every value.
    data = gl.delete_empty_keys(_as_plain(gltf))
    text = json.dumps(data, cls=gl.JsonEncoder, default=gl.json_serial, indent=None, allow_nan=False, skipkeys=True,
                      separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)
    blob = blob + b"\0" * (-len(blob) % 4)
    total = 12 + 8 + len(text) + 8 + len(blob)
    return b"".join([
        struct.pack("<4sII", b"glTF", 2, total),
        struct.pack("<I4s", len(text), b"JSON"), text,
        struct.pack("<I4s", len(blob), b"BIN\0"), blob,
    ])


def _check(avatar: Avatar, blendshapes: str, extra_shapes: dict | None, eps: float):
    """Validate the avatar; return the morph target names and [K, V, 3] float32 deltas."""
    topo, rig = avatar.topology, avatar.rig
    nv = int(topo.num_vertices)
    if not 0 < nv < 2**24:  # _ICT_VERTEX is stored as float32
        raise ExportError(f"topology.num_vertices must be in [1, 2**24), got {nv}")
    v = np.asarray(avatar.vertices)
    if v.shape != (nv, 3):
        raise ExportError(f"vertices: expected shape ({nv}, 3), got {v.shape}")
    if not np.isfinite(v).all():
        raise ExportError(f"vertices: {int((~np.isfinite(v)).any(1).sum())} vertices are not finite")
    tri = np.asarray(topo.triangles)
    if tri.ndim != 2 or tri.shape[1] != 3 or tri.size == 0:
        raise ExportError(f"topology.triangles: expected shape (F, 3) with F > 0, got {tri.shape}")
    if tri.min() < 0 or tri.max() >= nv:
        raise ExportError(f"topology.triangles: indices must be in [0, {nv}), got [{tri.min()}, {tri.max()}]")
    cuv = np.asarray(topo.corner_uv)
    if cuv.shape != tri.shape + (2,) or not np.isfinite(cuv).all():
        raise ExportError(f"topology.corner_uv: expected finite values of shape {tri.shape + (2,)}, got {cuv.shape}")
    tm = np.asarray(topo.tri_material)
    if tm.shape != (tri.shape[0],) or tm.min() < 0 or tm.max() >= len(topo.materials):
        raise ExportError(f"topology.tri_material: expected {tri.shape[0]} indices into {len(topo.materials)} materials")

    if "skin" not in avatar.textures:
        raise ExportError(f"textures: the 'skin' texture is required, got {sorted(avatar.textures)}")
    for name, img in avatar.textures.items():
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
            raise ExportError(f"texture {name!r}: expected uint8 [H, W, 3 or 4], got {img.dtype} {img.shape}")
        h, w = img.shape[:2]
        if h < 1 or w < 1 or h & (h - 1) or w & (w - 1):
            raise ExportError(f"texture {name!r}: sides must be powers of two, got {w}x{h}")
        base = next((name[: -len(sfx)] for sfx in MAP_SUFFIXES if name.endswith(sfx)), name)
        if base not in topo.materials:
            log.warning("texture %r matches no material of the topology; not exported", name)

    sk = rig.skeleton
    nj = len(sk.names)
    pos, par = np.asarray(sk.positions), np.asarray(sk.parents)
    if nj == 0 or nj > 256 or pos.shape != (nj, 3) or par.shape != (nj,):
        raise ExportError(f"skeleton: need 1..256 joints with positions [J, 3] and parents [J], got {nj} names, "
                          f"positions {pos.shape}, parents {par.shape}")
    if not np.isfinite(pos).all():
        raise ExportError("skeleton: joint positions are not finite")
    if par[0] != -1 or any(not (0 <= par[j] < j) for j in range(1, nj)):
        raise ExportError(f"skeleton: parents must list parents before children with one root first, got {par.tolist()}")
    sj, sw = np.asarray(rig.skin_joints), np.asarray(rig.skin_weights)
    if sj.shape != (nv, 4) or sw.shape != (nv, 4):
        raise ExportError(f"skin: expected joints and weights of shape ({nv}, 4), got {sj.shape} and {sw.shape}")
    if sj.min() < 0 or sj.max() >= nj:
        raise ExportError(f"skin_joints: indices must be in [0, {nj}), got [{sj.min()}, {sj.max()}]")
    if not np.isfinite(sw).all() or sw.min() < 0:
        raise ExportError("skin_weights: must be finite and >= 0")
    sums = sw.astype(np.float64).sum(1)
    if np.abs(sums - 1).max() > 1e-3:
        raise ExportError(f"skin_weights: rows must sum to 1, worst row sums to {sums[np.argmax(np.abs(sums - 1))]:.6f}")

    if blendshapes not in ("all", "none"):
        raise ExportError(f"blendshapes must be 'all' or 'none', got {blendshapes!r}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ExportError(f"morph_epsilon must be a finite number >= 0, got {eps!r}")
    names: list[str] = []
    arrays: list[np.ndarray] = []
    if blendshapes == "all":
        bs = np.asarray(rig.blendshapes)
        if bs.shape != (len(rig.blendshape_names), nv, 3):
            raise ExportError(f"blendshapes: expected shape ({len(rig.blendshape_names)}, {nv}, 3), got {bs.shape}")
        if not np.isfinite(bs).all():
            raise ExportError("blendshapes: deltas are not finite")
        names += list(rig.blendshape_names)
        arrays.append(bs.astype(np.float32, copy=False))
    for name, d in (extra_shapes or {}).items():
        d = np.asarray(d)
        if not isinstance(name, str) or not name:
            raise ExportError(f"extra_shapes: names must be non-empty strings, got {name!r}")
        if d.shape != (nv, 3) or not np.isfinite(d).all():
            raise ExportError(f"extra_shapes[{name!r}]: expected finite deltas of shape ({nv}, 3), got {d.shape}")
        names.append(name)
        arrays.append(d.astype(np.float32)[None])
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ExportError(f"morph target names repeat: {dup}")
    deltas = np.concatenate(arrays) if arrays else np.zeros((0, nv, 3), np.float32)
    return tuple(names), deltas


def _skin_attributes(joints: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ([V, 4] uint8 joints, [V, 4] float32 weights) as glTF wants them.

    Weights are renormalised in float64 and the float32 rounding error is folded
    into each row's largest weight, so rows sum to 1 to float32 precision;
    slots with zero weight point at joint 0.
    """
    joints = np.asarray(joints).astype(np.uint8)
    w = np.asarray(weights, np.float64)
    w = w / w.sum(1, keepdims=True)
    w32 = w.astype(np.float32)
    top = np.argmax(w32, axis=1)
    rows = np.arange(len(w32))
    w32[rows, top] += (1.0 - w32.astype(np.float64).sum(1)).astype(np.float32)
    joints[w32 == 0] = 0
    return joints, w32


def _skeleton(b: _Builder, skeleton) -> int:
    """Append one node per joint and the skin; return the root joint's node index."""
    gltf = b.gltf
    pos = np.asarray(skeleton.positions, np.float64)
    par = np.asarray(skeleton.parents)
    offset = len(gltf.nodes)
    world = np.zeros_like(pos)
    for j, name in enumerate(skeleton.names):
        local = pos[j] - (pos[par[j]] if par[j] >= 0 else 0.0)
        local32 = local.astype(np.float32)
        # World position as an importer composes it from the float32 translations.
        world[j] = local32.astype(np.float64) + (world[par[j]] if par[j] >= 0 else 0.0)
        gltf.nodes.append(gl.Node(name=name, translation=[float(x) for x in local32]))
    for j in range(len(skeleton.names)):
        if par[j] >= 0:
            gltf.nodes[par[j] + offset].children.append(j + offset)
    ibm = np.tile(np.eye(4), (len(pos), 1, 1))
    ibm[:, :3, 3] = -world
    # glTF matrices are column-major: store the transpose of each row-major matrix.
    ibm_cols = np.ascontiguousarray(ibm.transpose(0, 2, 1).reshape(-1, 16), np.float32)
    acc = b.accessor(ibm_cols, gl.MAT4, gl.FLOAT)
    gltf.skins.append(gl.Skin(name="skeleton", joints=[j + offset for j in range(len(pos))],
                              inverseBindMatrices=acc, skeleton=offset))
    return offset


def _materials(b: _Builder, textures: dict[str, np.ndarray], names: list[str]) -> dict[str, int]:
    gltf = b.gltf
    gltf.samplers.append(gl.Sampler(magFilter=gl.LINEAR, minFilter=gl.LINEAR_MIPMAP_LINEAR,
                                    wrapS=gl.CLAMP_TO_EDGE, wrapT=gl.CLAMP_TO_EDGE))
    out = {}

    def add_texture(key: str) -> int:
        img = np.ascontiguousarray(np.asarray(textures[key]))
        gltf.images.append(gl.Image(name=key, bufferView=b.view(png_bytes(img)), mimeType="image/png"))
        gltf.textures.append(gl.Texture(sampler=0, source=len(gltf.images) - 1, name=key))
        return len(gltf.textures) - 1

    for name in names:
        style = _MATERIAL_STYLE.get(name, _DEFAULT_STYLE)
        pbr = gl.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=style["roughness"])
        if name in textures:
            pbr.baseColorTexture = gl.TextureInfo(index=add_texture(name))
            pbr.baseColorFactor = [1.0, 1.0, 1.0, 1.0]
        else:
            pbr.baseColorFactor = [float(c) for c in style["colour"]]
        mat = gl.Material(name=name, pbrMetallicRoughness=pbr, doubleSided=style.get("double_sided", False),
                          alphaMode=style.get("alpha", gl.OPAQUE))
        if f"{name}_normal" in textures:
            mat.normalTexture = gl.NormalMaterialTexture(index=add_texture(f"{name}_normal"), scale=1.0)
        if f"{name}_orm" in textures:
            orm = add_texture(f"{name}_orm")
            pbr.metallicRoughnessTexture = gl.TextureInfo(index=orm)
            pbr.roughnessFactor = 1.0  # the texture's G channel is the roughness
            mat.occlusionTexture = gl.OcclusionTextureInfo(index=orm, strength=1.0)
        gltf.materials.append(mat)
        out[name] = len(gltf.materials) - 1
    return out


HAIR_NAME = "hair"
HAIR_ALPHA_CUTOFF = 0.5


def _add_hair(b: _Builder, hair, texture: np.ndarray | None) -> None:
    """Append the hair cards as mesh and node "hair" (skin 0) with an alpha-tested, double-sided material."""
    gltf = b.gltf
    pos = np.ascontiguousarray(hair.positions, np.float32)
    tri = np.asarray(hair.triangles)
    if pos.ndim != 2 or pos.shape[1] != 3 or not np.isfinite(pos).all() or tri.size == 0 \
            or tri.min() < 0 or tri.max() >= len(pos):
        raise ExportError(f"hair: expected finite [N, 3] positions and triangles indexing them, got {pos.shape}")
    if texture is None or np.asarray(texture).ndim != 3 or np.asarray(texture).shape[2] != 4 \
            or np.asarray(texture).dtype != np.uint8:
        raise ExportError("hair: the strand atlas must be a uint8 [H, W, 4] texture")
    joints, weights = _skin_attributes(hair.joints, hair.weights)
    nrm = np.asarray(hair.normals, np.float32)
    nrm = nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
    attrs = gl.Attributes(
        POSITION=b.accessor(pos, gl.VEC3, gl.FLOAT, target=gl.ARRAY_BUFFER, minmax=True),
        NORMAL=b.accessor(nrm, gl.VEC3, gl.FLOAT, target=gl.ARRAY_BUFFER),
        TEXCOORD_0=b.accessor(np.asarray(hair.uv, np.float32), gl.VEC2, gl.FLOAT, target=gl.ARRAY_BUFFER),
        JOINTS_0=b.accessor(joints, gl.VEC4, gl.UNSIGNED_BYTE, target=gl.ARRAY_BUFFER),
        WEIGHTS_0=b.accessor(weights, gl.VEC4, gl.FLOAT, target=gl.ARRAY_BUFFER),
    )
    if len(pos) <= 0xFFFF:
        idx, ctype = tri.astype(np.uint16), gl.UNSIGNED_SHORT
    else:
        idx, ctype = tri.astype(np.uint32), gl.UNSIGNED_INT
    indices = b.accessor(idx.reshape(-1), gl.SCALAR, ctype, target=gl.ELEMENT_ARRAY_BUFFER)
    gltf.images.append(gl.Image(name=HAIR_NAME, bufferView=b.view(png_bytes(np.ascontiguousarray(texture))),
                                mimeType="image/png"))
    gltf.textures.append(gl.Texture(sampler=0, source=len(gltf.images) - 1, name=HAIR_NAME))
    pbr = gl.PbrMetallicRoughness(metallicFactor=0.0, roughnessFactor=0.55, baseColorFactor=[1.0, 1.0, 1.0, 1.0],
                                  baseColorTexture=gl.TextureInfo(index=len(gltf.textures) - 1))
    gltf.materials.append(gl.Material(name=HAIR_NAME, pbrMetallicRoughness=pbr, doubleSided=True,
                                      alphaMode=gl.MASK, alphaCutoff=HAIR_ALPHA_CUTOFF))
    gltf.meshes.append(gl.Mesh(name=HAIR_NAME, primitives=[gl.Primitive(
        attributes=attrs, indices=indices, material=len(gltf.materials) - 1, mode=gl.TRIANGLES)]))
    gltf.nodes.append(gl.Node(name=HAIR_NAME, mesh=len(gltf.meshes) - 1, skin=0))


def _json_safe(obj):
    """Convert ``obj`` to JSON-compatible values (:func:`avatarsdk.files.json_safe`; past depth 20, its str()).

    pygltflib then drops None values and empty lists/dicts from the JSON.
    """
    return json_safe(obj, max_depth=20, strict=False)

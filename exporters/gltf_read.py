"""Read back the meshes of a .glb (ours or any skinned/morphed glTF 2.0 binary).

Used by ``avatarsdk info`` and ``avatarsdk render FILE.glb`` and by tests; it
reads accessors (dense and sparse), morph targets with ``extras.targetNames``,
materials and embedded PNG/JPEG textures. Node transforms are applied so a
file from any tool renders in place.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import pygltflib as gl
from PIL import Image
from pygltflib import GLTF2

from avatarsdk.errors import InputError
from avatarsdk.exporters.gltf import (
    HAIR_NAME, ICT_VERTEX_ATTRIBUTE, _DEFAULT_STYLE, _MATERIAL_STYLE, _check, _json_safe, primitives, vertex_normals,
    vertex_tangents,
)

MAX_GLB_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, eq=False)
class Primitive:
    """One triangle primitive of a glTF mesh, in scene (world) space.

    Attributes:
        positions: [N, 3] float32 metres.
        triangles: [M, 3] int64 indices into ``positions``.
        uv: [N, 2] float32 TEXCOORD_0 (zeros if absent), glTF convention.
        targets: [K, N, 3] float32 morph POSITION deltas (K may be 0).
        material: material name ("" if none).
        base_color: (r, g, b, a) linear baseColorFactor.
        texture: [H, W, 4] uint8 sRGB(A) base colour texture, or None.
        alpha_mode: "OPAQUE", "MASK" or "BLEND".
        normal_texture: [H, W, 3] uint8 tangent-space normal map (normalTexture), or None.
        occlusion: [H, W] uint8 ambient occlusion (R of occlusionTexture), or None.
        tangents: [N, 4] float32 TANGENT (xyz in world space, w handedness), or None.
    """

    positions: np.ndarray
    triangles: np.ndarray
    uv: np.ndarray
    targets: np.ndarray
    material: str
    base_color: tuple[float, float, float, float]
    texture: np.ndarray | None
    alpha_mode: str
    normal_texture: np.ndarray | None = None
    occlusion: np.ndarray | None = None
    tangents: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class GlbMesh:
    """All triangle primitives of a .glb plus the names that drive them.

    Attributes:
        primitives: the primitives of every mesh instanced in the default scene.
        target_names: morph target names of the (first) morphed mesh.
        joint_names: node names of the first skin's joints.
        images: (width, height) of every image.
    """

    primitives: tuple[Primitive, ...]
    target_names: tuple[str, ...]
    joint_names: tuple[str, ...]
    images: tuple[tuple[int, int], ...]


def _node_matrices(g: GLTF2) -> dict[int, np.ndarray]:
    """World matrices of every node reachable from the default scene."""
    out: dict[int, np.ndarray] = {}

    def local(n) -> np.ndarray:
        if n.matrix is not None:
            return np.array(n.matrix, np.float64).reshape(4, 4).T
        t = np.eye(4)
        if n.translation is not None:
            t[:3, 3] = n.translation
        r = np.eye(4)
        if n.rotation is not None:
            x, y, z, w = n.rotation
            r[:3, :3] = [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        s = np.eye(4)
        if n.scale is not None:
            s[0, 0], s[1, 1], s[2, 2] = n.scale
        return t @ r @ s

    def visit(i: int, parent: np.ndarray) -> None:
        m = parent @ local(g.nodes[i])
        out[i] = m
        for c in g.nodes[i].children or []:
            visit(c, m)

    scene = g.scenes[g.scene or 0] if g.scenes else None
    for root in (scene.nodes if scene else range(len(g.nodes))):
        visit(root, np.eye(4))
    return out


def load_glb(data: bytes) -> GlbMesh:
    """Parse a .glb into world-space triangle primitives.

    Args:
        data: the bytes of a binary glTF 2.0 file.

    Returns:
        GlbMesh; skinned meshes are returned in bind pose (joints not applied),
        which is what glTF's skinned mesh node transform rule prescribes.

    Raises:
        InputError: not a glTF binary, too large, or a primitive we cannot read.
    """
    if len(data) > MAX_GLB_BYTES:
        raise InputError(f"glb is {len(data)} bytes, limit {MAX_GLB_BYTES}")
    if data[:4] != b"glTF":
        raise InputError("not a binary glTF file (missing 'glTF' magic)")
    try:
        g = GLTF2.load_from_bytes(data)
        blob = g.binary_blob() or b""
    except Exception as e:  # pygltflib raises assorted errors on malformed input
        raise InputError(f"unreadable glb: {e}") from None
    images: list[np.ndarray] = []
    for im in g.images:
        view = g.bufferViews[im.bufferView]
        raw = blob[(view.byteOffset or 0): (view.byteOffset or 0) + view.byteLength]
        images.append(np.asarray(Image.open(io.BytesIO(raw)).convert("RGBA")))
    world = _node_matrices(g)
    prims: list[Primitive] = []
    target_names: tuple[str, ...] = ()
    try:
        for ni, m in world.items():
            node = g.nodes[ni]
            if node.mesh is None:
                continue
            mesh = g.meshes[node.mesh]
            if not target_names and mesh.extras and "targetNames" in mesh.extras:
                target_names = tuple(mesh.extras["targetNames"])
            # glTF: a skinned mesh's node transform is ignored.
            m = np.eye(4) if node.skin is not None else m
            for p in mesh.primitives:
                if p.mode not in (None, 4):
                    continue
                pos = _read_accessor(g, blob, p.attributes.POSITION).astype(np.float64)
                n = len(pos)
                tri = (_read_accessor(g, blob, p.indices).astype(np.int64).reshape(-1, 3)
                       if p.indices is not None else np.arange(n).reshape(-1, 3))
                uv = (_read_accessor(g, blob, p.attributes.TEXCOORD_0).astype(np.float32)
                      if p.attributes.TEXCOORD_0 is not None else np.zeros((n, 2), np.float32))
                targets = np.stack([_read_accessor(g, blob, t["POSITION"]) for t in (p.targets or [])]) \
                    if p.targets else np.zeros((0, n, 3), np.float32)
                lin = m[:3, :3]
                pos = pos @ lin.T + m[:3, 3]
                targets = targets @ lin.T
                name, color, tex, mode = "", (1.0, 1.0, 1.0, 1.0), None, "OPAQUE"
                ntex = occ = tan = None
                if p.attributes.TANGENT is not None:
                    tan = _read_accessor(g, blob, p.attributes.TANGENT).astype(np.float64)
                    tan = np.concatenate([tan[:, :3] @ lin.T, tan[:, 3:4]], 1).astype(np.float32)
                if p.material is not None:
                    mat = g.materials[p.material]
                    name, mode = mat.name or "", mat.alphaMode or "OPAQUE"
                    pbr = mat.pbrMetallicRoughness
                    if pbr is not None:
                        color = tuple(pbr.baseColorFactor or (1.0, 1.0, 1.0, 1.0))
                        if pbr.baseColorTexture is not None:
                            tex = images[g.textures[pbr.baseColorTexture.index].source]
                    if mat.normalTexture is not None:
                        ntex = images[g.textures[mat.normalTexture.index].source][..., :3]
                    if mat.occlusionTexture is not None:
                        occ = images[g.textures[mat.occlusionTexture.index].source][..., 0]
                prims.append(Primitive(pos.astype(np.float32), tri, uv, targets.astype(np.float32),
                                       name, color, tex, mode, ntex, occ, tan))
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"glb has a primitive we cannot read: {e}") from None
    joints = tuple(g.nodes[j].name or f"joint{j}" for j in g.skins[0].joints) if g.skins else ()
    sizes = tuple((int(im.shape[1]), int(im.shape[0])) for im in images)
    return GlbMesh(tuple(prims), target_names, joints, sizes)


def avatar_mesh(avatar, *, extra_shapes: dict | None = None, morph_epsilon: float = 1e-5,
                targets: bool = True, hair=None, hair_texture: np.ndarray | None = None) -> GlbMesh:
    """What ``load_glb(to_glb(avatar, ...))`` returns, built from the avatar without encoding or parsing.

    The same welded primitives (:func:`avatarsdk.exporters.gltf.primitives`),
    materials, morph targets (deltas of at most ``morph_epsilon`` zeroed, as
    stored) and RGBA textures as the file holds; a preview renders from it
    without the ~0.3 s of CPU that writing and parsing the glTF JSON cost.
    Equal to the parsed file (tested), except that a -0.0 may stay -0.0.

    Args:
        avatar: the avatar.
        extra_shapes, morph_epsilon: as for :func:`avatarsdk.exporters.gltf.to_glb`.
        targets: False leaves every primitive's ``targets`` empty ([0, N, 3]; the
            names stay): enough for a render at rest, which never reads them.
        hair, hair_texture: as for :func:`~avatarsdk.exporters.gltf.to_glb` (the hair cards and their
            strand atlas), appended as the file's last primitive "hair" (alpha-tested).

    Raises:
        ExportError: what :func:`~avatarsdk.exporters.gltf.to_glb` would raise.
    """
    names, deltas = _check(avatar, "all", extra_shapes, morph_epsilon)
    vertices = np.asarray(avatar.vertices, np.float32)
    prims, sizes = [], []
    normals = None
    for p in primitives(avatar.topology):
        vm = p.vertex_map
        if targets:
            d = deltas[:, vm]  # [K, n, 3]
            moved = np.abs(d).max(axis=2) > morph_epsilon
            morphs = np.where(moved[..., None], d, np.float32(0.0)).astype(np.float32, copy=False)
        else:
            morphs = np.zeros((0, len(vm), 3), np.float32)
        style = _MATERIAL_STYLE.get(p.material, _DEFAULT_STYLE)
        tex, color = None, tuple(float(c) for c in style["colour"])
        if p.material in avatar.textures:
            tex = np.asarray(Image.fromarray(np.ascontiguousarray(avatar.textures[p.material])).convert("RGBA"))
            color = (1.0, 1.0, 1.0, 1.0)
            sizes.append((int(tex.shape[1]), int(tex.shape[0])))
        # The PBR maps, in the order to_glb adds their images: normal map, then ORM.
        ntex = occ = tan = None
        if f"{p.material}_normal" in avatar.textures:
            ntex = np.asarray(Image.fromarray(np.ascontiguousarray(avatar.textures[f"{p.material}_normal"]))
                              .convert("RGBA"))[..., :3]
            sizes.append((int(ntex.shape[1]), int(ntex.shape[0])))
            if normals is None:
                normals = vertex_normals(vertices, avatar.topology.triangles)
            tan = vertex_tangents(vertices[vm], normals[vm], p.uv, p.indices)
        if f"{p.material}_orm" in avatar.textures:
            orm = np.asarray(avatar.textures[f"{p.material}_orm"])
            occ = np.ascontiguousarray(orm[..., 0])
            sizes.append((int(orm.shape[1]), int(orm.shape[0])))
        # to_glb writes TEXCOORD_0 only for textured materials; load_glb reads zeros without it.
        uv = p.uv.astype(np.float32) if tex is not None else np.zeros((len(vm), 2), np.float32)
        prims.append(Primitive(vertices[vm], p.indices.astype(np.int64), uv, morphs,
                               p.material, color, tex, style.get("alpha", gl.OPAQUE), ntex, occ, tan))
    if hair is not None:  # to_glb checks the cards and atlas; here they are the ones to_glb was given
        atlas = np.ascontiguousarray(hair_texture, np.uint8)
        sizes.append((int(atlas.shape[1]), int(atlas.shape[0])))
        pos = np.asarray(hair.positions, np.float32)
        prims.append(Primitive(pos, np.asarray(hair.triangles).astype(np.int64), np.asarray(hair.uv, np.float32),
                               np.zeros((0, len(pos), 3), np.float32), HAIR_NAME, (1.0, 1.0, 1.0, 1.0), atlas,
                               gl.MASK))
    return GlbMesh(tuple(prims), tuple(names), tuple(avatar.rig.skeleton.names), tuple(sizes))


# ---------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------

def read_glb_summary(data: bytes) -> dict:
    """Summarise a .glb file (ours or another exporter's) for ``avatarsdk info``.

    Args:
        data: the file contents.

    Returns:
        A JSON-serialisable dict::

            {"generator": str, "bytes": int, "vertices": int, "triangles": int,
             "primitives": [{"material": str|None, "vertices": int, "triangles": int,
                             "morph_targets": int, "ict_vertices": int|None}],
             "materials": [{"name", "alpha_mode", "double_sided", "texture": int|None}],
             "morph_targets": [str], "joints": [str],
             "textures": [{"name", "mime_type", "width", "height", "bytes"}],
             "extras": dict}

        ``ict_vertices`` counts distinct ICT vertices when the primitive has our
        ``_ICT_VERTEX`` attribute.

    Raises:
        InputError: ``data`` is not a readable binary glTF 2.0 file.
    """
    if not isinstance(data, (bytes, bytearray)) or len(data) < 20 or data[:4] != b"glTF":
        raise InputError("not a binary glTF file (missing 'glTF' header)")
    version, length = struct.unpack_from("<II", data, 4)
    if version != 2 or length > len(data):
        raise InputError(f"unsupported or truncated GLB: version {version}, {length} bytes declared, {len(data)} read")
    try:
        gltf = gl.GLTF2.load_from_bytes(bytes(data))
        blob = gltf.binary_blob() or b""
    except Exception as exc:  # pygltflib raises assorted errors on corrupt input
        raise InputError(f"unreadable glTF binary: {exc}") from exc

    def accessor_data(index: int) -> np.ndarray:
        return _read_accessor(gltf, blob, index)

    prims = []
    target_names: list[str] = []
    for mesh in gltf.meshes:
        extras = mesh.extras or {}
        if isinstance(extras.get("targetNames"), list):
            target_names = [str(n) for n in extras["targetNames"]]
        for p in mesh.primitives:
            pos = p.attributes.POSITION
            n = gltf.accessors[pos].count if pos is not None else 0
            tris = (gltf.accessors[p.indices].count if p.indices is not None else n) // 3
            ict_index = getattr(p.attributes, ICT_VERTEX_ATTRIBUTE, None)
            ict = None
            if ict_index is not None:
                try:
                    ict = int(len(np.unique(accessor_data(ict_index))))
                except InputError:
                    ict = None
            mat = gltf.materials[p.material].name if p.material is not None and p.material < len(gltf.materials) else None
            prims.append({"material": mat, "vertices": int(n), "triangles": int(tris),
                          "morph_targets": len(p.targets or []), "ict_vertices": ict})

    textures = []
    for tex in gltf.textures:
        entry = {"name": tex.name, "mime_type": None, "width": None, "height": None, "bytes": None}
        if tex.source is not None and tex.source < len(gltf.images):
            image = gltf.images[tex.source]
            entry["mime_type"] = image.mimeType
            if image.bufferView is not None:
                bv = gltf.bufferViews[image.bufferView]
                raw = blob[(bv.byteOffset or 0): (bv.byteOffset or 0) + bv.byteLength]
                entry["bytes"] = len(raw)
                try:
                    with Image.open(io.BytesIO(raw)) as im:
                        entry["width"], entry["height"] = im.size
                except Exception:  # an undecodable image is reported as size None
                    pass
        textures.append(entry)

    materials = []
    for m in gltf.materials:
        pbr = m.pbrMetallicRoughness
        tex = pbr.baseColorTexture.index if pbr is not None and pbr.baseColorTexture is not None else None
        materials.append({"name": m.name, "alpha_mode": m.alphaMode or "OPAQUE",
                          "double_sided": bool(m.doubleSided), "texture": tex})

    joints = []
    if gltf.skins:
        joints = [gltf.nodes[j].name for j in gltf.skins[0].joints]
    return {
        "generator": gltf.asset.generator if gltf.asset else None,
        "bytes": len(data),
        "vertices": sum(p["vertices"] for p in prims),
        "triangles": sum(p["triangles"] for p in prims),
        "primitives": prims,
        "materials": materials,
        "morph_targets": target_names,
        "joints": joints,
        "textures": textures,
        "extras": _json_safe((gltf.asset.extras if gltf.asset else None) or {}),
    }


_NUMPY_COMPONENT = {gl.BYTE: np.int8, gl.UNSIGNED_BYTE: np.uint8, gl.SHORT: np.int16,
                    gl.UNSIGNED_SHORT: np.uint16, gl.UNSIGNED_INT: np.uint32, gl.FLOAT: np.float32}
_NUM_COMPONENTS = {gl.SCALAR: 1, gl.VEC2: 2, gl.VEC3: 3, gl.VEC4: 4, gl.MAT2: 4, gl.MAT3: 9, gl.MAT4: 16}


def _read_view(gltf: gl.GLTF2, blob: bytes, view: int, offset: int, dtype, count: int, width: int) -> np.ndarray:
    bv = gltf.bufferViews[view]
    item = np.dtype(dtype).itemsize * width
    stride = bv.byteStride or item
    start = (bv.byteOffset or 0) + (offset or 0)
    end = start + stride * (count - 1) + item if count else start
    if end > len(blob) or end - (bv.byteOffset or 0) > bv.byteLength:
        raise InputError(f"accessor data runs past bufferView {view}")
    raw = np.frombuffer(blob, np.uint8, count=end - start, offset=start) if count else np.zeros(0, np.uint8)
    if stride == item:
        return np.frombuffer(raw.tobytes(), dtype).reshape(count, width)
    rows = np.lib.stride_tricks.as_strided(raw, shape=(count, item), strides=(stride, 1))
    return np.frombuffer(rows.tobytes(), dtype).reshape(count, width)


def _read_accessor(gltf: gl.GLTF2, blob: bytes, index: int) -> np.ndarray:
    """Read accessor ``index`` as a [count, components] array (sparse values applied)."""
    acc = gltf.accessors[index]
    dtype = _NUMPY_COMPONENT.get(acc.componentType)
    width = _NUM_COMPONENTS.get(acc.type)
    if dtype is None or width is None:
        raise InputError(f"accessor {index}: unsupported type {acc.type}/{acc.componentType}")
    if acc.bufferView is None:
        out = np.zeros((acc.count, width), dtype)
    else:
        out = _read_view(gltf, blob, acc.bufferView, acc.byteOffset, dtype, acc.count, width).copy()
    if acc.sparse is not None and acc.sparse.count:
        s = acc.sparse
        idx = _read_view(gltf, blob, s.indices.bufferView, s.indices.byteOffset,
                         _NUMPY_COMPONENT[s.indices.componentType], s.count, 1)[:, 0]
        vals = _read_view(gltf, blob, s.values.bufferView, s.values.byteOffset, dtype, s.count, width)
        if idx.size and idx.max() >= acc.count:
            raise InputError(f"accessor {index}: sparse index out of range")
        out[idx.astype(np.int64)] = vals
    if acc.normalized and np.issubdtype(out.dtype, np.integer):
        out = out.astype(np.float32) / np.iinfo(out.dtype).max
    return out


def read_accessor(data: bytes, index: int) -> np.ndarray:
    """Read one accessor of a .glb as a [count, components] array, sparse values applied.

    Args:
        data: the .glb file contents.
        index: accessor index.

    Raises:
        InputError: unreadable file or accessor.
    """
    try:
        gltf = gl.GLTF2.load_from_bytes(bytes(data))
        blob = gltf.binary_blob() or b""
    except Exception as exc:
        raise InputError(f"unreadable glTF binary: {exc}") from exc
    if not 0 <= index < len(gltf.accessors):
        raise InputError(f"accessor {index} out of range [0, {len(gltf.accessors)})")
    return _read_accessor(gltf, blob, index)

"""Read back the meshes of a .glb (ours or any skinned/morphed glTF 2.0 binary).

Used by ``avatarsdk info`` and ``avatarsdk render FILE.glb`` and by tests; it
reads accessors (dense and sparse), morph targets with ``extras.targetNames``,
materials and embedded PNG/JPEG textures. Node transforms are applied so a
file from any tool renders in place.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pygltflib import GLTF2

from avatarsdk.errors import InputError

_COMPONENT = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
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
    """

    positions: np.ndarray
    triangles: np.ndarray
    uv: np.ndarray
    targets: np.ndarray
    material: str
    base_color: tuple[float, float, float, float]
    texture: np.ndarray | None
    alpha_mode: str


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


def _accessor(g: GLTF2, blob: bytes, index: int) -> np.ndarray:
    acc = g.accessors[index]
    dtype = np.dtype(_COMPONENT[acc.componentType]).newbyteorder("<")
    width = _WIDTH[acc.type]
    out = np.zeros((acc.count, width), dtype)
    if acc.bufferView is not None:
        view = g.bufferViews[acc.bufferView]
        start = (view.byteOffset or 0) + (acc.byteOffset or 0)
        stride = view.byteStride or dtype.itemsize * width
        raw = np.frombuffer(blob, np.uint8, count=stride * (acc.count - 1) + dtype.itemsize * width, offset=start)
        rows = np.lib.stride_tricks.as_strided(raw, (acc.count, dtype.itemsize * width), (stride, 1))
        out = np.ascontiguousarray(rows).view(dtype).reshape(acc.count, width).copy()
    if acc.sparse is not None:
        sp = acc.sparse
        iv = g.bufferViews[sp.indices.bufferView]
        idt = np.dtype(_COMPONENT[sp.indices.componentType]).newbyteorder("<")
        idx = np.frombuffer(blob, idt, sp.count, (iv.byteOffset or 0) + (sp.indices.byteOffset or 0))
        vv = g.bufferViews[sp.values.bufferView]
        val = np.frombuffer(blob, dtype, sp.count * width, (vv.byteOffset or 0) + (sp.values.byteOffset or 0))
        out[idx.astype(np.int64)] = val.reshape(-1, width)
    if acc.normalized and np.issubdtype(dtype, np.integer):
        out = out.astype(np.float32) / np.iinfo(dtype).max
    return out


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
                pos = _accessor(g, blob, p.attributes.POSITION).astype(np.float64)
                n = len(pos)
                tri = (_accessor(g, blob, p.indices).astype(np.int64).reshape(-1, 3)
                       if p.indices is not None else np.arange(n).reshape(-1, 3))
                uv = (_accessor(g, blob, p.attributes.TEXCOORD_0).astype(np.float32)
                      if p.attributes.TEXCOORD_0 is not None else np.zeros((n, 2), np.float32))
                targets = np.stack([_accessor(g, blob, t["POSITION"]) for t in (p.targets or [])]) \
                    if p.targets else np.zeros((0, n, 3), np.float32)
                lin = m[:3, :3]
                pos = pos @ lin.T + m[:3, 3]
                targets = targets @ lin.T
                name, color, tex, mode = "", (1.0, 1.0, 1.0, 1.0), None, "OPAQUE"
                if p.material is not None:
                    mat = g.materials[p.material]
                    name, mode = mat.name or "", mat.alphaMode or "OPAQUE"
                    pbr = mat.pbrMetallicRoughness
                    if pbr is not None:
                        color = tuple(pbr.baseColorFactor or (1.0, 1.0, 1.0, 1.0))
                        if pbr.baseColorTexture is not None:
                            tex = images[g.textures[pbr.baseColorTexture.index].source]
                prims.append(Primitive(pos.astype(np.float32), tri, uv, targets.astype(np.float32),
                                       name, color, tex, mode))
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"glb has a primitive we cannot read: {e}") from None
    joints = tuple(g.nodes[j].name or f"joint{j}" for j in g.skins[0].joints) if g.skins else ()
    sizes = tuple((int(im.shape[1]), int(im.shape[0])) for im in images)
    return GlbMesh(tuple(prims), target_names, joints, sizes)

"""A .glb that follows Ready Player Me's avatar conventions for a head (``--preset rpm``).

Ready Player Me (RPM) shut down its service on 31 January 2026; apps built on
it look up meshes, bones and morph targets by RPM's names. This writer gives
our head those names so such code finds what it looks for:

* **Meshes** (one node, one mesh, one primitive each, so three.js makes each a
  ``SkinnedMesh`` and ``nodes.Wolf3D_Head.geometry`` works): ``Wolf3D_Head``
  (material ``Wolf3D_Skin``), ``Wolf3D_Teeth`` (``Wolf3D_Teeth``; teeth, gums
  and tongue), ``EyeLeft`` and ``EyeRight`` (both ``Wolf3D_Eye``), plus two of
  ours that RPM heads do not have: ``Wolf3D_Eyelashes`` and ``Wolf3D_EyeWet``
  (the tear film). RPM's Unity SDK renames ``Wolf3D_X`` to ``Renderer_X`` and
  keeps ``EyeLeft``/``EyeRight`` as ``Renderer_EyeLeft``/``Renderer_EyeRight``.
* **Morph targets**, the same 72 on every mesh, named in ``mesh.extras.targetNames``:
  the 52 ARKit names, the 15 Oculus visemes ``viseme_sil`` ... ``viseme_U`` and
  RPM's five "Default" targets ``mouthOpen``, ``mouthSmile``, ``eyesClosed``,
  ``eyesLookUp``, ``eyesLookDown`` (RPM's Unity VoiceHandler drives ``mouthOpen``).
* **Bones**, RPM's half-body chain with Mixamo names: ``Armature`` (a plain
  node) > ``Hips`` > ``Spine`` > ``Neck`` > ``Head`` > ``LeftEye``, ``RightEye``,
  ``HeadTop_End``; so RPM's ``Armature/Hips/Spine/Neck/Head/LeftEye`` path
  resolves. RPM has no jaw bone (its mouth is all morph targets); ours is kept
  as ``Jaw``, an extra leaf under ``Head``.

Units and axes are glTF's (metres, +Y up, face along +Z), as RPM's glbs.
Sources (read to learn the names; nothing copied) are in the README's
"Ready Player Me preset" section.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pygltflib as gl

from avatarsdk.errors import ExportError
from avatarsdk.exporters.gltf import to_glb
from avatarsdk.rigs.model import ARKIT_NAMES
from avatarsdk.rigs.visemes import viseme_shapes
from avatarsdk.datatypes import JOINT_NAMES, Avatar, Rig, Skeleton

__all__ = [
    "RPM_BONES", "RPM_DEFAULT_TARGETS", "RPM_MATERIALS", "RPM_MESHES", "RPM_MORPH_TARGETS", "RPM_VISEMES",
    "rpm_mapping", "rpm_rig", "rpm_shapes", "to_rpm_glb",
]

RPM_VISEMES: tuple[str, ...] = (
    "viseme_sil", "viseme_PP", "viseme_FF", "viseme_TH", "viseme_DD", "viseme_kk", "viseme_CH", "viseme_SS",
    "viseme_nn", "viseme_RR", "viseme_aa", "viseme_E", "viseme_I", "viseme_O", "viseme_U",
)
"""RPM's 15 viseme morph targets, in Oculus Lipsync's order (the order of
:func:`avatarsdk.rigs.visemes.viseme_shapes`)."""

RPM_DEFAULT_TARGETS: dict[str, dict[str, float]] = {
    "mouthOpen": {"jawOpen": 1.0},
    "mouthSmile": {"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0},
    "eyesClosed": {"eyeBlinkLeft": 1.0, "eyeBlinkRight": 1.0},
    "eyesLookUp": {"eyeLookUpLeft": 1.0, "eyeLookUpRight": 1.0},
    "eyesLookDown": {"eyeLookDownLeft": 1.0, "eyeLookDownRight": 1.0},
}
"""RPM's "Default" morph targets as sums of ARKit shapes (name -> {ARKit name: weight})."""

RPM_MORPH_TARGETS: tuple[str, ...] = tuple(ARKIT_NAMES) + RPM_VISEMES + tuple(RPM_DEFAULT_TARGETS)
"""The 72 morph target names of an rpm .glb, in file order."""

RPM_MESHES: dict[str, tuple[str, ...]] = {
    "skin": ("Wolf3D_Head",),
    "teeth": ("Wolf3D_Teeth",),
    "eyes": ("EyeLeft", "EyeRight"),  # split by side: +X is the avatar's left
    "eyelashes": ("Wolf3D_Eyelashes",),  # not in RPM heads
    "eye_wet": ("Wolf3D_EyeWet",),  # not in RPM heads
}
"""Our material -> the node/mesh name(s) it becomes."""

RPM_MATERIALS: dict[str, str] = {
    "skin": "Wolf3D_Skin", "teeth": "Wolf3D_Teeth", "eyes": "Wolf3D_Eye",
    "eyelashes": "Wolf3D_Eyelashes", "eye_wet": "Wolf3D_EyeWet",
}
"""Our material -> RPM's material name."""

RPM_BONES: dict[str, str] = {
    "root": "Hips", "neck": "Neck", "head": "Head", "eye_L": "LeftEye", "eye_R": "RightEye", "jaw": "Jaw",
}
"""Our joint -> the bone it becomes. ``Spine`` and ``HeadTop_End`` are added (no skin weights)."""

# The bone list in file order (parents first) and each bone's parent.
_BONE_ORDER: tuple[tuple[str, str | None], ...] = (
    ("Hips", None), ("Spine", "Hips"), ("Neck", "Spine"), ("Head", "Neck"), ("HeadTop_End", "Head"),
    ("LeftEye", "Head"), ("RightEye", "Head"), ("Jaw", "Head"),
)
ARMATURE = "Armature"


def rpm_shapes(avatar: Avatar) -> dict[str, np.ndarray]:
    """The 20 morph targets an rpm .glb adds after the 52 ARKit shapes: 15 visemes, 5 defaults.

    Args:
        avatar: an avatar whose rig has the 52 ARKit blendshapes.

    Returns:
        name -> [V, 3] float32 deltas in metres, names as in :data:`RPM_MORPH_TARGETS`[52:].

    Raises:
        ExportError: the rig lacks ARKit shapes (an ICT-named rig: build it with names="arkit").
    """
    names = list(avatar.rig.blendshape_names)
    missing = [n for n in ARKIT_NAMES if n not in names]
    if missing:
        raise ExportError(f"the rpm preset needs the 52 ARKit blendshapes; the rig lacks {len(missing)} "
                          f"(e.g. {', '.join(missing[:3])}): build the avatar with names='arkit'")
    shapes = np.asarray(avatar.rig.blendshapes)
    visemes = viseme_shapes(names, shapes)  # 15, in Oculus order whatever our own viseme names are
    out = dict(zip(RPM_VISEMES, visemes.values(), strict=True))
    index = {n: i for i, n in enumerate(names)}
    for name, weights in RPM_DEFAULT_TARGETS.items():
        acc = np.zeros(shapes.shape[1:], np.float64)
        for shape, w in weights.items():
            acc += w * shapes[index[shape]].astype(np.float64)
        out[name] = acc.astype(np.float32)
    return out


def rpm_rig(avatar: Avatar) -> Rig:
    """The avatar's rig with RPM's bone names and chain; skin weights unchanged, joints re-indexed."""
    rig = avatar.rig
    sk = rig.skeleton
    if tuple(sk.names) != JOINT_NAMES:
        raise ExportError(f"the rpm preset needs the SDK skeleton {JOINT_NAMES}, got {tuple(sk.names)}")
    names = [b for b, _ in _BONE_ORDER]
    index = {b: i for i, b in enumerate(names)}
    ours = {n: np.asarray(sk.positions[i], np.float64) for i, n in enumerate(sk.names)}
    pos = {RPM_BONES[n]: p for n, p in ours.items()}
    pos["Spine"] = 0.5 * (ours["root"] + ours["neck"])
    # HeadTop_End: above the head joint at the crown (the highest face or scalp vertex).
    v = np.asarray(avatar.vertices)
    ranges = [r for k, r in avatar.topology.parts.items() if k in ("face", "head_neck")] or [(0, len(v))]
    top_y = float(max(v[a:b, 1].max() for a, b in ranges))
    pos["HeadTop_End"] = np.array([ours["head"][0], top_y, ours["head"][2]])
    positions = np.stack([pos[b] for b in names]).astype(np.float32)
    parents = np.array([-1 if p is None else index[p] for _, p in _BONE_ORDER], np.int32)
    remap = np.array([index[RPM_BONES[n]] for n in sk.names], np.uint8)
    joints = remap[np.asarray(rig.skin_joints).astype(np.int64)]
    skeleton = Skeleton(names=tuple(names), parents=parents, positions=positions)
    return Rig(skeleton=skeleton, skin_joints=joints, skin_weights=rig.skin_weights,
               blendshape_names=rig.blendshape_names, blendshapes=rig.blendshapes)


def to_rpm_glb(avatar: Avatar, *, morph_epsilon: float = 1e-5) -> bytes:
    """Encode an avatar as a .glb with Ready Player Me's mesh, material, bone and morph target names.

    The geometry, skin weights, textures and morph deltas are those of
    :func:`avatarsdk.exporters.gltf.to_glb` (same accessors, bit for bit); only
    the scene is laid out the RPM way (see the module docstring).

    Args:
        avatar: the avatar; its rig must have the 52 ARKit blendshapes.
        morph_epsilon: as :func:`~avatarsdk.exporters.gltf.to_glb`.

    Returns:
        The .glb file contents.

    Raises:
        ExportError: an ICT-named rig, a skeleton other than the SDK's, or
            anything :func:`~avatarsdk.exporters.gltf.to_glb` refuses.
    """
    extra = rpm_shapes(avatar)
    rpm_avatar = dataclasses.replace(avatar, rig=rpm_rig(avatar))
    g = gl.GLTF2.load_from_bytes(to_glb(rpm_avatar, extra_shapes=extra, morph_epsilon=morph_epsilon))
    blob = bytearray(g.binary_blob())
    for acc in g.accessors:  # pygltflib reads a missing byteOffset as 0; glTF forbids it without a bufferView
        if acc.bufferView is None:
            acc.byteOffset = None
    (mesh,) = g.meshes
    target_names = list(mesh.extras["targetNames"])
    if tuple(target_names) != RPM_MORPH_TARGETS:
        raise ExportError(f"the rig's ARKit shapes are not in ARKit order: {target_names[:52]}")
    skin_node = g.nodes[0]  # to_glb: node 0 is the mesh, then the joints
    meshes: list[gl.Mesh] = []
    for prim in mesh.primitives:
        material = g.materials[prim.material]
        ours = material.name
        material.name = RPM_MATERIALS.get(ours, f"Wolf3D_{ours}")
        parts = RPM_MESHES.get(ours, (f"Wolf3D_{ours}",))
        if len(parts) == 2:
            left, right = _split_sides(g, blob, prim)
            meshes += [(parts[0], left), (parts[1], right)]
        else:
            meshes.append((parts[0], prim))
    g.meshes = [gl.Mesh(name=name, primitives=[p], weights=[0.0] * len(target_names),
                        extras={"targetNames": target_names}) for name, p in meshes]
    mesh_nodes = []
    for i, (name, _) in enumerate(meshes):
        node = gl.Node(name=name, mesh=i, skin=skin_node.skin)
        if i == 0:
            g.nodes[0] = node  # keep every joint's node index
            mesh_nodes.append(0)
        else:
            g.nodes.append(node)
            mesh_nodes.append(len(g.nodes) - 1)
    hips = g.skins[0].skeleton
    g.nodes.append(gl.Node(name=ARMATURE, children=[hips]))
    g.scenes[0].nodes = mesh_nodes + [len(g.nodes) - 1]
    g.asset.extras.setdefault("avatarsdk", {})["conventions"] = "Ready Player Me (head)"
    g.set_binary_blob(bytes(blob))
    return b"".join(g.save_to_bytes())


def _split_sides(g: gl.GLTF2, blob: bytearray, prim: gl.Primitive) -> tuple[gl.Primitive, gl.Primitive]:
    """Split a primitive into its +X (avatar's left) and -X triangles.

    Both halves keep the vertex accessors; the index buffer is rewritten in
    place, left triangles first, and read by two accessors (no new buffer data).
    """
    acc = g.accessors[prim.indices]
    dtype = {gl.UNSIGNED_SHORT: np.uint16, gl.UNSIGNED_INT: np.uint32}[acc.componentType]
    view = g.bufferViews[acc.bufferView]
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    tri = np.frombuffer(bytes(blob[start:start + acc.count * np.dtype(dtype).itemsize]), dtype).reshape(-1, 3)
    pacc = g.accessors[prim.attributes.POSITION]
    pview = g.bufferViews[pacc.bufferView]
    p0 = (pview.byteOffset or 0) + (pacc.byteOffset or 0)
    pos = np.frombuffer(bytes(blob[p0:p0 + pacc.count * 12]), np.float32).reshape(-1, 3)
    is_left = pos[tri.astype(np.int64)].mean(axis=1)[:, 0] > 0
    if is_left.all() or not is_left.any():
        raise ExportError("eyes: expected triangles on both sides of x = 0")
    ordered = np.concatenate([tri[is_left], tri[~is_left]])
    blob[start:start + ordered.nbytes] = ordered.tobytes()
    n_left = int(is_left.sum()) * 3
    left_acc = dataclasses.replace(acc, count=n_left, min=None, max=None)
    right_acc = dataclasses.replace(acc, byteOffset=(acc.byteOffset or 0) + n_left * np.dtype(dtype).itemsize,
                                    count=acc.count - n_left, min=None, max=None)
    g.accessors[prim.indices] = left_acc
    g.accessors.append(right_acc)
    right = dataclasses.replace(prim, indices=len(g.accessors) - 1)
    return prim, right


def rpm_mapping() -> dict:
    """Our names -> RPM's, for the package manifest and IMPORT.md.

    Returns:
        {"meshes": {material: [node names]}, "materials": {material: name},
        "bones": {joint: bone}, "added_bones": [...], "morph_targets": {"count", "names"},
        "not_covered": [...]}.
    """
    return {
        "meshes": {k: list(v) for k, v in RPM_MESHES.items()},
        "materials": dict(RPM_MATERIALS),
        "bones": dict(RPM_BONES),
        "added_bones": ["Spine (between Hips and Neck)", "HeadTop_End (leaf at the top of the head)"],
        "armature_root_node": ARMATURE,
        "morph_targets": {"count": len(RPM_MORPH_TARGETS), "names": list(RPM_MORPH_TARGETS),
                          "arkit": len(ARKIT_NAMES), "visemes": len(RPM_VISEMES),
                          "defaults": {k: dict(v) for k, v in RPM_DEFAULT_TARGETS.items()}},
        "not_covered": ["body (Wolf3D_Body) and the full-body Mixamo skeleton (arms, hands, legs, Spine1/Spine2)",
                        "outfits (Wolf3D_Outfit_*), hair (Wolf3D_Hair), beard (Wolf3D_Beard), glasses, headwear",
                        "RPM's texture atlas and mesh LOD query options; RPM's A/T-pose animations"],
    }


def rpm_import_md(stem: str) -> str:
    """The IMPORT.md body of an rpm package: how to swap it in, the name map, what it does not cover."""
    arkit = len(ARKIT_NAMES)
    meshes = "\n".join(f"| `{m}` | {', '.join(f'`{n}`' for n in RPM_MESHES[m])} | `{RPM_MATERIALS[m]}` |"
                       for m in RPM_MESHES)
    bones = "\n".join(f"| `{ours}` | `{theirs}` |" for ours, theirs in RPM_BONES.items())
    defaults = "\n".join(f"| `{name}` | {' + '.join(f'{w:g} × `{s}`' for s, w in weights.items())} |"
                         for name, weights in RPM_DEFAULT_TARGETS.items())
    return f"""## Ready Player Me conventions (`{stem}.glb`)

A head in the layout of a Ready Player Me (RPM) avatar .glb, so code written for
RPM avatars finds its meshes, bones and morph targets by the names it expects.
Metres, +Y up, face along +Z (glTF's axes, as RPM's files).

### Swapping it in

- three.js / react-three-fiber: load `{stem}.glb` with `GLTFLoader` (or `useGLTF`)
  where you loaded the RPM url. `nodes.Wolf3D_Head`, `nodes.Wolf3D_Teeth`,
  `nodes.EyeLeft` and `nodes.EyeRight` are `SkinnedMesh`es (one primitive each)
  with `morphTargetDictionary` keyed by the names below; `materials.Wolf3D_Skin`,
  `Wolf3D_Teeth` and `Wolf3D_Eye` exist. Bones: `nodes.Hips`, `Spine`, `Neck`,
  `Head`, `LeftEye`, `RightEye`.
- Unity: import with glTFast (the glTF importer RPM's Unity SDK builds on). Code
  that runs RPM's post-processing gets the names it renames to: the `Wolf3D_` prefix
  becomes `Renderer_` (`Renderer_Head`, `Renderer_Teeth`; the eyes become
  `Renderer_EyeLeft`, `Renderer_EyeRight`), and the eye bones resolve at
  `Armature/Hips/Spine/Neck/Head/LeftEye`, the half-body path its bone helper uses
  when the skeleton has no legs.
- Every mesh carries the same {len(RPM_MORPH_TARGETS)} morph targets, so a lip-sync or
  face-tracking component that sets a weight by name on each mesh works unchanged.

### Names: ours -> RPM's

| our material | RPM node / mesh | RPM material |
|---|---|---|
{meshes}

`Wolf3D_Eyelashes` and `Wolf3D_EyeWet` (the tear film) are ours: RPM heads have no
such meshes. Hide them if your code assumes RPM's exact mesh list.

| our joint | RPM bone |
|---|---|
{bones}

Added: `Armature` (a plain root node above `Hips`), `Spine` (between `Hips` and
`Neck`, no skin weights) and `HeadTop_End` (a leaf at the crown, no skin weights),
as in RPM's skeleton. `Jaw` is ours: RPM (and Mixamo) have no jaw bone; RPM opens
the mouth with morph targets only, and so can you (`jawOpen`, `mouthOpen`).

Morph targets ({len(RPM_MORPH_TARGETS)}):
- the {arkit} ARKit names (`eyeBlinkLeft` ... `tongueOut`), our ARKit blendshapes as they are;
- the {len(RPM_VISEMES)} Oculus visemes {', '.join(f'`{v}`' for v in RPM_VISEMES)}, each a fixed
  sum of ARKit shapes (the table in avatarsdk.rigs.visemes);
- RPM's five "Default" targets, sums of ARKit shapes:

| RPM name | = |
|---|---|
{defaults}

### Not covered

- **Bodies**: no `Wolf3D_Body`, no arms, hands, legs or `Spine1`/`Spine2`; the
  skeleton is RPM's half-body chain, not the full-body Mixamo skeleton, so full-body
  animations (RPM's animation library, Mixamo clips) have nothing to drive below the neck.
- **Outfits and accessories**: no `Wolf3D_Outfit_*`, `Wolf3D_Hair`, `Wolf3D_Beard`,
  `Wolf3D_Glasses`, headwear or facewear meshes. Code that reads
  `nodes.Wolf3D_Hair` must check that it exists.
- RPM's url options (texture atlas, `meshLod`, `textureSizeLimit`, pose): the
  package's `--lods` writes `{stem}_LOD0..2.glb` instead; textures are our own
  (skin albedo, eyes, teeth), no normal, roughness or occlusion maps.
"""

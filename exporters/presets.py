"""The engine presets: one table that the CLI, batch, packages and the FBX writer all read.

A preset says what a package for one target holds and how it is oriented:
model files, units and axes, the FBX exporter settings, whether levels of
detail and visemes are on by default, and how the glb names its nodes. To add
a target, add one :class:`EnginePreset` to :data:`PRESETS` (and an IMPORT.md
section in :mod:`avatarsdk.exporters.package`); ``avatarsdk export --preset``,
``avatarsdk batch --preset`` and :func:`~avatarsdk.exporters.package.export_package`
pick it up from here.

No imports of the writers: :mod:`~avatarsdk.exporters.fbx` and
:mod:`~avatarsdk.exporters.package` import this module, not the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avatarsdk.errors import InputError

__all__ = ["FBX_PRESETS", "PRESETS", "EnginePreset", "FbxPreset", "get_preset", "preset_names"]


@dataclass(frozen=True)
class FbxPreset:
    """Units, axes and exporter settings of one FBX target.

    The scene is built in Blender with ``unit_settings.scale_length =
    unit_metres`` and coordinates in that unit, then exported with
    ``apply_scale_options="FBX_SCALE_ALL"``: the file's UnitScaleFactor is then
    ``100 * unit_metres`` (1 = centimetres, 100 = metres) and no node carries a
    compensating scale (the ``Armature`` node's scale is 1, which Unreal needs).

    Attributes:
        name: preset name ("unreal", "unity", "fbx").
        unit_metres: metres per file unit (0.01: centimetres, 1: metres).
        up: the file's up axis, "Y" or "Z".
        axis_forward: Blender exporter ``axis_forward`` (Blender's +Y maps to it).
        axis_up: Blender exporter ``axis_up`` (Blender's +Z maps to it).
        bake_space_transform: bake the axis change into the data, so root
            nodes carry no rotation (Blender's "Apply Transform").
    """

    name: str
    unit_metres: float
    up: str
    axis_forward: str
    axis_up: str
    bake_space_transform: bool = False

    def exporter_settings(self) -> dict:
        """Keyword arguments of ``bpy.ops.export_scene.fbx`` (besides filepath)."""
        return {
            "object_types": ["ARMATURE", "MESH"],
            "apply_unit_scale": True,
            "global_scale": 1.0,
            "apply_scale_options": "FBX_SCALE_ALL",
            "axis_forward": self.axis_forward,
            "axis_up": self.axis_up,
            "bake_space_transform": self.bake_space_transform,
            "use_mesh_modifiers": False,  # the armature is written as a skin, not applied
            "mesh_smooth_type": "FACE",  # smoothing groups, so engines keep the normals
            "use_tspace": False,
            "use_custom_props": False,
            "add_leaf_bones": False,
            "primary_bone_axis": "Y",
            "secondary_bone_axis": "X",
            "armature_nodetype": "NULL",
            "use_armature_deform_only": False,
            "bake_anim": False,
            "path_mode": "RELATIVE",
            "embed_textures": False,
            "batch_mode": "OFF",
            "use_metadata": True,
        }


_UNIT_NAMES = {0.01: "centimetres", 1.0: "metres"}
GLB_AXES = {"up": "+Y", "forward": "face looks along +Z", "handedness": "right"}
"""A .glb is always metres, +Y up, face along +Z (glTF's own axes, which are the SDK's)."""


@dataclass(frozen=True)
class EnginePreset:
    """What one package kind contains and how it is oriented.

    Attributes:
        name: the key in :data:`PRESETS` and the value of ``--preset``.
        title: human-readable target (the manifest's "target").
        formats: model files written, from ("glb", "fbx").
        fbx: the FBX writer's settings, or None when the package has no .fbx.
        axes: {"up", "forward", "handedness"} as the engine sees the head (of
            the .fbx when there is one, else of the .glb).
        lods_default: whether the package holds levels of detail unless told
            otherwise (engines switch LODs by themselves; glTF and DCC users
            usually want the one full mesh).
        glb_lods: with levels of detail, write ``<name>_LOD0..2.glb`` instead of
            one .glb (False: the .glb stays the full mesh, as for Unity, whose
            glTFast has no LOD import and builds its LODGroup from the FBX).
        visemes_default: add the 15 Oculus viseme morph targets unless told otherwise.
        naming: how the .glb names its nodes, meshes, materials and bones:
            "avatarsdk" (one mesh "avatar", joints root/neck/head/jaw/eye_L/eye_R)
            or "rpm" (Ready Player Me's names: :mod:`avatarsdk.exporters.rpm`).
        flag: the CLI's boolean alias of ``--preset NAME`` (e.g. "--unreal").
        help: one line for ``--help``.
    """

    name: str
    title: str
    formats: tuple[str, ...]
    fbx: FbxPreset | None
    axes: dict = field(default_factory=dict)
    lods_default: bool = False
    glb_lods: bool = False
    visemes_default: bool = False
    naming: str = "avatarsdk"
    flag: str = ""
    help: str = ""

    def __post_init__(self) -> None:
        # The table is data; these catch a mistyped entry when the module is imported.
        if not set(self.formats) <= {"glb", "fbx"} or not self.formats:
            raise ValueError(f"preset {self.name}: formats must be from glb, fbx, got {self.formats}")
        if ("fbx" in self.formats) != (self.fbx is not None):
            raise ValueError(f"preset {self.name}: an .fbx needs FBX settings and FBX settings need an .fbx")
        if self.fbx is not None and self.axes.get("up") != "+" + self.fbx.up:
            raise ValueError(f"preset {self.name}: axes up {self.axes.get('up')} disagrees with the FBX's {self.fbx.up}")
        if self.naming not in ("avatarsdk", "rpm"):
            raise ValueError(f"preset {self.name}: naming must be avatarsdk or rpm, got {self.naming!r}")

    @property
    def unit_metres(self) -> float:
        """Metres per unit of the package's model (the .fbx's; a .glb is always 1)."""
        return self.fbx.unit_metres if self.fbx is not None else 1.0

    @property
    def units(self) -> str:
        """"centimetres" or "metres" (see :attr:`unit_metres`)."""
        return _UNIT_NAMES[self.unit_metres]

    @property
    def fbx_preset(self) -> str | None:
        """Name of the FBX settings (:attr:`fbx`), or None."""
        return None if self.fbx is None else self.fbx.name


PRESETS: dict[str, EnginePreset] = {
    p.name: p for p in (
        EnginePreset(
            "unreal", "Unreal Engine 5 (FBX skeletal mesh, ARKit morph targets)", ("fbx",),
            # Centimetres, Z up. Blender's own axes are Z up, so no axis change; Unreal
            # mirrors Y on import and the face (Blender -Y) ends up facing +Y, the way
            # Unreal's skeletal meshes face.
            FbxPreset("unreal", 0.01, "Z", axis_forward="Y", axis_up="Z"),
            {"up": "+Z", "forward": "face looks along +Y after import (file: -Y)",
             "handedness": "file right-handed; Unreal mirrors Y on import"},
            lods_default=True, flag="--unreal",
            help="Unreal Engine 5: FBX skeletal mesh, cm, Z up, ARKit-named morph targets."),
        EnginePreset(
            "unity", "Unity (glTFast .glb and FBX with blend shapes)", ("glb", "fbx"),
            # Metres, Y up (Unity mirrors X on import; the face looks down +Z).
            FbxPreset("unity", 1.0, "Y", axis_forward="-Z", axis_up="Y", bake_space_transform=True),
            {"up": "+Y", "forward": "face looks along +Z", "handedness": "files right-handed; Unity mirrors X on import"},
            lods_default=True, flag="--unity", help="Unity: .glb for glTFast and FBX, m, Y up."),
        EnginePreset(
            "gltf", "glTF 2.0 binary (three.js, Babylon.js, Godot, Blender)", ("glb",), None, dict(GLB_AXES),
            glb_lods=True, flag="--gltf", help="glTF 2.0 binary, m, Y up."),
        EnginePreset(
            "fbx", "FBX for DCC tools (Maya, MotionBuilder, 3ds Max, Blender)", ("fbx",),
            # DCC tools (Maya, MotionBuilder, 3ds Max): FBX's own default, centimetres and Y up.
            FbxPreset("fbx", 0.01, "Y", axis_forward="-Z", axis_up="Y", bake_space_transform=True),
            {"up": "+Y", "forward": "face looks along +Z", "handedness": "right"},
            flag="--fbx", help="FBX for DCC tools, cm, Y up."),
        EnginePreset(
            "rpm", "Ready Player Me-style head (.glb with Wolf3D_* meshes, ARKit + Oculus viseme morph targets, "
                   "Mixamo-style bones)", ("glb",), None, dict(GLB_AXES),
            glb_lods=True, visemes_default=True, naming="rpm", flag="--rpm",
            help="Ready Player Me conventions: Wolf3D_Head/Teeth, EyeLeft/Right, 72 morph targets, "
                 "Hips>Spine>Neck>Head bones; m, Y up."),
    )
}
"""Every engine preset by name, in the order ``--help`` lists them."""

FBX_PRESETS: dict[str, FbxPreset] = {p.fbx.name: p.fbx for p in PRESETS.values() if p.fbx is not None}
"""The FBX settings of the presets that write an .fbx, by name."""


def preset_names() -> tuple[str, ...]:
    """The preset names, in table order."""
    return tuple(PRESETS)


def get_preset(name: str) -> EnginePreset:
    """Look up a preset by name.

    Raises:
        InputError: no preset has that name (the message lists them).
    """
    if not isinstance(name, str) or name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]

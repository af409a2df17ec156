"""Frozen value types passed between stages.

Conventions for every geometric field (they match glTF 2.0, so exporters only
change units or axes for engines that want others):

* units: metres; angles in radians;
* axes: right-handed, +Y up, +Z forward (out of the face), +X to the avatar's
  own left;
* arrays are numpy, C-contiguous, never written after construction.

Types hold data only. Anything derived is computed by the stage that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

JOINT_NAMES: tuple[str, ...] = ("root", "neck", "head", "jaw", "eye_L", "eye_R")
"""The skeleton every avatar shares, parents before children."""

# The dense landmark layout (``Landmarks.points``): mediapipe's face mesh with
# refine_landmarks=True. Every detector must return this layout
# (:class:`avatarsdk.detect.LandmarkDetector`); fitting, refinement, the identity
# crop and the ICT correspondence (rigs/mediapipe_map.py) index into it.
FACE_MESH_POINTS = 468
"""Points 0..467: the face-mesh surface (mediapipe's canonical face model)."""
IRIS_POINTS = 10
"""Points 468..477: the iris, per eye a centre then four on the rim."""
NUM_LANDMARKS = FACE_MESH_POINTS + IRIS_POINTS
"""478, the rows of ``Landmarks.points``."""
RIGHT_IRIS = (468, (469, 470, 471, 472))
"""The subject's right iris: (centre, rim points)."""
LEFT_IRIS = (473, (474, 475, 476, 477))
"""The subject's left iris: (centre, rim points)."""


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.setflags(write=False)


@dataclass(frozen=True, eq=False)
class Topology:
    """The fixed ICT-FaceKit head topology shared by every avatar.

    Attributes:
        num_vertices: V, 26,719 for ICT-FaceKit.
        triangles: [F, 3] int32 vertex indices, counter-clockwise seen from outside.
        corner_uv: [F, 3, 2] float32 texture coordinates per triangle corner, in
            [0, 1]^2 of the texture of that triangle's material (glTF convention:
            origin top-left, v down). Skin corners use the unified head UV.
        tri_material: [F] int8 index into ``materials``.
        materials: material names, e.g. ("skin", "eyes", "teeth", ...).
        parts: part name -> (start, stop) vertex range, stop exclusive.
        landmarks68: [68] int32 vertex indices of the Multi-PIE 68 landmarks.
        head_uv: [V, 2] float32 unified head UV of each skin vertex in [0, 1]^2
            (NaN for vertices not on the skin); the UV maps of the paper are
            sampled here.
    """

    num_vertices: int
    triangles: np.ndarray
    corner_uv: np.ndarray
    tri_material: np.ndarray
    materials: tuple[str, ...]
    parts: dict[str, tuple[int, int]]
    landmarks68: np.ndarray
    head_uv: np.ndarray

    def __post_init__(self) -> None:
        _readonly(self.triangles, self.corner_uv, self.tri_material, self.landmarks68, self.head_uv)


@dataclass(frozen=True, eq=False)
class Skeleton:
    """A joint hierarchy in bind pose (no rotations, joints at their heads).

    Attributes:
        names: joint names, parents before children (see ``JOINT_NAMES``).
        parents: [J] int32 parent index, -1 for the root.
        positions: [J, 3] float32 world-space joint positions in metres.
    """

    names: tuple[str, ...]
    parents: np.ndarray
    positions: np.ndarray

    def __post_init__(self) -> None:
        _readonly(self.parents, self.positions)


@dataclass(frozen=True, eq=False)
class Rig:
    """Skeleton, skin weights and named blendshapes of one avatar.

    Attributes:
        skeleton: the bind-pose skeleton.
        skin_joints: [V, 4] uint8 joint indices per vertex (unused slots 0 with weight 0).
        skin_weights: [V, 4] float32 weights in [0, 1], each row summing to 1.
        blendshape_names: K names (ARKit 52 by default).
        blendshapes: [K, V, 3] float32 vertex deltas in metres from the neutral mesh.
    """

    skeleton: Skeleton
    skin_joints: np.ndarray
    skin_weights: np.ndarray
    blendshape_names: tuple[str, ...]
    blendshapes: np.ndarray

    def __post_init__(self) -> None:
        _readonly(self.skin_joints, self.skin_weights, self.blendshapes)


@dataclass(frozen=True, eq=False)
class Avatar:
    """A complete head: neutral mesh on the shared topology, textures, rig.

    Attributes:
        vertices: [V, 3] float32 neutral-expression vertex positions in metres.
        topology: the shared ICT topology (triangles, UVs, parts, materials).
        textures: material name -> [H, W, 3 or 4] uint8 sRGB image in that
            material's UV space (``topology.corner_uv``). ``"skin"`` is required:
            the de-lit albedo in the unified head UV (square, power of two).
            Materials without a texture are exported with a plain colour.
        rig: skeleton, skin weights and blendshapes adapted to this identity.
        meta: small JSON-serialisable provenance (seed, source, SDK version).
    """

    vertices: np.ndarray
    topology: Topology
    textures: dict[str, np.ndarray]
    rig: Rig
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _readonly(self.vertices, *self.textures.values())

    @property
    def albedo(self) -> np.ndarray:
        """[H, W, 3] uint8 sRGB skin albedo in the unified head UV."""
        return self.textures["skin"]


@dataclass(frozen=True, eq=False)
class UVMaps:
    """The paper's 6-channel UV representation of a head in the unified head UV.

    Attributes:
        albedo: [H, W, 3] float32 linear-light albedo in [0, 1].
        offsets: [H, W, 3] float32 xyz offsets in metres from the mean (generic
            neutral) head, sampled at each skin vertex's ``Topology.head_uv``.
        mask: [H, W] bool, True on texels covered by the skin charts (before
            the gutter dilation that keeps bilinear samples at chart edges clean).
    """

    albedo: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray

    def __post_init__(self) -> None:
        _readonly(self.albedo, self.offsets, self.mask)


@dataclass(frozen=True, eq=False)
class Photo:
    """A decoded input photo, upright (EXIF orientation applied), 8-bit RGB.

    Attributes:
        image: [H, W, 3] uint8 sRGB.
        source: where it came from (a path, or "<array>" / "<bytes>").
        sha256: hex digest of the original file bytes (of the array bytes for arrays).
    """

    image: np.ndarray
    source: str
    sha256: str

    def __post_init__(self) -> None:
        _readonly(self.image)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass(frozen=True, eq=False)
class Landmarks:
    """Dense landmarks of the one face the SDK works on, in the photo's pixels.

    Attributes:
        points: [NUM_LANDMARKS (478), 3] float32 mediapipe face-mesh landmarks
            (FACE_MESH_POINTS 468 + IRIS_POINTS 10, layout above):
            x right and y down in pixels (pixel centres at integers), z relative
            depth in the same pixel units (smaller is nearer the camera).
        box: (x0, y0, x1, y1) float face box in pixels from the detector.
        score: detector confidence in [0, 1].
        num_faces: how many faces the detector saw (the largest one is used).
        person_mask: [H, W] float32 in [0, 1] selfie-segmentation person probability.
    """

    points: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    num_faces: int
    person_mask: np.ndarray

    def __post_init__(self) -> None:
        _readonly(self.points, self.person_mask)


PARSE_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
"""Face-parsing classes (CelebAMask-HQ's 19, in the order of the parser's logits): ``eye_g`` eyeglasses,
``ear_r`` earring, ``neck_l`` necklace, ``mouth`` the mouth interior between the lips (teeth, tongue)."""

UNPARSED = 255
"""``FaceParse.labels`` value of a pixel the parser did not classify."""


@dataclass(frozen=True, eq=False)
class FaceParse:
    """Per-pixel face classes of a photo (see :func:`avatarsdk.parse.parse_face`).

    Attributes:
        labels: [H, W] uint8 class index into :data:`PARSE_CLASSES` at the photo's
            resolution, or :data:`UNPARSED` (255) where the parser said nothing:
            outside the face-aligned crop (``bisenet``), or on the person away from
            the face polygons (``mesh``, which only knows the face).
        method: the parser that made it, "bisenet" or "mesh".
        crop: [2, 3] float64 affine map from the network's crop pixels (x, y,
            pixel centres at integers) to photo pixels; None for "mesh".
        hands: [H, W] bool pixels on a hand (:mod:`avatarsdk.hands`; the parser
            calls hands skin), or None when hands were not looked for. An
            occluder whatever the parser.
        num_hands: how many hands were found.

    The named masks are [H, W] bool views computed from ``labels``.
    """

    labels: np.ndarray
    method: str
    crop: np.ndarray | None = None
    hands: np.ndarray | None = None
    num_hands: int = 0

    def __post_init__(self) -> None:
        _readonly(self.labels, self.crop, self.hands)

    def mask(self, *names: str) -> np.ndarray:
        """[H, W] bool: pixels of any of the named classes (names from :data:`PARSE_CLASSES`)."""
        ids = [PARSE_CLASSES.index(n) for n in names]
        return np.isin(self.labels, np.asarray(ids, np.uint8))

    @property
    def parsed(self) -> np.ndarray:
        return self.labels != UNPARSED

    @property
    def background(self) -> np.ndarray:
        return self.labels == 0

    @property
    def skin(self) -> np.ndarray:
        return self.labels == 1

    @property
    def brows(self) -> np.ndarray:
        return self.mask("l_brow", "r_brow")

    @property
    def eyes(self) -> np.ndarray:
        return self.mask("l_eye", "r_eye")

    @property
    def glasses(self) -> np.ndarray:
        return self.labels == 6

    @property
    def ears(self) -> np.ndarray:
        return self.mask("l_ear", "r_ear")

    @property
    def earrings(self) -> np.ndarray:
        return self.labels == 9

    @property
    def nose(self) -> np.ndarray:
        return self.labels == 10

    @property
    def mouth(self) -> np.ndarray:
        """The mouth interior (teeth, tongue), not the lips."""
        return self.labels == 11

    @property
    def lips(self) -> np.ndarray:
        return self.mask("u_lip", "l_lip")

    @property
    def neck(self) -> np.ndarray:
        return self.labels == 14

    @property
    def necklace(self) -> np.ndarray:
        return self.labels == 15

    @property
    def cloth(self) -> np.ndarray:
        return self.labels == 16

    @property
    def hair(self) -> np.ndarray:
        return self.labels == 17

    @property
    def hat(self) -> np.ndarray:
        return self.labels == 18

    @property
    def face_surface(self) -> np.ndarray:
        """Skin of the face the albedo may take: skin, nose, brows, lips and ears (not under a hand)."""
        m = self.mask("skin", "nose", "l_brow", "r_brow", "u_lip", "l_lip", "l_ear", "r_ear")
        return m & ~self.hands if self.hands is not None else m

    @property
    def occluders(self) -> np.ndarray:
        """What covers or is not skin: hair, hat, glasses, cloth, the mouth interior, jewellery, hands."""
        m = self.mask("hair", "hat", "eye_g", "cloth", "mouth", "ear_r", "neck_l")
        return m | self.hands if self.hands is not None else m

"""Where mediapipe's 468 face-mesh points lie on the ICT head.

Each canonical face-mesh point is a fixed point on the ICT face surface: a
triangle of ``load_ict().topology.triangles`` and barycentrics in it. Those are
topological, so they hold on every ICT head (any identity, any expression), and
``points_on_mesh`` turns a head's vertices into the 468 points the face mesh
would report for it (in 3D; the camera projects them).

The table ``data/mediapipe_ict.npz`` is built once by
``scripts/build_mediapipe_correspondence.py`` from mediapipe's canonical face
geometry (npm ``@mediapipe/face_mesh``, Apache-2.0): the canonical mesh is aligned
to the ICT generic neutral (similarity on the inner 68 landmarks, then ICP with
the ICT identity basis) and each point is projected onto the ``face`` part.

The 10 iris points (468-477) that ``refine_landmarks=True`` adds have no
surface point: they are on the eyeballs, which rotate; fit them separately.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avatarsdk.errors import DataError, InputError
from avatarsdk.datatypes import FACE_MESH_POINTS
from avatarsdk.rigs.model import load_ict

__all__ = ["MP68", "MediapipeMap", "load_correspondence", "points_on_mesh"]

NUM_POINTS = FACE_MESH_POINTS  # the surface points; the 10 iris points have no place on the mesh
FORMAT = 1
_DATA = Path(__file__).resolve().parent / "data" / "mediapipe_ict.npz"

MP68: tuple[int, ...] = (
    # jaw line 0-16 (subject's right ear -> chin -> left ear): surface points
    # near the 68-point contour, which real annotators put on the silhouette
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107,  # right brow 17-21 (outer -> inner)
    336, 296, 334, 293, 300,  # left brow 22-26 (inner -> outer)
    168, 197, 5, 4,  # nose bridge 27-30 (30 = tip)
    98, 97, 2, 326, 327,  # nose base 31-35 (31, 35: alar base)
    33, 160, 158, 133, 153, 144,  # right eye 36-41
    362, 385, 387, 263, 373, 380,  # left eye 42-47
    61, 39, 37, 0, 267, 269, 291, 321, 314, 17, 84, 91,  # outer lips 48-59
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips 60-67
)
"""Mediapipe face-mesh index of each of the 68 Multi-PIE landmarks (``LANDMARKS68`` order).

The usual mediapipe -> dlib-68 convention with one index per landmark ("right" is
the subject's right, which appears on the image's left). Checked against ICT's
``LANDMARKS68`` by ``scripts/build_mediapipe_correspondence.py``.
"""


@dataclass(frozen=True, eq=False)
class MediapipeMap:
    """Fixed correspondence from mediapipe's 468 face-mesh points to the ICT surface.

    Attributes:
        triangle: [468] int32 index into ``load_ict().topology.triangles``; every
            one is a triangle of the ``face`` part.
        bary: [468, 3] float32 barycentrics in that triangle (corner order of
            ``topology.triangles``), each >= 0, rows summing to 1.
        contour: [36] int32 mediapipe indices of the face oval, one closed loop
            starting at the forehead top (10) and running over the subject's
            left temple, chin, right cheek. These points lie on the outline of
            the face and slide along the head's silhouette: fit them to the
            silhouette, not to fixed surface points.
        weight: [468] float32 in [0, 1], suggested weight for fitting each point
            as a fixed surface point: exp(-(r / 3 mm)^2) floored at 0.1, where
            r is ``residual``; 0 on ``contour``.
        procrustes_weight: [468] float32 mediapipe's own weights of the 33 stable
            points its face-geometry pipeline uses for rigid pose (0 elsewhere);
            good for a first rigid camera estimate.
        residual: [468] float32 metres, distance of the aligned canonical point
            to the fitted ICT surface when the table was built.
        meta: provenance (npm package, tarball sha256, fitted transform).
    """

    triangle: np.ndarray
    bary: np.ndarray
    contour: np.ndarray
    weight: np.ndarray
    procrustes_weight: np.ndarray
    residual: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for a in (self.triangle, self.bary, self.contour, self.weight, self.procrustes_weight, self.residual):
            a.setflags(write=False)

    def corners(self, triangles: np.ndarray) -> np.ndarray:
        """Return the [468, 3] vertex indices of each point's triangle.

        Args:
            triangles: [F, 3] int topology triangles (``load_ict().topology.triangles``).
        """
        return np.asarray(triangles)[self.triangle]


@functools.lru_cache(maxsize=2)
def _load(path: str) -> MediapipeMap:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["format"]) != FORMAT:
                raise DataError(f"{path}: format {int(z['format'])}, expected {FORMAT}")
            m = MediapipeMap(
                triangle=z["triangle"].astype(np.int32),
                bary=z["bary"].astype(np.float32),
                contour=z["contour"].astype(np.int32),
                weight=z["weight"].astype(np.float32),
                procrustes_weight=z["procrustes_weight"].astype(np.float32),
                residual=z["residual"].astype(np.float32),
                meta=json.loads(str(z["meta"])),
            )
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"cannot read the mediapipe->ICT table {path}: {e}") from None
    if m.triangle.shape != (NUM_POINTS,) or m.bary.shape != (NUM_POINTS, 3):
        raise DataError(f"{path}: expected {NUM_POINTS} points, got {m.triangle.shape} / {m.bary.shape}")
    return m


def load_correspondence(path: str | Path | None = None) -> MediapipeMap:
    """Load the mediapipe -> ICT correspondence shipped with the SDK (cached).

    Args:
        path: another table built by the script (default: the shipped one).

    Raises:
        DataError: the file is missing or malformed.
    """
    return _load(str(path if path is not None else _DATA))


def points_on_mesh(vertices, cmap: MediapipeMap, triangles=None):
    """Evaluate the 468 mediapipe points on ICT heads.

    p[..., i, :] = sum_j bary[i, j] * vertices[..., triangles[triangle[i], j], :]

    Args:
        vertices: [V, 3] numpy array or torch tensor, or [B, V, 3] torch tensor,
            float, ICT topology (metres).
        cmap: from :func:`load_correspondence`.
        triangles: [F, 3] int topology triangles; default ``load_ict().topology.triangles``
            (pass them to avoid loading the ICT model).

    Returns:
        [468, 3] (or [B, 468, 3]) points of the same type and dtype as
        ``vertices``; differentiable w.r.t. torch ``vertices``.

    Raises:
        InputError: ``vertices`` has the wrong shape or type.
    """
    if triangles is None:
        triangles = load_ict().topology.triangles
    corners = cmap.corners(triangles)  # [468, 3]
    shape = tuple(getattr(vertices, "shape", ()))
    if len(shape) < 2 or shape[-1] != 3 or shape[-2] <= int(corners.max()):
        raise InputError(f"vertices: expected [..., V, 3] with V > {int(corners.max())}, "
                         f"got {shape or type(vertices).__name__}")
    if isinstance(vertices, np.ndarray):
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise InputError(f"vertices: expected a [V, 3] array, got shape {vertices.shape}")
        return np.einsum("nj,njd->nd", cmap.bary.astype(vertices.dtype), vertices[corners])

    if not isinstance(vertices, torch.Tensor) or not vertices.is_floating_point():
        raise InputError(f"vertices: expected a float numpy array or torch tensor, got {type(vertices).__name__}")
    if vertices.dim() not in (2, 3) or vertices.shape[-1] != 3:
        raise InputError(f"vertices: expected [V, 3] or [B, V, 3], got shape {tuple(vertices.shape)}")
    idx = torch.tensor(corners, dtype=torch.long, device=vertices.device)
    bary = torch.tensor(cmap.bary, dtype=vertices.dtype, device=vertices.device)
    return torch.einsum("nj,...njd->...nd", bary, vertices[..., idx, :])

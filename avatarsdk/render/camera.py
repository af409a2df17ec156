"""Pinhole camera matrices in the OpenGL convention used by ``rasterize``.

Camera space: x right, y up, the camera looks down its -Z axis. Projection
matrices map camera space to clip space; the visible volume is
``-w <= x, y, z <= w`` with ``w = -z_camera > 0``. Every function accepts
Python floats or tensors (scalars or a leading batch dimension B) and is
differentiable w.r.t. tensor arguments. Matrices act on column vectors:
``clip = P @ V @ [x, y, z, 1]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from avatarsdk.errors import InputError

__all__ = ["Camera", "gl_matrices", "perspective", "look_at", "intrinsics_to_projection", "transform_points"]

Scalar = float | torch.Tensor


def perspective(fov_y: Scalar, aspect: Scalar, near: Scalar, far: Scalar) -> torch.Tensor:
    """Build an OpenGL perspective projection (like ``gluPerspective``).

    Args:
        fov_y: vertical field of view in radians, in (0, pi); float, 0-d or [B].
        aspect: width / height of the image; float, 0-d or [B].
        near: distance to the near plane in scene units (metres), > 0.
        far: distance to the far plane, > near.

    Returns:
        [4, 4] projection, or [B, 4, 4] if any argument has a batch dimension;
        float32 unless a tensor argument is float64.

    Raises:
        InputError: if an argument is not a real number or has a bad shape.
    """
    fov_y, aspect, near, far = _scalars(fov_y=fov_y, aspect=aspect, near=near, far=far)
    f = 1 / torch.tan(fov_y / 2)
    zero = torch.zeros_like(f)
    return _mat4(
        [
            [f / aspect, zero, zero, zero],
            [zero, f, zero, zero],
            [zero, zero, (far + near) / (near - far), 2 * far * near / (near - far)],
            [zero, zero, -torch.ones_like(f), zero],
        ]
    )


def intrinsics_to_projection(
    fx: Scalar,
    fy: Scalar,
    cx: Scalar,
    cy: Scalar,
    width: int,
    height: int,
    near: Scalar,
    far: Scalar,
) -> torch.Tensor:
    """Turn OpenCV-style pixel intrinsics into an OpenGL projection for ``rasterize``.

    ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` follows OpenCV: it acts on
    OpenCV camera coordinates ``(x, -y, -z)`` of an OpenGL camera-space point
    ``(x, y, z)`` and gives continuous pixel coordinates ``(u, v)`` with u to
    the right, v down and the CENTRE of the top-left pixel at (0, 0). A point
    with ``(u, v)`` then lands in ``rasterize``'s pixel (row ``round(v)``,
    column ``round(u)``) of an image of ``(height, width)``.

    Args:
        fx: focal length along x in pixels; float, 0-d or [B].
        fy: focal length along y in pixels; float, 0-d or [B].
        cx: principal point column in pixels ((width - 1) / 2 is centred).
        cy: principal point row in pixels ((height - 1) / 2 is centred).
        width: image width W in pixels.
        height: image height H in pixels.
        near: near plane distance, > 0.
        far: far plane distance, > near.

    Returns:
        [4, 4] projection, or [B, 4, 4] if any argument has a batch dimension.

    Raises:
        InputError: if an argument is not a real number or has a bad shape.
    """
    if not all(isinstance(s, int) and s >= 1 for s in (width, height)):
        raise InputError(f"width and height must be positive ints, got {width!r}, {height!r}")
    fx, fy, cx, cy, near, far = _scalars(fx=fx, fy=fy, cx=cx, cy=cy, near=near, far=far)
    zero = torch.zeros_like(fx)
    return _mat4(
        [
            [2 * fx / width, zero, 1 - 2 * (cx + 0.5) / width, zero],
            [zero, 2 * fy / height, 2 * (cy + 0.5) / height - 1, zero],
            [zero, zero, (far + near) / (near - far), 2 * far * near / (near - far)],
            [zero, zero, -torch.ones_like(fx), zero],
        ]
    )


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Build the world-to-camera matrix of a camera at ``eye`` looking at ``target``.

    Args:
        eye: [3] or [B, 3] float camera position in world units (metres).
        target: [3] or [B, 3] float point the camera looks at (along its -Z).
        up: [3] or [B, 3] float world direction that appears up (+Y) in the
            image; must not be parallel to ``target - eye``.

    Returns:
        [4, 4] rigid world-to-camera transform, or [B, 4, 4] if any input is
        batched; differentiable w.r.t. all inputs.

    Raises:
        InputError: on bad shapes, ``eye == target`` or ``up`` parallel to the
            viewing direction.
    """
    vecs = []
    for name, v in (("eye", eye), ("target", target), ("up", up)):
        v = torch.as_tensor(v)
        if not v.is_floating_point() or v.dim() not in (1, 2) or v.shape[-1] != 3:
            raise InputError(f"{name} must be a float [3] or [B, 3] tensor, got shape {tuple(v.shape)}")
        vecs.append(v)
    try:
        eye, target, up = torch.broadcast_tensors(*vecs)
    except RuntimeError as exc:
        raise InputError(f"eye, target and up batch sizes differ: {exc}") from None
    fwd = target - eye
    side = torch.linalg.cross(fwd, up)
    if bool((fwd.norm(dim=-1) == 0).any()) or bool(
        (side.norm(dim=-1) <= 1e-7 * fwd.norm(dim=-1) * up.norm(dim=-1)).any()
    ):
        raise InputError("look_at needs eye != target and up not parallel to target - eye")
    fwd = fwd / fwd.norm(dim=-1, keepdim=True)
    side = side / side.norm(dim=-1, keepdim=True)
    cam_up = torch.linalg.cross(side, fwd)
    rot = torch.stack([side, cam_up, -fwd], dim=-2)  # [..., 3, 3]
    trans = -(rot @ eye.unsqueeze(-1))  # [..., 3, 1]
    top = torch.cat([rot, trans], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1
    return torch.cat([top, bottom], dim=-2)


def transform_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply a 4x4 transform to 3D points, giving homogeneous coordinates.

    Args:
        points: [B, V, 3] or [V, 3] float points (metres).
        matrix: [B, 4, 4] or [4, 4] float transform acting on column vectors,
            e.g. ``projection @ world_to_camera``. Batch sizes must be equal or
            one side unbatched / of size 1.

    Returns:
        [B, V, 4] homogeneous points (B = 1 when neither input is batched),
        in the promoted dtype; differentiable w.r.t. both inputs.

    Raises:
        InputError: on bad shapes, dtypes or incompatible batch sizes.
    """
    if not isinstance(points, torch.Tensor) or not points.is_floating_point():
        raise InputError(f"points must be a float tensor, got {type(points).__name__}")
    if not isinstance(matrix, torch.Tensor) or not matrix.is_floating_point():
        raise InputError(f"matrix must be a float tensor, got {type(matrix).__name__}")
    if points.dim() not in (2, 3) or points.shape[-1] != 3:
        raise InputError(f"points must be [B, V, 3] or [V, 3], got shape {tuple(points.shape)}")
    if matrix.dim() not in (2, 3) or matrix.shape[-2:] != (4, 4):
        raise InputError(f"matrix must be [B, 4, 4] or [4, 4], got shape {tuple(matrix.shape)}")
    points = points if points.dim() == 3 else points.unsqueeze(0)
    matrix = matrix if matrix.dim() == 3 else matrix.unsqueeze(0)
    if points.shape[0] != matrix.shape[0] and 1 not in (points.shape[0], matrix.shape[0]):
        raise InputError(f"batch sizes differ: points {points.shape[0]}, matrix {matrix.shape[0]}")
    dtype = torch.promote_types(points.dtype, matrix.dtype)
    points, matrix = points.to(dtype), matrix.to(dtype)
    return points @ matrix[:, :, :3].transpose(1, 2) + matrix[:, None, :, 3]


def _scalars(**kwargs: Scalar) -> list[torch.Tensor]:
    """Turn floats / 0-d / [B] tensors into broadcast tensors of one float dtype."""
    dtype = torch.float32
    for v in kwargs.values():
        if isinstance(v, torch.Tensor) and v.dtype == torch.float64:
            dtype = torch.float64
    out = []
    for name, v in kwargs.items():
        if isinstance(v, torch.Tensor):
            if v.dim() > 1 or not (v.is_floating_point() or v.dtype in (torch.int32, torch.int64)):
                raise InputError(f"{name} must be a scalar or [B] real tensor, got shape {tuple(v.shape)}")
            out.append(v.to(dtype))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(torch.tensor(float(v), dtype=dtype))
        else:
            raise InputError(f"{name} must be a finite real number, got {v!r}")
    try:
        return list(torch.broadcast_tensors(*out))
    except RuntimeError as exc:
        raise InputError(f"batch sizes differ: {exc}") from None


def _mat4(rows: list[list[torch.Tensor]]) -> torch.Tensor:
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


@dataclass(frozen=True, eq=False)
class Camera:
    """A pinhole camera, OpenCV convention: the one camera of photos, fits and synthetic scenes.

    ``x_cam = rotation @ X + translation`` for a world point X (metres); pixel
    ``u = fx * x_cam.x / x_cam.z + cx``, ``v = fy * x_cam.y / x_cam.z + cy``,
    pixel centres at integers, v down (camera x right, y down, z forward).
    :func:`gl_matrices` turns it into the OpenGL clip matrix of ``rasterize``.

    Attributes:
        fx, fy: focal lengths in pixels (equal for fitted and synthetic cameras).
        cx, cy: principal point column and row, pixels.
        width, height: image size in pixels.
        rotation: [3, 3] float64 world-to-camera rotation.
        translation: [3] float64 world-to-camera translation, metres.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    rotation: np.ndarray
    translation: np.ndarray

    @property
    def focal(self) -> float:
        """The focal length in pixels of a camera with square pixels (``fx``)."""
        return self.fx

    @property
    def centre(self) -> np.ndarray:
        """[3] float64 camera centre in world coordinates, metres."""
        return -self.rotation.T @ self.translation

    def project(self, points: np.ndarray) -> np.ndarray:
        """Project [N, 3] world points to [N, 2] float64 pixel coordinates (u, v)."""
        x = np.asarray(points, np.float64) @ self.rotation.T + self.translation
        return np.stack([self.fx * x[:, 0] / x[:, 2] + self.cx, self.fy * x[:, 1] / x[:, 2] + self.cy], 1)

    def crop(self, left: float, top: float, width: int, height: int) -> Camera:
        """The same camera seeing only the window of ``(width, height)`` pixels whose top-left pixel is (left, top)."""
        return Camera(fx=self.fx, fy=self.fy, cx=self.cx - left, cy=self.cy - top, width=int(width),
                      height=int(height), rotation=self.rotation, translation=self.translation)

    def to_json(self) -> dict:
        """Return a JSON-serialisable dict (the fit report's camera: one focal, rounded pose)."""
        return {"focal_px": self.fx, "cx": self.cx, "cy": self.cy, "width": self.width, "height": self.height,
                "rotation": np.asarray(self.rotation).round(6).tolist(),
                "translation_m": np.asarray(self.translation).round(6).tolist()}


def gl_matrices(camera: Camera, size: tuple[int, int] | None = None, near: float = 0.05, far: float = 5.0,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """OpenGL clip matrix [4, 4] (projection @ flip @ view) of a :class:`Camera` for ``rasterize``.

    Args:
        camera: the camera.
        size: (height, width) of the render; the image is scaled from the
            camera's own size (pixel centres kept: ``u' = (u + 0.5) s - 0.5``).
            None: the camera's size.
        near, far: clip planes, metres.
        dtype: of the matrix (the projection is built in float32 either way).

    Returns:
        [4, 4] ``dtype`` matrix; ``transform_points(vertices, matrix)`` gives clip coordinates.
    """
    h, w = size or (camera.height, camera.width)
    sx, sy = w / camera.width, h / camera.height
    proj = intrinsics_to_projection(camera.fx * sx, camera.fy * sy, (camera.cx + 0.5) * sx - 0.5,
                                    (camera.cy + 0.5) * sy - 0.5, w, h, near, far)
    view = torch.eye(4, dtype=dtype)
    view[:3, :3] = torch.as_tensor(np.asarray(camera.rotation)).to(dtype)
    view[:3, 3] = torch.as_tensor(np.asarray(camera.translation)).to(dtype)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=dtype))  # OpenCV camera -> OpenGL camera
    return proj.to(dtype) @ flip @ view

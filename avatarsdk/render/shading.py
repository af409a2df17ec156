"""Vertex normals and 2nd-order spherical-harmonics (SH) Lambertian shading.

Lighting model (Ramamoorthi & Hanrahan 2001, "An Efficient Representation for
Irradiance Environment Maps"): the distant incident radiance is
``L(w) = sum_k L_k Y_k(w)`` over the 9 real orthonormal SH functions ``Y_k``
with l <= 2, and the irradiance at normal n is
``E(n) = sum_k A_l(k) L_k Y_k(n)`` with ``A_0 = pi, A_1 = 2 pi / 3, A_2 = pi / 4``.
A Lambertian surface of albedo rho then has outgoing radiance ``rho E(n) / pi``.

Coefficient convention (what ``coeffs`` means everywhere here): ``coeffs[k] =
Y_00 * L_k`` with ``Y_00 = 1 / (2 sqrt(pi))``, i.e. the radiance SH
coefficients rescaled so that ``coeffs[0]`` is the MEAN incident radiance over
the sphere. ``sh_basis`` folds ``A_l / (pi Y_00)`` into each ``Y_k`` so that
``sh_shading(n, coeffs) = E(n) / pi``, the factor multiplying albedo.
Ambient only: ``coeffs[0] = c`` and the rest zero gives shading == c at every
normal (uniform white light of radiance 1 is ``coeffs[0] = 1``).

Order of the 9 coefficients ((l, m) and the basis function of unit n = (x, y, z)):

====  =======  ====================================
k     (l, m)   sh_basis(n)[k]
====  =======  ====================================
0     (0, 0)   1
1     (1, -1)  (2 / sqrt(3)) y          = 1.154701 y
2     (1, 0)   (2 / sqrt(3)) z          = 1.154701 z
3     (1, 1)   (2 / sqrt(3)) x          = 1.154701 x
4     (2, -2)  (sqrt(15) / 4) x y       = 0.968246 x y
5     (2, -1)  (sqrt(15) / 4) y z       = 0.968246 y z
6     (2, 0)   (sqrt(5) / 8) (3 z^2 - 1) = 0.279508 (3 z^2 - 1)
7     (2, 1)   (sqrt(15) / 4) x z       = 0.968246 x z
8     (2, 2)   (sqrt(15) / 8) (x^2 - y^2) = 0.484123 (x^2 - y^2)
====  =======  ====================================

Shading is not clamped at zero (it stays linear in ``coeffs``); normals are
world-space, so light from the camera of a face looking along +Z is a
positive ``coeffs[2]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from avatarsdk.errors import InputError
from avatarsdk.render.raster import _check_faces

__all__ = ["vertex_normals", "sh_basis", "sh_shading", "lambert"]

_C1 = 2 / math.sqrt(3)
_C2 = math.sqrt(15) / 4
_C20 = math.sqrt(5) / 8
_C22 = math.sqrt(15) / 8


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Compute area-weighted unit vertex normals.

    Each triangle adds its unnormalised normal ``(v1 - v0) x (v2 - v0)`` (length
    twice its area, direction by the counter-clockwise right-hand rule) to its
    three vertices; sums are then normalised. Vertices in no triangle (or whose
    contributions cancel) get a zero normal.

    Args:
        verts: [B, V, 3] or [V, 3] float vertex positions.
        faces: [F, 3] int32 or int64 vertex indices, counter-clockwise seen
            from outside.

    Returns:
        Unit normals of the same shape and dtype as ``verts``, differentiable.

    Raises:
        InputError: on wrong shapes, dtypes or out-of-range indices.
    """
    if not isinstance(verts, torch.Tensor) or not verts.is_floating_point():
        raise InputError(f"verts must be a float tensor, got {type(verts).__name__}")
    if verts.dim() not in (2, 3) or verts.shape[-1] != 3:
        raise InputError(f"verts must be [B, V, 3] or [V, 3], got shape {tuple(verts.shape)}")
    faces = _check_faces(faces, verts.shape[-2])
    # index_select, not verts[..., faces, :]: the backward of advanced indexing is a parallel
    # index_put_(accumulate=True) with atomic float adds on the CPU, whose summation order (and so
    # the gradient's last bits) changes from run to run; index_select's backward (index_add) is serial.
    v = verts.index_select(-2, faces.reshape(-1)).unflatten(-2, (faces.shape[0], 3))  # [..., F, 3, 3]
    fn = torch.linalg.cross(v[..., 1, :] - v[..., 0, :], v[..., 2, :] - v[..., 0, :])
    n = torch.zeros_like(verts)
    for k in range(3):
        n = n.index_add(-2, faces[:, k], fn)
    return F.normalize(n, dim=-1, eps=1e-20)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """Evaluate the 9 irradiance-convolved SH basis functions (see module docstring).

    Args:
        normals: [..., 3] float unit normals (x, y, z); not renormalised.

    Returns:
        [..., 9] basis values in the order of the module table; basis[..., 0] == 1.

    Raises:
        InputError: if ``normals`` is not a float [..., 3] tensor.
    """
    if not isinstance(normals, torch.Tensor) or not normals.is_floating_point() or normals.shape[-1:] != (3,):
        raise InputError("normals must be a float [..., 3] tensor")
    x, y, z = normals.unbind(-1)
    return torch.stack(
        [
            torch.ones_like(x),
            _C1 * y,
            _C1 * z,
            _C1 * x,
            _C2 * x * y,
            _C2 * y * z,
            _C20 * (3 * z * z - 1),
            _C2 * x * z,
            _C22 * (x * x - y * y),
        ],
        dim=-1,
    )


def sh_shading(normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Compute Lambertian SH shading ``E(n) / pi`` per RGB channel.

    Args:
        normals: [..., 3] float unit normals; with batched ``coeffs`` the
            first dimension is the batch B (e.g. [B, H, W, 3] or [B, V, 3]).
        coeffs: [9, 3] or [B, 9, 3] float lighting coefficients per channel,
            in the convention of the module docstring (``coeffs[0]`` = mean
            incident radiance; ambient only => shading == coeffs[0]).

    Returns:
        [..., 3] shading (normals' leading shape), differentiable w.r.t. both.

    Raises:
        InputError: on wrong shapes or dtypes, or a batch size mismatch.
    """
    basis = sh_basis(normals)
    if not isinstance(coeffs, torch.Tensor) or not coeffs.is_floating_point():
        raise InputError("coeffs must be a float tensor")
    if coeffs.dim() == 2 and coeffs.shape == (9, 3):
        return basis @ coeffs.to(basis.dtype)
    if coeffs.dim() == 3 and coeffs.shape[1:] == (9, 3):
        batch = coeffs.shape[0]
        if normals.dim() < 2 or normals.shape[0] not in (1, batch):
            raise InputError(
                f"normals {tuple(normals.shape)} need a leading batch dimension matching coeffs batch {batch}"
            )
        c = coeffs.to(basis.dtype).view(batch, *([1] * (normals.dim() - 2)), 9, 3)
        return (basis.unsqueeze(-2) @ c).squeeze(-2)
    raise InputError(f"coeffs must be [9, 3] or [B, 9, 3], got shape {tuple(coeffs.shape)}")


def lambert(albedo: torch.Tensor, normals: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Shade a Lambertian surface: ``albedo * sh_shading(normals, coeffs)``.

    Args:
        albedo: [..., 3] float linear RGB albedo in [0, 1], broadcastable
            against the shading.
        normals: [..., 3] float unit normals (see ``sh_shading``).
        coeffs: [9, 3] or [B, 9, 3] lighting coefficients (see module docstring).

    Returns:
        [..., 3] outgoing radiance (linear RGB), differentiable w.r.t. all inputs.

    Raises:
        InputError: on wrong shapes or dtypes.
    """
    if not isinstance(albedo, torch.Tensor) or not albedo.is_floating_point() or albedo.shape[-1:] != (3,):
        raise InputError("albedo must be a float [..., 3] tensor")
    return albedo * sh_shading(normals, coeffs)

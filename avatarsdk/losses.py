"""What the latent optimisations share: the face-part render mesh, ST-LPIPS terms, display encoding, schedule.

:mod:`avatarsdk.invert` (G's latent for known UV maps, the paper's eq. 1) and
:mod:`avatarsdk.refine` (G's latent for a photo, Sec. 3.3) both render the face
part of the ICT head (:func:`face_mesh`, :func:`face_vertices`) with
:func:`avatarsdk.render.render_head`, encode the renders for the perceptual
loss (:func:`display_srgb`), compare them with ST-LPIPS against cached target
features (:func:`perceptual`, :func:`lpips_features`, :func:`lpips_to`) and
follow StyleGAN2's projector learning-rate schedule (:func:`projector_lr`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from avatarsdk.errors import InputError
from avatarsdk.nn.perceptual import PerceptualLoss
from avatarsdk.rigs import PARTS, blend_shapes, load_ict
from avatarsdk.uvmap import skin_vertex_ids

__all__ = [
    "FaceMesh",
    "display_srgb",
    "face_mesh",
    "face_vertices",
    "lpips_features",
    "lpips_to",
    "perceptual",
    "projector_lr",
]


@dataclass(frozen=True, eq=False)
class FaceMesh:
    """The face part of the ICT head as a standalone mesh, with what :func:`face_vertices` needs.

    Its triangles are the skin triangles of ICT's face part (vertices
    0-9408, ~18,500 triangles): what a photo's face region shows.
    """

    ids: torch.Tensor  # [Vf] int64 ICT vertex ids of the face-part vertices used by its skin triangles
    faces: torch.Tensor  # [F, 3] int64 indices into ids
    corner_faces: torch.Tensor  # [F, 3] int64 = arange(3F): per-corner attribute indices
    corner_uv: torch.Tensor  # [3F, 2] float32 unified head UV of each corner
    neutral: torch.Tensor  # [Vf, 3] float32 generic neutral positions
    uv_local: torch.Tensor  # [Vu] int64 positions in ids of vertices with a head UV
    uv_in_skin: torch.Tensor  # [Vu] int64 their positions in skin_vertex_ids order
    fit_local: torch.Tensor  # [Vn] int64 positions in ids of vertices without a head UV
    fit_basis: torch.Tensor  # [K, Vn, 3] float32 identity deltas of those vertices
    pinv: torch.Tensor  # [K, 3S] float32 pseudo-inverse of the skin rows of the identity basis
    skin_uv: torch.Tensor  # [S, 2] float32 head UV of every skin vertex


@functools.lru_cache(maxsize=1)
def face_mesh() -> FaceMesh:
    """The face part of the ICT head as a standalone mesh (cached)."""
    model = load_ict()
    topo = model.topology
    skin = topo.tri_material == topo.materials.index("skin")
    sel = np.nonzero(skin & (topo.triangles < PARTS["face"][1]).all(1))[0]
    tris = topo.triangles[sel].astype(np.int64)
    ids = np.unique(tris)
    local = np.full(topo.num_vertices, -1, np.int64)
    local[ids] = np.arange(len(ids))
    skin_ids = skin_vertex_ids(topo)
    pos_in_skin = np.full(topo.num_vertices, -1, np.int64)
    pos_in_skin[skin_ids] = np.arange(len(skin_ids))
    has_uv = pos_in_skin[ids] >= 0
    basis = model.identity_basis.astype(np.float64)  # [K, V, 3]
    a = basis[:, skin_ids].reshape(basis.shape[0], -1).T  # [3S, K], rows ordered (vertex, xyz)
    pinv = np.linalg.pinv(a)  # [K, 3S]: the least-squares solution of offset_map_to_mesh
    nf = len(sel)
    return FaceMesh(
        ids=torch.from_numpy(ids),
        faces=torch.from_numpy(local[tris]),
        corner_faces=torch.arange(3 * nf).view(nf, 3),
        corner_uv=torch.from_numpy(np.ascontiguousarray(topo.corner_uv[sel].reshape(-1, 2), np.float32)),
        neutral=torch.from_numpy(model.neutral[ids].astype(np.float32)),
        uv_local=torch.from_numpy(np.nonzero(has_uv)[0]),
        uv_in_skin=torch.from_numpy(pos_in_skin[ids[has_uv]]),
        fit_local=torch.from_numpy(np.nonzero(~has_uv)[0]),
        fit_basis=torch.from_numpy(basis[:, ids[~has_uv]].astype(np.float32)),
        pinv=torch.from_numpy(pinv.astype(np.float32)),
        skin_uv=torch.from_numpy(topo.head_uv[skin_ids].astype(np.float32)),
    )


def face_vertices(offsets: torch.Tensor) -> torch.Tensor:
    """Face-part vertices of heads given by offset maps (what :func:`render_inversion_views` draws).

    Equal (to float32 rounding) to ``offset_map_to_mesh(offsets)[:, ids]`` for the
    face-part vertex ids ``ids`` of the render mesh, at a fraction of the cost.

    Args:
        offsets: [B, 3, R, R] float offset maps in metres (channels first, as G decodes them).

    Returns:
        [B, Vf, 3] float vertices in metres, differentiable w.r.t. ``offsets``.
    """
    if offsets.ndim != 4 or offsets.shape[1] != 3:
        raise InputError(f"offsets: expected [B, 3, R, R], got {list(offsets.shape)}")
    fm = face_mesh()
    dev, dt = offsets.device, offsets.dtype
    b = offsets.shape[0]
    grid = (fm.skin_uv.to(dev, dt) * 2 - 1).view(1, -1, 1, 2).expand(b, -1, -1, -1)
    skin = F.grid_sample(offsets, grid, mode="bilinear", padding_mode="border", align_corners=False)
    skin = skin[..., 0].transpose(1, 2)  # [B, S, 3]
    coeffs = skin.reshape(b, -1) @ fm.pinv.to(dev, dt).T  # [B, K]
    fitted = blend_shapes(coeffs, fm.fit_basis.to(dev, dt))  # [B, Vn, 3]
    out = offsets.new_zeros(b, fm.ids.numel(), 3)
    out = out.index_copy(1, fm.uv_local.to(dev), skin.index_select(1, fm.uv_in_skin.to(dev)))
    out = out.index_copy(1, fm.fit_local.to(dev), fitted)
    return out + fm.neutral.to(dev, dt)


def display_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear -> sRGB in [0, 1], with finite gradients everywhere (no 0 * inf at black)."""
    x = x.clamp(0.0, 1.0)
    low = x * 12.92
    high = 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055
    return torch.where(x <= 0.0031308, low, high)


@functools.lru_cache(maxsize=2)
def perceptual(net: str) -> PerceptualLoss:
    """The ST-LPIPS network ``net`` ("alex" or "vgg"), sha256-checked and loaded once."""
    return PerceptualLoss.load(net)


def lpips_features(p, x: torch.Tensor) -> list[torch.Tensor]:
    """Unit-normalised LPIPS features of images [B, 3, H, W] in [0, 1] (as ``PerceptualLoss.forward``)."""
    return [f / (torch.sqrt((f * f).sum(1, keepdim=True)) + p.cfg.eps) for f in p.features(x)]


def lpips_to(p, x: torch.Tensor, target_feats: list[torch.Tensor]) -> torch.Tensor:
    """ST-LPIPS distance [B] of images x to images whose features were precomputed (== p(x, target))."""
    total = 0.0
    for f, t, lin in zip(lpips_features(p, x), target_feats, p.lins):
        total = total + lin((f - t) ** 2).mean(dim=(1, 2, 3))
    return total


def projector_lr(step: int, steps: int, lr: float, rampup: float, rampdown: float) -> float:
    """StyleGAN2 projector schedule: linear warm-up over ``rampup``, cosine ramp-down over ``rampdown``
    (fractions of ``steps``) to 0 at the end; ``lr`` in between."""
    t = step / steps
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp = ramp * min(1.0, (t + 1.0 / steps) / rampup)
    return lr * ramp

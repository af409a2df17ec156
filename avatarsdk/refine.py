"""Perceptual refinement of G's latent against the photo (the paper's Sec. 3.3).

Starting from the regressor's guess ``w0`` (or G's mean latent, the paper's
Fig. 11 ablation), optimise ``w`` in W+ so that G's head, rendered with the
photo's camera and light and blended into the photo, looks like the photo::

    L(w) = lambda_w * mean((w - w0)^2)                       latent prior
         + lambda_p * ST-LPIPS(I0, I)                        perceptual
         + lambda_i * (1 - cos(id(I0), id(I)))               identity
         + lambda_c * |lowpass(I0) - lowpass(I)|_1           colour (ours)
         + lambda_l * mean_k w_k |pi(X_k(w)) - l_k|^2 / s^2  landmarks (ours)
         + lambda_s * excess(mean face albedo, real skin)     skin range (ours)

The first three terms are the paper's. Two are added, each because the
measurements asked for it (``tests/test_refine.py``, the README's ablation):

* **colour**: ST-LPIPS barely sees a uniform tint, so with the paper's terms
  alone the skin drifted green or pink; the L1 of 1/16-resolution images
  (tone, not detail) holds it.
* **skin range**: the refinement matches the photo under the fitted light,
  so where that light is wrong (a photo lit pink and blue) the albedo can
  run to white or to a hue no skin has while the render still matches; the
  mean albedo of the face region is held inside the range of real skin
  (:func:`avatarsdk.albedo.skin_range_excess`; zero inside the range).
* **landmarks**: renders from one view barely constrain the shape: on a
  photo of a head G made, the paper's terms brought the albedo L1 from 0.030
  to 0.012 but moved the face from 1.50 to 1.60 mm away from the truth. The
  face-mesh landmarks of the photo against the same surface points of G's
  head (through the fitted camera; weights and contour exclusion as in the
  fit) bring it to 0.72 mm.

* ``I`` is a square crop of the photo around the face, ``I0`` the same crop
  with G's face (skin triangles of the face part, albedo x SH shading,
  sRGB-encoded) pasted in where the *face region* (face-mesh oval minus eyes
  and mouth, times the selfie segmentation: :func:`avatarsdk.detect.face_region`,
  the paper's PSPNet role) and the render's coverage agree. Eyes, mouth,
  hair and background stay the photo's, so the losses compare faces, not
  backgrounds.
* Camera, SH light and expression come from the fitting stage
  (:func:`avatarsdk.fit.fit_photo`): there is no training data here for the
  paper's ResNet50 camera regressor. The expression is added to G's neutral
  geometry with ICT's linear expression shapes so a smiling photo compares
  with a smiling render; the avatar keeps the neutral head.
* ``id`` is the dlib ResNet port (:mod:`avatarsdk.nn.identity`) on the chip
  cut from the photo's landmarks (the same chip transform for ``I`` and ``I0``).
* Coarse to fine: early steps render and compare at a small crop size, later
  ones at a larger one (:attr:`RefineConfig.schedule`).

Adam with the StyleGAN2 projector's learning-rate ramp; the latent with the
lowest loss is kept; early stop when the loss has not improved by
``min_delta`` (relative) in ``patience`` steps. No randomness: same inputs,
same result.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from avatarsdk.albedo import skin_range_excess
from avatarsdk.errors import InputError
from avatarsdk.optim import Adam
from avatarsdk.nn.stylegan import Generator, decode_maps
from avatarsdk.datatypes import FACE_MESH_POINTS
from avatarsdk.losses import display_srgb, face_mesh, face_vertices, lpips_features, lpips_to, perceptual, projector_lr
from avatarsdk.nn.identity import _default_encoder, face_chip, identity_loss, points5_from_landmarks
from avatarsdk.render import gl_matrices, render_head
from avatarsdk.render.camera import Camera
from avatarsdk.rigs import blend_shapes, load_ict
from avatarsdk.rigs.mediapipe_map import load_correspondence
from avatarsdk.paint import face_region_mask

log = logging.getLogger(__name__)

__all__ = ["RefineConfig", "RefineTarget", "Refinement", "refine", "render_into_photo"]

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class RefineConfig:
    """Settings of the refinement.

    Attributes:
        steps: maximum Adam steps (the paper: 200; 100 here, see the README's timing table).
        lr: peak learning rate on w.
        lr_rampup: fraction of the steps of linear warm-up.
        lr_rampdown: fraction of the steps of cosine ramp-down.
        latent: lambda_w, weight of mean((w - w0)^2).
        lpips: lambda_p, weight of ST-LPIPS between the blended render and the photo.
        identity: lambda_i, weight of 1 - cos of the dlib embeddings.
        colour: lambda_c, weight of the low-pass colour term (not in the paper:
            ST-LPIPS is nearly blind to a uniform tint, so without it the skin
            tone drifts; see the module docstring).
        landmarks: lambda_l, weight of the mean squared distance, in face-box
            sides, between the photo's face-mesh landmarks and the same surface
            points of G's head projected by the fitted camera (not in the paper:
            the renders alone barely constrain the shape, see the README).
        skin: lambda_s, weight of how far the face region's mean albedo lies outside
            the range of real skin (:func:`avatarsdk.albedo.skin_range_excess`; not in
            the paper: without it a wrongly fitted light can turn the head white).
        schedule: ((crop side in pixels, fraction of the steps it ends at), ...):
            coarse to fine; the last entry must end at 1.0.
        crop_scale: crop side / the detector's face-box side.
        patience: stop when the best loss has not improved for this many steps
            (0: never stop early).
        min_delta: relative improvement that counts.
        lpips_net: "alex" or "vgg".
        invert_steps: steps of the inversion of the fit into G that starts the
            refinement with ``init="fit"`` (:func:`avatarsdk.pipeline.refine_stage`).
        geometry: lambda_g, weight of the mean squared distance in mm^2 between G's neutral
            face vertices and an ``anchor`` head (the fit's, with ``init="fit"``); used only
            when :func:`refine` is given an anchor. Not in the paper: the renders constrain the
            shape less well than the fit's landmarks and shading did, and without it refinement
            from the fit moved the face 0.7-1.3 mm away from the ground truth on the benchmark.
    """

    steps: int = 100
    lr: float = 0.05
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    latent: float = 1.0
    lpips: float = 1.0
    identity: float = 1.0
    colour: float = 1.0
    landmarks: float = 1000.0
    skin: float = 10.0
    schedule: tuple[tuple[int, float], ...] = ((128, 0.5), (224, 1.0))
    crop_scale: float = 1.6
    patience: int = 30
    min_delta: float = 2e-3
    lpips_net: str = "alex"
    invert_steps: int = 100
    geometry: float = 10.0

    def __post_init__(self) -> None:
        for name in ("steps", "invert_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("lr", "lr_rampup", "lr_rampdown", "latent", "lpips", "identity", "colour", "landmarks",
                     "skin", "crop_scale", "min_delta", "geometry"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.lr > 0 or not self.crop_scale >= 1.0:
            raise InputError(f"lr must be > 0 and crop_scale >= 1, got {self.lr}, {self.crop_scale}")
        if self.lr_rampup + self.lr_rampdown > 1:
            raise InputError("lr_rampup + lr_rampdown must be <= 1")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise InputError(f"patience must be an int >= 0, got {self.patience!r}")
        s = self.schedule
        ok = isinstance(s, tuple) and len(s) > 0 and all(
            isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], int) and not isinstance(e[0], bool)
            and 64 <= e[0] <= 1024 and isinstance(e[1], (int, float)) and 0 < e[1] <= 1 for e in s)
        if not ok or float(s[-1][1]) != 1.0 or any(a[1] >= b[1] for a, b in zip(s, s[1:])):
            raise InputError(f"schedule must be ((size 64..1024, end fraction), ...) with increasing fractions "
                             f"ending at 1.0, got {s!r}")
        if self.lpips_net not in ("alex", "vgg"):
            raise InputError(f"lpips_net must be 'alex' or 'vgg', got {self.lpips_net!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, cosine ramp-down."""
        return projector_lr(step, self.steps, self.lr, self.lr_rampup, self.lr_rampdown)

    def size_at(self, step: int) -> int:
        """Crop side of step ``step``."""
        t = (step + 0.5) / self.steps
        for size, end in self.schedule:
            if t <= end:
                return size
        return self.schedule[-1][0]


@dataclass(frozen=True, eq=False)
class RefineTarget:
    """The photo and what the fitting stage recovered from it.

    Attributes:
        image: [H, W, 3] uint8 sRGB photo.
        points: [478, 2+] float mediapipe landmarks in its pixels.
        box: (x0, y0, x1, y1) face box in pixels.
        region: [H, W] float face region in [0, 1] (where G's face may replace the photo).
        camera: the photo's fitted camera (OpenCV, pixel centres at integers).
        light: [9, 3] SH light (photo = albedo x shading x exposure).
        expression: [53] ICT expression weights of the photo.
        exposure: photo brightness scale relative to the de-lit albedo
            (:class:`avatarsdk.albedo.Exposure`'s ``scale``; 1 if unknown).
    """

    image: np.ndarray
    points: np.ndarray
    box: tuple[float, float, float, float]
    region: np.ndarray
    camera: Camera
    light: np.ndarray
    expression: np.ndarray
    exposure: float = 1.0

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(f"image must be [H, W, 3] uint8, got {img.shape} {img.dtype}")
        if np.asarray(self.region).shape != img.shape[:2]:
            raise InputError(f"region {np.asarray(self.region).shape} must match the image {img.shape[:2]}")
        if np.asarray(self.points).ndim != 2 or np.asarray(self.points).shape[0] < FACE_MESH_POINTS:
            raise InputError(f"points must be [478, 2+] landmarks, got {np.asarray(self.points).shape}")
        if np.asarray(self.light).shape != (9, 3) or np.asarray(self.expression).shape != (53,):
            raise InputError("light must be [9, 3] and expression [53]")
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise InputError(f"empty face box {self.box}")
        if not (math.isfinite(self.exposure) and self.exposure > 0):
            raise InputError(f"exposure must be > 0, got {self.exposure}")


@dataclass(frozen=True, eq=False)
class Refinement:
    """The result of :func:`refine`.

    Attributes:
        w: [L, w_dim] float32 refined latent (the best step's).
        w0: [L, w_dim] float32 starting latent.
        albedo: [3, R, R] float32 linear albedo G decodes from ``w``.
        offsets: [3, R, R] float32 offsets in metres.
        history: term name -> per-step values (``latent``, ``lpips``, ``identity``, ``total``).
        steps: steps run (fewer than configured after an early stop).
        best_step: step whose latent is returned.
        seconds: optimisation wall time.
        initial: loss terms of ``w0`` at the final crop size.
        final: loss terms of ``w`` at the final crop size.
        start: how ``w0`` was found (filled by :func:`avatarsdk.pipeline.refine_stage`; empty here).
        start_albedo: [3, R, R] float32 linear albedo G decodes from ``w0``.
        start_offsets: [3, R, R] float32 offsets of ``w0`` in metres (with ``start_albedo``,
            what the refinement changed: :func:`avatarsdk.pipeline.check_refinement` adds that
            change to the fit's own head when the start was the fit's inversion).
    """

    w: torch.Tensor
    w0: torch.Tensor
    albedo: torch.Tensor
    offsets: torch.Tensor
    history: dict
    steps: int
    best_step: int
    seconds: float
    initial: dict
    final: dict
    start: dict = field(default_factory=dict)
    start_albedo: torch.Tensor | None = None
    start_offsets: torch.Tensor | None = None


# ---------------------------------------------------------------------------
# Rendering into the photo
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Crop:
    """The photo crop at one size, and what every step at that size shares."""

    size: int
    photo: torch.Tensor  # [1, 3, S, S] sRGB in [0, 1]
    region: torch.Tensor  # [S, S] face region in [0, 1]
    clip: torch.Tensor  # [4, 4] projection @ flip @ view for the crop
    points5: torch.Tensor  # [5, 2] dlib alignment points in crop pixels
    photo_feats: list  # LPIPS features of the photo crop
    photo_id: torch.Tensor  # [1, 128] dlib embedding of the photo crop


def _crop_box(target: RefineTarget, scale: float) -> tuple[int, int, int]:
    x0, y0, x1, y1 = target.box
    side = max(16, int(round(scale * max(x1 - x0, y1 - y0))))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def _crop_pixels(array: np.ndarray, left: int, top: int, side: int) -> np.ndarray:
    """array[top:top+side, left:left+side], zero-padded outside the image."""
    h, w = array.shape[:2]
    out = np.zeros((side, side) + array.shape[2:], array.dtype)
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + side, w), min(top + side, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top:sy1 - top, sx0 - left:sx1 - left] = array[sy0:sy1, sx0:sx1]
    return out


def _make_crop(target: RefineTarget, size: int, scale: float, lpips, encoder,
               device: torch.device | str = "cpu") -> _Crop:
    left, top, side = _crop_box(target, scale)
    s = size / side
    img = torch.from_numpy(_crop_pixels(np.asarray(target.image), left, top, side)).permute(2, 0, 1)[None]
    photo = F.interpolate(img.float() / 255.0, size=(size, size), mode="area").to(device)
    reg = torch.from_numpy(_crop_pixels(np.asarray(target.region, np.float32), left, top, side))[None, None]
    region = F.interpolate(reg, size=(size, size), mode="area")[0, 0].to(device)
    # Crop pixel j covers original pixels [left - 0.5 + j / s, left - 0.5 + (j + 1) / s): u' = (u - left + 0.5) s - 0.5.
    clip = gl_matrices(target.camera.crop(left, top, side, side), (size, size))
    p5 = (torch.as_tensor(points5_from_landmarks(target.points)) - torch.tensor([left, top]) + 0.5) * s - 0.5
    with torch.no_grad():
        feats = lpips_features(lpips, photo) if lpips is not None else None
        photo_id = encoder(face_chip(photo, p5[None])) if encoder is not None else None
    return _Crop(size=size, photo=photo, region=region, clip=clip.to(device), points5=p5,
                 photo_feats=feats,
                 photo_id=photo_id)


def render_into_photo(vertices: torch.Tensor, albedo: torch.Tensor, target: RefineTarget, crop: _Crop
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Render face-part vertices with G's albedo into the photo crop.

    Args:
        vertices: [Vf, 3] face-part vertices (:func:`avatarsdk.invert.face_vertices` order), metres.
        albedo: [3, R, R] linear albedo map.
        target: the photo's camera, light and exposure.
        crop: the crop (size, camera, region).

    Returns:
        (I0 [1, 3, S, S] sRGB in [0, 1]: the render blended into the photo crop,
        [S, S] blend mask).
    """
    fm = face_mesh()
    dev = vertices.device
    light = torch.as_tensor(np.asarray(target.light), dtype=torch.float32, device=dev)
    out = render_head(vertices[None], fm.faces.to(dev), crop.clip, (crop.size, crop.size),
                      corner_uv=fm.corner_uv.to(dev), corner_faces=fm.corner_faces.to(dev),
                      albedo=albedo.permute(1, 2, 0), light=light)
    colour = out.albedo * out.shading * float(target.exposure)  # [1, S, S, 3]
    render = display_srgb(colour).permute(0, 3, 1, 2)  # [1, 3, S, S]
    mask = out.mask[0].float() * crop.region
    blended = mask * render + (1.0 - mask) * crop.photo
    return blended, mask


# ---------------------------------------------------------------------------
# Refinement
# ---------------------------------------------------------------------------


def _expression_deltas(expression: np.ndarray) -> torch.Tensor:
    """[Vf, 3] ICT expression displacement of the face-part vertices."""
    basis = load_ict().expression_basis[:, face_mesh().ids.numpy()]  # [53, Vf, 3]
    return torch.from_numpy(blend_shapes(np.asarray(expression, np.float64), basis).astype(np.float32))


def _colour_term(blended: torch.Tensor, photo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 of 1/16-resolution (box-filtered) images over the blended area: tone and tint, not detail."""
    k = max(1, blended.shape[-1] // 16)
    diff = (F.avg_pool2d(blended, k) - F.avg_pool2d(photo, k)).abs().sum(1)  # [1, s, s]
    weight = F.avg_pool2d(mask[None, None], k)[:, 0]
    return diff.sum() / (3.0 * weight.sum().clamp_min(1e-6))


@dataclass(frozen=True, eq=False)
class _Landmarks:
    """Fixed face-mesh points on the face-part mesh and their observed pixels."""

    corners: torch.Tensor  # [K, 3] int64 face-mesh-local vertex ids of each point's triangle
    bary: torch.Tensor  # [K, 3] barycentrics
    weight: torch.Tensor  # [K] (mediapipe_map's fitting weights; 0 on the silhouette contour)
    observed: torch.Tensor  # [K, 2] photo pixels
    scale: float  # face-box side in pixels


def _landmarks(target: RefineTarget, device) -> _Landmarks:
    cmap = load_correspondence()
    ids = face_mesh().ids.numpy()
    corners = cmap.corners(load_ict().topology.triangles)  # [468, 3] ICT vertex ids
    pos = np.clip(np.searchsorted(ids, corners), 0, len(ids) - 1)
    ok = (ids[pos] == corners).all(1) & (cmap.weight > 0)
    x0, y0, x1, y1 = target.box
    return _Landmarks(corners=torch.from_numpy(pos[ok]).to(device),
                      bary=torch.from_numpy(cmap.bary[ok].astype(np.float32)).to(device),
                      weight=torch.from_numpy(cmap.weight[ok].astype(np.float32)).to(device),
                      observed=torch.from_numpy(np.asarray(target.points)[:FACE_MESH_POINTS, :2][ok].astype(np.float32)).to(device),
                      scale=float(max(x1 - x0, y1 - y0)))


def _landmark_term(verts: torch.Tensor, lm: _Landmarks, target: RefineTarget) -> torch.Tensor:
    """Weighted mean squared landmark distance in face-box sides (camera as in :mod:`avatarsdk.fit`)."""
    pts = (verts[lm.corners] * lm.bary[..., None]).sum(1)  # [K, 3]
    camera = target.camera
    rot = torch.as_tensor(np.asarray(camera.rotation), dtype=verts.dtype, device=verts.device)
    trans = torch.as_tensor(np.asarray(camera.translation), dtype=verts.dtype, device=verts.device)
    cam = pts @ rot.T + trans
    uv = torch.stack([camera.fx * cam[:, 0] / cam[:, 2] + camera.cx,
                      camera.fy * cam[:, 1] / cam[:, 2] + camera.cy], 1)
    r = ((uv - lm.observed) / lm.scale).pow(2).sum(1)
    return (lm.weight * r).sum() / lm.weight.sum()


def _start(G: Generator, w0: torch.Tensor | None) -> torch.Tensor:
    cfg = G.cfg
    if w0 is None:
        return G.mapping.w_avg.detach().float()[None].expand(cfg.num_ws, -1).clone()
    if not isinstance(w0, torch.Tensor) or not w0.is_floating_point():
        raise InputError(f"w0 must be a float tensor, got {type(w0).__name__}")
    w = w0.detach().float()
    if w.shape == (1, cfg.num_ws, cfg.w_dim):
        w = w[0]
    if w.shape != (cfg.num_ws, cfg.w_dim) or not torch.isfinite(w).all():
        raise InputError(f"w0: expected finite [{cfg.num_ws}, {cfg.w_dim}], got {list(w0.shape)}")
    return w.clone()


def refine(
    G: Generator,
    target: RefineTarget,
    w0: torch.Tensor | None = None,
    config: RefineConfig | None = None,
    *,
    progress: Progress | None = None,
    anchor: np.ndarray | torch.Tensor | None = None,
) -> Refinement:
    """Optimise G's latent so that its head, rendered into the photo, matches the photo.

    Args:
        G: the 6-channel UV generator (frozen here; its flags and mode are restored).
        target: the photo and its fitted camera, light and expression.
        w0: [L, w_dim] (or [1, L, w_dim]) start and prior latent, e.g. R's
            prediction; None: G's mean latent (the paper's Fig. 11 baseline).
        config: settings (default :class:`RefineConfig`).
        progress: optional ``callback("refine", fraction)`` after each step.
        anchor: optional [Vf, 3] neutral face-part vertices in metres
            (:func:`avatarsdk.losses.face_vertices` order) that G's head is kept near, with
            weight ``config.geometry`` (the ``geometry`` term, in its history only then).

    Returns:
        :class:`Refinement`.

    Raises:
        InputError: bad G, w0, target or config.
        WeightsError: ST-LPIPS or dlib weights missing or tampered.
    """
    cfg = config or RefineConfig()
    if not isinstance(cfg, RefineConfig):
        raise InputError(f"config must be a RefineConfig, got {type(cfg).__name__}")
    if not isinstance(G, Generator) or G.cfg.out_channels != 6:
        raise InputError(f"G must be a 6-channel Generator, got {type(G).__name__}")
    if not isinstance(target, RefineTarget):
        raise InputError(f"target must be a RefineTarget, got {type(target).__name__}")
    dev = next(G.parameters()).device
    start = _start(G, w0).to(dev)
    lpips = perceptual(cfg.lpips_net).to(dev) if cfg.lpips > 0 else None  # lpips=0: ST-LPIPS not loaded
    encoder = _default_encoder().to(dev) if cfg.identity > 0 else None
    expr = _expression_deltas(target.expression).to(dev)
    lms = _landmarks(target, dev)
    crops: dict[int, _Crop] = {}
    face = torch.from_numpy(face_region_mask(G.cfg.resolution).astype(np.float32)).to(dev)
    if anchor is not None:
        anchor = torch.as_tensor(np.asarray(anchor, np.float32), device=dev)
        if anchor.shape != (len(face_mesh().ids), 3) or not torch.isfinite(anchor).all():
            raise InputError(f"anchor must be [{len(face_mesh().ids)}, 3] finite face vertices, "
                             f"got {tuple(anchor.shape)}")

    def crop_of(size: int) -> _Crop:
        if size not in crops:
            crops[size] = _make_crop(target, size, cfg.crop_scale, lpips, encoder, dev)
        return crops[size]

    def terms(ws: torch.Tensor, crop: _Crop) -> dict[str, torch.Tensor]:
        albedo, offsets = decode_maps(G.synthesis(ws), G.cfg)
        neutral = face_vertices(offsets)[0]
        verts = neutral + expr
        blended, mask = render_into_photo(verts, albedo[0], target, crop)
        out = {"latent": (ws[0] - start).pow(2).mean(), "lpips": (lpips_to(lpips, blended, crop.photo_feats)[0]
                                                              if lpips is not None else blended.new_zeros(())),
               "colour": _colour_term(blended, crop.photo, mask), "landmarks": _landmark_term(verts, lms, target),
               "skin": skin_range_excess((albedo[0] * face).sum((1, 2)) / face.sum())}
        if encoder is not None:
            out["identity"] = identity_loss(encoder(face_chip(blended, crop.points5[None])), crop.photo_id)[0]
        else:
            out["identity"] = blended.new_zeros(())
        out["total"] = (cfg.latent * out["latent"] + cfg.lpips * out["lpips"] + cfg.identity * out["identity"]
                        + cfg.colour * out["colour"] + cfg.landmarks * out["landmarks"] + cfg.skin * out["skin"])
        if anchor is not None:
            out["geometry"] = ((neutral - anchor) * 1000.0).pow(2).sum(-1).mean()  # mm^2
            out["total"] = out["total"] + cfg.geometry * out["geometry"]
        return out

    flags = [p.requires_grad for p in G.parameters()]
    mode = G.training
    G.eval().requires_grad_(False)
    param = start.clone()[None].requires_grad_(True)
    opt = Adam([param], lr=cfg.lr)  # avatarsdk.optim: torch.optim.Adam without its import cost
    history: dict[str, list[float]] = {k: [] for k in ("latent", "lpips", "identity", "colour", "landmarks", "skin",
                                                        *(("geometry",) if anchor is not None else ()),
                                                        "total")}
    best, best_w, best_step, since = math.inf, param.detach().clone(), 0, 0
    t0 = time.perf_counter()
    steps_run = 0
    try:
        for step in range(cfg.steps):
            size = cfg.size_at(step)
            if step > 0 and size != cfg.size_at(step - 1):
                best, since = math.inf, 0  # losses at a new size are not comparable with the old ones
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
            values = terms(param, crop_of(size))
            for k in history:
                history[k].append(float(values[k].detach()))
            total = history["total"][-1]
            if not math.isfinite(total):
                raise InputError(f"refinement diverged at step {step} (loss {total}); lower the lr")
            if total < best * (1.0 - cfg.min_delta):
                since = 0
            else:
                since += 1
            if total < best:
                best, best_w, best_step = total, param.detach().clone(), step
            opt.zero_grad(set_to_none=True)
            values["total"].backward()
            opt.step()
            steps_run = step + 1
            if progress is not None:
                progress("refine", steps_run / cfg.steps)
            final_size = size == cfg.schedule[-1][0]
            if cfg.patience and final_size and since >= cfg.patience:
                log.debug("refine: early stop at step %d (best %d)", step, best_step)
                break
        seconds = time.perf_counter() - t0
        last = crop_of(cfg.schedule[-1][0])
        with torch.no_grad():
            end = terms(param, last)
            if float(end["total"]) < best and cfg.size_at(steps_run - 1) == last.size:
                best_w, best_step = param.detach().clone(), steps_run
            final = {k: float(v) for k, v in terms(best_w, last).items()}
            initial = {k: float(v) for k, v in terms(start[None], last).items()}
            albedo, offsets = decode_maps(G.synthesis(best_w), G.cfg)
            albedo0, offsets0 = decode_maps(G.synthesis(start[None]), G.cfg)
    finally:
        for p, f in zip(G.parameters(), flags):
            p.requires_grad_(f)
        G.train(mode)
    return Refinement(w=best_w[0].cpu().clone(), w0=start.cpu(), albedo=albedo[0].cpu().clone(),
                      offsets=offsets[0].cpu().clone(),
                      history={k: tuple(v) for k, v in history.items()}, steps=steps_run, best_step=best_step,
                      seconds=seconds, initial=initial, final=final, start_albedo=albedo0[0].cpu().clone(),
                      start_offsets=offsets0[0].cpu().clone())

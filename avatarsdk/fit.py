"""Fit the ICT model to one photo by analysis by synthesis (the paper's Sec. 3.2).

Face2Face-style, coarse to fine, all in PyTorch on the CPU:

1. rigid: camera rotation and translation from the landmarks, focal length held
   at a prior (a phone-like field of view);
2. landmarks: + identity (100) and expression (53) coefficients and the focal
   length, with the jaw contour re-assigned to the model's silhouette each step
   ("landmark marching": the contour of a turned head is where the surface
   turns away, not a fixed set of vertices);
3. photometric: + spherical-harmonics light (27) and a low-resolution albedo in
   the unified head UV, rendered with our rasterizer and compared to the photo on
   the skin mask, at 128 then 256 pixels, with the landmark term kept.

Energy (per stage, terms switched on as above)::

    E = w_lm  * mean_i ||pi(K, R, t, X_i(a, b)) - l_i||^2 / s^2           (landmarks)
      + w_ph  * mean_p |A(p) * S(n(p), L) - I(p)|  over unoccluded skin p (photometric)
      + w_id  * ||a||^2 / 100 + w_ex * ||b||^2 / 53                    (shape priors)
      + w_alb * ||grad A||^2 + w_tone * ||A - mean(A)||^2 ...           (albedo priors)
      + w_f   * (log f - log f0)^2                                     (focal prior)

with s the face size in pixels. The camera follows OpenCV: X_cam = R X + t, pixel
u = f X_cam.x / X_cam.z + cx (pixel centres at integers).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from avatarsdk.colour import srgb_to_linear as _srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.optim import Adam
from avatarsdk.render import intrinsics_to_projection, render_head
from avatarsdk.render.camera import Camera
from avatarsdk.render.shading import sh_shading, vertex_normals
from avatarsdk.rigs.model import FaceModel, blend_shapes

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

# ---------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FitResult:
    """What the fitting recovered from one photo.

    Attributes:
        identity: [100] float32 ICT identity coefficients.
        expression: [53] float32 ICT expression weights in [0, 1].
        camera: the photo's camera.
        light: [9, 3] float32 SH light (see :mod:`avatarsdk.render.shading`).
        albedo_lowres: [R, R, 3] float32 linear albedo in the unified head UV.
        timings: stage name -> seconds.
        losses: stage name -> final loss value.
    """

    identity: np.ndarray
    expression: np.ndarray
    camera: Camera
    light: np.ndarray
    albedo_lowres: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FitOptions:
    """Knobs of the fit. Defaults are the measured best on the fidelity benchmark."""

    rigid_steps: int = 60  # stage 1
    landmark_steps: int = 150  # stage 2
    photo_steps: tuple[tuple[int, int], ...] = ((128, 60), (256, 30))  # stage 3: (render size, steps)
    photometric: bool = True
    num_identity: int = 100
    w_landmark: float = 1.0
    w_photo: float = 4.0
    w_identity: float = 2e-3
    w_expression: float = 5e-3
    w_focal: float = 0.05
    albedo_res: int = 32
    fov_deg: float = 45.0  # prior field of view across the longer image side
    seed: int = 0


# ---------------------------------------------------------------------------
# Small differentiable helpers
# ---------------------------------------------------------------------------


def rodrigues(rvec: torch.Tensor) -> torch.Tensor:
    """Rotation matrix [3, 3] from an axis-angle vector [3] (differentiable, safe at 0)."""
    theta2 = (rvec * rvec).sum()
    theta = torch.sqrt(theta2 + 1e-16)
    k = rvec / theta
    kx = torch.stack([
        torch.stack([torch.zeros((), dtype=rvec.dtype), -k[2], k[1]]),
        torch.stack([k[2], torch.zeros((), dtype=rvec.dtype), -k[0]]),
        torch.stack([-k[1], k[0], torch.zeros((), dtype=rvec.dtype)]),
    ])
    eye = torch.eye(3, dtype=rvec.dtype)
    return eye + torch.sin(theta) * kx + (1 - torch.cos(theta)) * (kx @ kx)


def project(points: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor, focal: torch.Tensor,
            cx: float, cy: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Project [N, 3] world points: returns ([N, 2] pixels, [N] camera depth)."""
    cam = points @ rot.T + trans
    z = cam[:, 2].clamp_min(1e-4)
    return torch.stack([focal * cam[:, 0] / z + cx, focal * cam[:, 1] / z + cy], 1), cam[:, 2]


# ---------------------------------------------------------------------------
# The fitter
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LandmarkSpec:
    """Where observed landmarks sit on the ICT surface.

    Attributes:
        triangle: [K] int64 ICT triangle per landmark.
        bary: [K, 3] float32 barycentric coordinates in that triangle.
        weight: [K] float32 per-landmark weight.
        contour: [C] int64 indices (into the K landmarks) of the face contour,
            re-assigned to the silhouette during fitting.
    """

    triangle: np.ndarray
    bary: np.ndarray
    weight: np.ndarray
    contour: np.ndarray


class _Fitter:
    """Holds tensors shared by the stages of one fit (an implementation detail)."""

    def __init__(self, model: FaceModel, spec: LandmarkSpec, points2d: np.ndarray, size: tuple[int, int],
                 opts: FitOptions):
        self.model, self.spec, self.opts = model, spec, opts
        self.h, self.w = size
        self.cx, self.cy = (self.w - 1) / 2.0, (self.h - 1) / 2.0
        t = model.topology
        self.tris = torch.tensor(t.triangles, dtype=torch.long)
        # Landmark corner vertices and their bases (cheap evaluation of landmark positions).
        corners = t.triangles[spec.triangle]  # [K, 3]
        self.lm_vid = torch.from_numpy(corners).long()
        self.lm_bary = torch.tensor(spec.bary, dtype=torch.float32)
        self.mean = torch.tensor(model.neutral, dtype=torch.float32)
        self.id_basis = torch.tensor(model.identity_basis[: opts.num_identity], dtype=torch.float32)  # [I, V, 3]
        self.ex_basis = torch.tensor(model.expression_basis, dtype=torch.float32)  # [E, V, 3]
        self.obs = torch.tensor(points2d, dtype=torch.float32)
        self.lm_w = torch.tensor(spec.weight, dtype=torch.float32)
        span = points2d.max(0) - points2d.min(0)
        self.scale = float(max(span.max(), 1.0))
        self.contour = torch.from_numpy(spec.contour).long()
        # Contour candidates: face-part vertices in the jaw/cheek band of the mean head.
        v = model.neutral
        face = np.arange(t.parts["face"][1])
        chin_y = v[t.landmarks68[8], 1]
        eye_y = v[t.landmarks68[36], 1]
        band = face[(v[face, 1] > chin_y - 0.01) & (v[face, 1] < eye_y) & (v[face, 2] > v[t.landmarks68[0], 2] - 0.04)]
        self.cand = torch.from_numpy(band).long()
        self.cand_tris = self._vertex_triangles(band)

    def _vertex_triangles(self, ids: np.ndarray) -> torch.Tensor:
        # Triangles around the candidate vertices, for their normals.
        sel = np.isin(self.model.topology.triangles, ids).any(1)
        return torch.from_numpy(self.model.topology.triangles[sel]).long()

    def vertices(self, a: torch.Tensor, b: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """Posed vertices (all, or the subset ``ids``): mean + id + expression."""
        if ids is None:
            return self.mean + blend_shapes(a, self.id_basis) + blend_shapes(b, self.ex_basis)
        return self.mean[ids] + blend_shapes(a, self.id_basis[:, ids]) + blend_shapes(b, self.ex_basis[:, ids])

    def _subset(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, identity basis, expression basis) restricted to vertices ``ids`` (gathered once)."""
        return self.mean[ids], self.id_basis[:, ids], self.ex_basis[:, ids]

    def _evaluate(self, sub, a, b) -> torch.Tensor:
        mean, ib, eb = sub
        return mean + blend_shapes(a, ib) + blend_shapes(b, eb)

    def landmark_points(self, a, b) -> torch.Tensor:
        if not hasattr(self, "_lm_sub"):
            self._lm_sub = self._subset(self.lm_vid.reshape(-1))
        v = self._evaluate(self._lm_sub, a, b).view(-1, 3, 3)
        return (self.lm_bary[..., None] * v).sum(1)

    def _contour_setup(self) -> None:
        ids = torch.unique(torch.cat([self.cand, self.cand_tris.reshape(-1)]))
        remap = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
        remap[ids] = torch.arange(len(ids))
        self._ct_ids, self._ct_sub = ids, self._subset(ids)
        self._ct_tris, self._ct_local = remap[self.cand_tris], remap[self.cand]

    def contour_targets(self, a, b, rot, trans, focal) -> torch.Tensor:
        """Re-assign contour landmarks to the nearest silhouette candidate (no grad).

        Returns:
            [C] int64 indices into the contour candidate set (see :meth:`contour_points`).
        """
        if len(self.contour) == 0:
            return self.cand[:0]
        if not hasattr(self, "_ct_ids"):
            self._contour_setup()
        with torch.no_grad():
            pos = self._evaluate(self._ct_sub, a, b)
            n = vertex_normals(pos, self._ct_tris)
            cam_pos = pos @ rot.T + trans
            cam_n = n @ rot.T
            view = F.normalize(cam_pos, dim=1)
            facing = (cam_n * view).sum(1)  # ~0 on the silhouette, < 0 facing the camera
            local = self._ct_local
            sil = local[facing[local].abs() < 0.25]
            if len(sil) < 8:
                sil = local
            uv, _ = project(pos[sil], rot, trans, focal, self.cx, self.cy)
            d = torch.cdist(self.obs[self.contour], uv)
            return sil[d.argmin(1)]

    def contour_points(self, a, b, local: torch.Tensor) -> torch.Tensor:
        """3D positions of the assigned contour candidates (differentiable)."""
        mean, ib, eb = self._ct_sub
        sub = (mean[local], ib[:, local], eb[:, local])
        return self._evaluate(sub, a, b)

    # -- stages ---------------------------------------------------------------

    def fit_landmarks(self, state: dict, steps: int, free: tuple[str, ...], progress, label: str) -> float:
        params = [state[k] for k in free]
        for p in params:
            p.requires_grad_(True)
        opt = Adam(params, lr=0.02)  # avatarsdk.optim: torch.optim.Adam without its import cost
        loss_val = math.nan
        for it in range(steps):
            if it % 10 == 0:
                contour_vid = self.contour_targets(state["id"], state["ex"], rodrigues(state["rvec"]),
                                                   state["t"], torch.exp(state["logf"]))
            opt.zero_grad()
            loss = self.landmark_loss(state, contour_vid) + self.prior_loss(state)
            loss.backward()
            opt.step()
            with torch.no_grad():
                state["ex"].clamp_(0.0, 1.0)
            loss_val = float(loss.detach())
            if progress and it % 10 == 0:
                progress(label, it / steps)
        for p in params:
            p.requires_grad_(False)
        return loss_val

    def landmark_loss(self, state: dict, contour_vid: torch.Tensor) -> torch.Tensor:
        a, b = state["id"], state["ex"]
        rot, trans, focal = rodrigues(state["rvec"]), state["t"], torch.exp(state["logf"])
        pts = self.landmark_points(a, b)
        # Contour landmarks: the assigned silhouette vertex replaces the fixed surface point.
        if len(self.contour):
            pts = pts.index_copy(0, self.contour, self.contour_points(a, b, contour_vid))
        uv, _ = project(pts, rot, trans, focal, self.cx, self.cy)
        r = ((uv - self.obs) / self.scale).pow(2).sum(1)
        return self.opts.w_landmark * (self.lm_w * r).sum() / self.lm_w.sum()

    def prior_loss(self, state: dict) -> torch.Tensor:
        o = self.opts
        f0 = math.log(self.focal_prior())
        return (o.w_identity * state["id"].pow(2).mean() + o.w_expression * state["ex"].pow(2).mean()
                + o.w_focal * (state["logf"] - f0).pow(2))

    def focal_prior(self) -> float:
        return max(self.h, self.w) / 2.0 / math.tan(math.radians(self.opts.fov_deg) / 2)


def _initial_pose(fitter: _Fitter) -> dict:
    """Frontal head at the distance that matches the landmark spread."""
    f = fitter.focal_prior()
    lm = fitter.landmark_points(torch.zeros(fitter.id_basis.shape[0]), torch.zeros(fitter.ex_basis.shape[0]))
    width_m = float(lm[:, 0].max() - lm[:, 0].min())
    width_px = float(fitter.obs[:, 0].max() - fitter.obs[:, 0].min())
    depth = f * width_m / max(width_px, 1.0)
    centre = fitter.obs.mean(0)
    centre_m = lm.mean(0)
    # World +Y up / +Z toward the camera -> camera y down / z away: a half turn about x.
    rvec = torch.tensor([math.pi, 0.0, 0.0])
    t = torch.tensor([
        (float(centre[0]) - fitter.cx) * depth / f - float(centre_m[0]),
        (float(centre[1]) - fitter.cy) * depth / f + float(centre_m[1]),
        depth + float(centre_m[2]),
    ])
    return {
        "id": torch.zeros(fitter.id_basis.shape[0]),
        "ex": torch.zeros(fitter.ex_basis.shape[0]),
        "rvec": rvec,
        "t": t,
        "logf": torch.tensor(math.log(f)),
    }


def fit_landmarks_only(
    model: FaceModel,
    spec: LandmarkSpec,
    points2d: np.ndarray,
    image_size: tuple[int, int],
    opts: FitOptions = FitOptions(),
    progress: Progress | None = None,
) -> tuple[dict, _Fitter, dict[str, float], dict[str, float]]:
    """Stages 1-2: camera, identity and expression from 2D landmarks.

    Args:
        model: the ICT model.
        spec: where the K landmarks sit on the ICT surface.
        points2d: [K, 2] float observed landmark pixels (x right, y down, centres at integers).
        image_size: (height, width).

    Returns:
        (parameter state, fitter, timings, losses) for :func:`fit_photo` to continue.

    Raises:
        InputError: shapes disagree or the landmarks are degenerate.
    """
    points2d = np.asarray(points2d, np.float32)
    if points2d.shape != (len(spec.triangle), 2) or not np.isfinite(points2d).all():
        raise InputError(f"points2d: expected finite [{len(spec.triangle)}, 2], got {points2d.shape}")
    if np.ptp(points2d, 0).min() < 4:
        raise InputError("landmarks span less than 4 pixels")
    torch.manual_seed(opts.seed)
    fitter = _Fitter(model, spec, points2d, image_size, opts)
    state = _initial_pose(fitter)
    timings, losses = {}, {}
    t0 = time.perf_counter()
    losses["rigid"] = fitter.fit_landmarks(state, opts.rigid_steps, ("rvec", "t"), progress, "camera")
    timings["rigid"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses["landmarks"] = fitter.fit_landmarks(state, opts.landmark_steps, ("rvec", "t", "logf", "id", "ex"),
                                               progress, "shape")
    timings["landmarks"] = time.perf_counter() - t0
    return state, fitter, timings, losses


def camera_from_state(state: dict, fitter: _Fitter) -> Camera:
    """Freeze the optimised camera parameters."""
    focal = float(torch.exp(state["logf"]))
    return Camera(
        fx=focal, fy=focal, cx=fitter.cx, cy=fitter.cy, width=fitter.w, height=fitter.h,
        rotation=rodrigues(state["rvec"]).detach().numpy().astype(np.float64),
        translation=state["t"].detach().numpy().astype(np.float64),
    )


# ---------------------------------------------------------------------------
# Stage 3: photometric refinement
# ---------------------------------------------------------------------------



class _Photometric:
    """Renders the face region with a low-resolution UV albedo and SH light."""

    def __init__(self, fitter: _Fitter, image: np.ndarray, skin: np.ndarray):
        t = fitter.model.topology
        face_end = t.parts["face"][1]
        # Skin triangles of the face part: what the photo's skin mask can see.
        sel = (t.tri_material == t.materials.index("skin")) & (t.triangles < face_end).all(1)
        self.faces = torch.tensor(t.triangles[sel], dtype=torch.long)
        self.corner_uv = torch.tensor(t.corner_uv[sel].reshape(-1, 2), dtype=torch.float32)
        self.corner_faces = torch.arange(len(self.corner_uv)).view(-1, 3)
        self.image = torch.tensor(image, dtype=torch.float32) / 255.0  # [H, W, 3] sRGB
        self.skin = torch.tensor(skin, dtype=torch.float32)
        self.fitter = fitter
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def target(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Photo (linear) and skin mask resized to the render size (aspect kept by the camera)."""
        if size not in self._cache:
            rh, rw = self.render_size(size)
            img = F.interpolate(self.image.permute(2, 0, 1)[None], (rh, rw), mode="area")[0].permute(1, 2, 0)
            m = F.interpolate(self.skin[None, None], (rh, rw), mode="area")[0, 0]
            self._cache[size] = (_srgb_to_linear(img), (m > 0.99).float())
        return self._cache[size]

    def render_size(self, size: int) -> tuple[int, int]:
        s = size / max(self.fitter.h, self.fitter.w)
        return max(8, round(self.fitter.h * s)), max(8, round(self.fitter.w * s))

    def render(self, verts: torch.Tensor, camera_state: dict, light: torch.Tensor, albedo: torch.Tensor,
               size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ([h, w, 3] linear colour, [h, w] coverage) of the face skin."""
        f = self.fitter
        rh, rw = self.render_size(size)
        sx, sy = rw / f.w, rh / f.h
        rot, trans, focal = rodrigues(camera_state["rvec"]), camera_state["t"], torch.exp(camera_state["logf"])
        proj = intrinsics_to_projection(focal * sx, focal * sy, (f.cx + 0.5) * sx - 0.5, (f.cy + 0.5) * sy - 0.5,
                                        rw, rh, 0.05, 5.0)
        view = torch.cat([torch.cat([rot, trans[:, None]], 1), torch.tensor([[0.0, 0.0, 0.0, 1.0]])], 0)
        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
        out = render_head(verts, self.faces, proj @ flip @ view, (rh, rw), corner_uv=self.corner_uv,
                          corner_faces=self.corner_faces, albedo=albedo, light=light, cull_backfaces=False,
                          normal_eps=1e-8, clamp_shading=False)
        return (out.albedo * out.shading)[0], out.mask[0].float()


def exposure_peak(light: torch.Tensor) -> torch.Tensor:
    """Brightest shading of an SH light over forward-facing (+Z) directions.

    The 99th percentile of the mean-over-RGB Lambert shading on 2,048
    Fibonacci-sphere directions with z > 0: the scale a correctly exposed
    photo gives unit irradiance (see :func:`fit_photo`).
    """
    n = 4096
    i = torch.arange(n, dtype=torch.float32) + 0.5
    z = 1.0 - 2.0 * i / n
    r = (1.0 - z * z).clamp_min(0.0).sqrt()
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)[z > 0]
    return torch.quantile(sh_shading(dirs, light.float()).mean(-1), 0.99)


OCCLUDED_LANDMARK_WEIGHT = 0.0
"""Weight factor of a landmark whose observed position lies on an occluder (a hand on the chin)."""


def drop_occluded_landmarks(spec: LandmarkSpec, points2d: np.ndarray, occluded: np.ndarray,
                            factor: float = OCCLUDED_LANDMARK_WEIGHT) -> LandmarkSpec:
    """The landmark spec with the weights of landmarks observed on an occluder scaled by ``factor``.

    The face mesh still places landmarks under a hand or a hat, but there it
    guesses (and a hand on the chin drags its jaw points along): the fit should
    not follow them. If fewer than a quarter of the weight would remain, the
    occluded landmarks keep a tenth of theirs instead (the pose needs some).

    Args:
        spec: the landmarks' positions on the ICT surface.
        points2d: [K, 2] observed pixels (x, y).
        occluded: [H, W] bool, True where the face is covered.
        factor: weight factor for the covered landmarks (0 drops them).

    Returns:
        A :class:`LandmarkSpec` with the new weights.

    Raises:
        InputError: ``points2d`` is not [K, 2].
    """
    pts = np.asarray(points2d, np.float64)
    if pts.shape != (len(spec.weight), 2):
        raise InputError(f"points2d: expected [{len(spec.weight)}, 2], got {pts.shape}")
    occluded = np.asarray(occluded, bool)
    h, w = occluded.shape
    xi = np.clip(np.round(np.nan_to_num(pts[:, 0])), 0, w - 1).astype(int)
    yi = np.clip(np.round(np.nan_to_num(pts[:, 1])), 0, h - 1).astype(int)
    covered = occluded[yi, xi]
    weight = np.asarray(spec.weight, np.float32)
    if weight[~covered].sum() < 0.25 * weight.sum():
        factor = max(factor, 0.1)
    return dataclasses.replace(spec, weight=np.where(covered, weight * factor, weight).astype(np.float32))


def fit_photo(
    model: FaceModel,
    spec: LandmarkSpec,
    points2d: np.ndarray,
    image: np.ndarray,
    skin_mask: np.ndarray,
    opts: FitOptions = FitOptions(),
    progress: Progress | None = None,
    *,
    occluded: np.ndarray | None = None,
    landmarks_occluded: np.ndarray | None = None,
) -> FitResult:
    """Fit camera, identity, expression, SH light and a low-res albedo to a photo.

    Args:
        model: the ICT model.
        spec: landmark positions on the ICT surface.
        points2d: [K, 2] observed landmark pixels.
        image: [H, W, 3] uint8 sRGB photo.
        skin_mask: [H, W] bool skin pixels the photometric term compares.
        opts: stage sizes and weights.
        progress: optional callback(stage, fraction).
        occluded: [H, W] bool pixels covered by something that is not skin
            (hair, hat, glasses, hands, cloth, the mouth interior; from the
            face parse): the photometric term skips them.
        landmarks_occluded: [H, W] bool pixels where the observed landmarks are
            not trusted (a hand): :func:`drop_occluded_landmarks`.

    Returns:
        FitResult.

    Raises:
        InputError: inconsistent shapes.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or skin_mask.shape != image.shape[:2]:
        raise InputError(f"image [H, W, 3] and skin_mask [H, W] must agree, got {image.shape}, {skin_mask.shape}")
    for name, m in (("occluded", occluded), ("landmarks_occluded", landmarks_occluded)):
        if m is not None and np.shape(m) != image.shape[:2]:
            raise InputError(f"{name} mask {np.shape(m)} does not match the image {image.shape[:2]}")
    if occluded is not None:
        skin_mask = np.asarray(skin_mask, bool) & ~np.asarray(occluded, bool)
    if landmarks_occluded is not None:
        spec = drop_occluded_landmarks(spec, points2d, landmarks_occluded)
    state, fitter, timings, losses = fit_landmarks_only(model, spec, points2d, image.shape[:2], opts, progress)
    res = opts.albedo_res
    ph = _Photometric(fitter, image, skin_mask.astype(np.float32))
    # Initial albedo: the mean skin colour; initial light: ambient only.
    img_lin, mask = ph.target(64)
    if float(mask.sum()) <= 16 and opts.photo_steps:
        # A small face in a large photo (a 90 px face in 600 px) keeps almost no whole skin pixel at 64 px,
        # and the photometric stage was skipped (no light fitted, shading left in the albedo): take the
        # initial colour and the go-ahead from the largest size the stage renders at.
        img_lin, mask = ph.target(max(size for size, _ in opts.photo_steps))
    mean_col = (img_lin * mask[..., None]).sum((0, 1)) / mask.sum().clamp_min(1)
    tone = mean_col.clamp(0.02, 1.0).clone()
    residual = torch.zeros(res, res, 3)
    light = torch.zeros(9, 3)
    light[0] = 1.0
    t0 = time.perf_counter()
    if opts.photometric and float(mask.sum()) > 16:
        free = {"rvec": state["rvec"], "t": state["t"], "logf": state["logf"], "id": state["id"], "ex": state["ex"]}
        for p in (*free.values(), tone, residual, light):
            p.requires_grad_(True)
        groups = [
            {"params": [light], "lr": 0.03},
            {"params": [tone, residual], "lr": 0.01},
            {"params": [state["id"], state["ex"]], "lr": 0.01},
            {"params": [state["rvec"], state["t"], state["logf"]], "lr": 0.002},
        ]
        opt = Adam(groups)
        contour_vid = fitter.contour_targets(state["id"], state["ex"], rodrigues(state["rvec"]), state["t"],
                                             torch.exp(state["logf"]))
        total = sum(n for _, n in opts.photo_steps)
        done = 0
        for size, steps in opts.photo_steps:
            target, smask = ph.target(size)
            for it in range(steps):
                opt.zero_grad()
                verts = fitter.vertices(state["id"], state["ex"])
                # Light scale is ambiguous with albedo: normalise the mean DC term to 1.
                lit = light / light[0].mean().clamp_min(1e-3)
                albedo = (tone + residual).clamp(0.0, 1.0)
                rendered, cover = ph.render(verts, state, lit, albedo, size)
                m = cover * smask
                photo = (m[..., None] * (rendered - target).abs()).sum() / (3 * m.sum().clamp_min(1.0))
                smooth = (residual[1:] - residual[:-1]).pow(2).mean() + (residual[:, 1:] - residual[:, :-1]).pow(2).mean()
                chroma = (lit[0] - lit[0].mean()).pow(2).sum()
                loss = (opts.w_photo * photo + fitter.landmark_loss(state, contour_vid) + fitter.prior_loss(state)
                        + 1.0 * residual.pow(2).mean() + 10.0 * smooth + 0.1 * chroma)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    state["ex"].clamp_(0.0, 1.0)
                    tone.clamp_(0.01, 1.0)
                done += 1
                if it % 10 == 0:
                    contour_vid = fitter.contour_targets(state["id"], state["ex"], rodrigues(state["rvec"]),
                                                         state["t"], torch.exp(state["logf"]))
                    if progress:
                        progress("photometric", done / total)
            losses[f"photometric_{size}"] = float(photo.detach())
        for p in (*free.values(), tone, residual, light):
            p.requires_grad_(False)
        light = light / light[0].mean().clamp_min(1e-3)
        # Fix the light/albedo scale the way a photographer exposes: the key light
        # gives unit irradiance where it is strongest on the front of the head
        # (99th percentile over forward-facing directions, luminance). The mean
        # over all directions is no anchor: a harsh side or top light has a
        # small mean and would halve every albedo.
        peak = exposure_peak(light).clamp(0.05, 20.0)
        light = light / peak
        tone, residual = tone * peak, residual * peak
    timings["photometric"] = time.perf_counter() - t0
    return FitResult(
        identity=state["id"].detach().numpy().astype(np.float32),
        expression=state["ex"].detach().numpy().astype(np.float32),
        camera=camera_from_state(state, fitter),
        light=light.detach().numpy().astype(np.float32),
        albedo_lowres=(tone + residual).clamp(0, 1).detach().numpy().astype(np.float32),
        timings=timings,
        losses=losses,
    )

"""GAN inversion: the W+ latent of G that reproduces a given (position, albedo) pair (paper eq. 1).

Sec. 3.1 of the paper recovers, for each training head, the latent ``w`` in
the extended space W+ (L x w_dim; 14 x 512 at 256) that G decodes to it, by
minimising::

    L_inv = L_pix + lambda_1 L_LPIPS + lambda_2 L_adv                      (1)

* ``L_pix``: L1 between G's maps and the target maps. Here in G's network
  units (:func:`~avatarsdk.nn.stylegan.encode_maps`: albedo ``2 a - 1``,
  clamped to [-1, 1] as decoding does; offsets in ``offset_scale_m``, 1 cm by
  default) over the skin charts (the chart mask dilated by one texel, so
  bilinear samples at chart borders count), with separate weights for albedo
  and offsets.
* ``L_LPIPS``: the perceptual distance (ST-LPIPS, :mod:`avatarsdk.nn.perceptual`)
  between *renders* of the two heads, not between the UV maps (the paper: LPIPS
  is trained on photos and is unstable on UV maps). Each head is rendered from
  three fixed cameras (front and +-35 degrees of yaw, :func:`inversion_views`)
  twice: the geometry shaded grey under a fixed SH light, and the albedo
  textured and unlit. Weights per render kind.
* ``L_adv``: the non-saturating generator loss of the three discriminators
  trained with G (albedo, position, joint), when they are given.

The latent starts at G's mean latent ``w_avg`` broadcast to W+ (or a given
``w0``) and is optimised with Adam under StyleGAN2's projector schedule (linear
warm-up, cosine ramp-down). There is no noise to optimise: G has no noise
inputs. With ``InvertConfig.wplus=False`` one w is shared by all L layers.

The renderer (:func:`render_inversion_views`) is the SDK's own differentiable
rasterizer on the *face part* of the ICT head only (skin triangles of vertices
0-9408, ~18,500 triangles, back faces culled), from perspective cameras
orbiting the face centre. Its vertices come from :func:`face_vertices`, which
equals :func:`avatarsdk.uvmap.offset_map_to_mesh` on those vertices (skin
vertices sampled from the map; the ~370 face vertices without a head UV, e.g.
inside the nostrils, from the least-squares identity fit, done here with a
precomputed pseudo-inverse instead of a solve per call).

Cost (one CPU thread, measured while another job shared the 2-core machine,
so an upper bound), per step with 128 px renders: ST-LPIPS (AlexNet) on the 6
renders with backward ~0.5-0.7 s (the target's features are computed once);
rasterizing the 3 views with interpolation and backward ~0.03 s; G forward and
backward 0.12 s at res 64 with 128 channels, 0.45 s with 256, 1.7 s with the
paper's 512. Whole steps at res 64: 0.67 s (128 channels), 0.90 s (256),
1.7 s (512); the adversarial term adds 0.2 / 0.6 / 2.1 s. So 200 steps take
2-6 minutes on a CPU; a GPU makes it seconds.

Errors (:func:`map_errors`) are measured on the mesh and the albedo, not on
the loss: the mean Euclidean vertex distance in mm over the benchmark's face
region (:func:`avatarsdk.paint.face_region_vertices`; same topology and frame,
no alignment) and the mean L1 of the linear albedo over the chart texels.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from avatarsdk.colour import srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.losses import display_srgb, face_mesh, face_vertices, lpips_features, lpips_to, perceptual, projector_lr
from avatarsdk.nn.stylegan import Discriminators, Generator, decode_maps, g_nonsaturating_loss
from avatarsdk.render import look_at, perspective, render_head
from avatarsdk.rigs import load_ict
from avatarsdk.scene import LIGHTS, light_sh
from avatarsdk.paint import face_region_vertices
from avatarsdk.datatypes import UVMaps
from avatarsdk.uvmap import mesh_to_offset_map

log = logging.getLogger(__name__)

__all__ = [
    "InvertConfig",
    "Inversion",
    "InversionViews",
    "chart_mask",
    "face_vertices",
    "fit_targets",
    "invert",
    "invert_fit",
    "inversion_views",
    "map_errors",
    "render_inversion_views",
]

Progress = Callable[[str, float], None]

_GREY = 0.6  # linear albedo of the geometry renders
_BACKGROUND = 0.5  # display value of the background in every render
_FACE_CENTRE = (0.0, 0.005, 0.06)  # metres: the face region's bounding-box centre on the generic neutral
_CAMERA_DISTANCE = 0.6  # metres from the face centre
_HALF_HEIGHT = 0.105  # metres of the face centre's plane seen above (and below) the centre


# ---------------------------------------------------------------------------
# Config and result
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InvertConfig:
    """Settings of one inversion (eq. 1).

    Attributes:
        steps: Adam steps (the paper's refinement uses 200 for a similar problem).
        lr: peak Adam learning rate on the latent.
        betas: Adam betas.
        lr_rampup: fraction of the steps of linear warm-up (StyleGAN2 projector: 0.05).
        lr_rampdown: fraction of the steps of cosine ramp-down to 0 at the end (0.25).
        pix_albedo: weight of the L1 on the albedo channels (network units, 2a - 1).
        pix_offsets: weight of the L1 on the offset channels (network units,
            ``offset_scale_m`` metres per unit).
        lpips_geometry: lambda_1 of the grey shaded renders.
        lpips_albedo: lambda_1 of the unlit albedo renders.
        adv: lambda_2, used only when discriminators are given.
        render_size: side of the renders in pixels (>= 32 for LPIPS).
        yaw_deg: camera yaws in degrees (0 = front; > 0 sees the avatar's left side).
        light: key of :data:`avatarsdk.scene.LIGHTS` lighting the geometry renders
            (fixed in the world: from the front camera's frame).
        lpips_net: "alex" or "vgg".
        wplus: optimise one w per layer (W+); False: one w shared by all layers (W).
    """

    steps: int = 200
    lr: float = 0.03
    betas: tuple[float, float] = (0.9, 0.999)
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    pix_albedo: float = 1.0
    pix_offsets: float = 1.0
    lpips_geometry: float = 1.0
    lpips_albedo: float = 1.0
    adv: float = 0.05
    render_size: int = 128
    yaw_deg: tuple[float, ...] = (0.0, -35.0, 35.0)
    light: str = "soft"
    lpips_net: str = "alex"
    wplus: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"steps must be an int >= 1, got {self.steps!r}")
        for name in ("lr", "lr_rampup", "lr_rampdown", "pix_albedo", "pix_offsets", "lpips_geometry",
                     "lpips_albedo", "adv"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr!r}")
        if self.lr_rampup + self.lr_rampdown > 1:
            raise InputError(f"lr_rampup + lr_rampdown must be <= 1, got {self.lr_rampup} + {self.lr_rampdown}")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)):
            raise InputError(f"betas must be a tuple of two numbers in [0, 1), got {self.betas!r}")
        r = self.render_size
        if isinstance(r, bool) or not isinstance(r, int) or not 8 <= r <= 1024:
            raise InputError(f"render_size must be an int in [8, 1024], got {r!r}")
        if self.uses_lpips and r < 32:
            raise InputError(f"render_size must be >= 32 for the LPIPS terms, got {r}")
        if not isinstance(self.yaw_deg, tuple) or not self.yaw_deg or \
                not all(isinstance(y, (int, float)) and abs(y) <= 90 for y in self.yaw_deg):
            raise InputError(f"yaw_deg must be a non-empty tuple of angles in [-90, 90], got {self.yaw_deg!r}")
        if self.light not in LIGHTS:
            raise InputError(f"unknown light {self.light!r}; known: {', '.join(LIGHTS)}")
        if self.lpips_net not in ("alex", "vgg"):
            raise InputError(f"lpips_net must be 'alex' or 'vgg', got {self.lpips_net!r}")
        if not isinstance(self.wplus, bool):
            raise InputError(f"wplus must be a bool, got {self.wplus!r}")

    @property
    def uses_lpips(self) -> bool:
        """Whether any LPIPS term has a non-zero weight (then renders are made)."""
        return self.lpips_geometry > 0 or self.lpips_albedo > 0

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, cosine ramp-down (StyleGAN2 projector)."""
        return projector_lr(step, self.steps, self.lr, self.lr_rampup, self.lr_rampdown)


@dataclass(frozen=True, eq=False)
class Inversion:
    """What :func:`invert` found.

    Attributes:
        w: [L, w_dim] float32 (CPU) latent in W+ with the lowest total loss seen
            (rows equal when ``wplus=False``).
        albedo: [3, R, R] float32 linear albedo in [0, 1] that G decodes from ``w``.
        offsets: [3, R, R] float32 offsets in metres from the generic neutral.
        history: loss term -> per-step values (evaluated at the latent *before*
            that step's update): "pix_albedo", "pix_offsets", "lpips_geometry",
            "lpips_albedo", "adv" (unweighted; only the terms in use) and
            "total" (weighted sum), each a tuple of ``steps`` floats.
        errors: :func:`map_errors` of the result against the target:
            "vertex_mm" (mean vertex distance over the face region, mm) and
            "albedo_l1" (mean linear-albedo L1 over the chart texels).
        initial_errors: the same for the starting latent.
        best_step: the step whose latent is ``w`` (``steps`` if it is the final one).
        seconds: wall time of the optimisation.
    """

    w: torch.Tensor
    albedo: torch.Tensor
    offsets: torch.Tensor
    history: Mapping[str, tuple[float, ...]]
    errors: Mapping[str, float]
    initial_errors: Mapping[str, float]
    best_step: int
    seconds: float

    def uvmaps(self) -> UVMaps:
        """The result as :class:`~avatarsdk.datatypes.UVMaps` ([R, R, 3] numpy, chart mask)."""
        r = int(self.albedo.shape[-1])
        return UVMaps(albedo=self.albedo.permute(1, 2, 0).numpy().copy(),
                      offsets=self.offsets.permute(1, 2, 0).numpy().copy(), mask=chart_mask(r).numpy().copy())


# ---------------------------------------------------------------------------
# Topology helpers (cached)
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _chart_mask(size: int) -> torch.Tensor:
    model = load_ict()
    _, mask = mesh_to_offset_map(model.neutral[None], model.topology, model.neutral, size=size, gutter=0)
    return mask[0].clone()


def chart_mask(size: int) -> torch.Tensor:
    """[size, size] bool texels covered by the skin charts of the unified head UV (cached per size)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise InputError(f"size must be an int >= 4, got {size!r}")
    return _chart_mask(size)


# ---------------------------------------------------------------------------
# Renderer
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InversionViews:
    """The fixed cameras and light of the inversion renders.

    Attributes:
        matrices: [N, 4, 4] float32 ``projection @ world_to_camera`` (OpenGL
            clip space, see :mod:`avatarsdk.render.camera`) of the N cameras.
        sh: [9, 3] float32 world-frame SH light of the geometry renders.
        size: render side in pixels.
        yaw_deg: the cameras' yaws.
    """

    matrices: torch.Tensor
    sh: torch.Tensor
    size: int
    yaw_deg: tuple[float, ...]


@functools.lru_cache(maxsize=8)
def _views(size: int, yaw_deg: tuple[float, ...], light: str) -> InversionViews:
    centre = torch.tensor(_FACE_CENTRE, dtype=torch.float64)
    fov = 2 * math.atan(_HALF_HEIGHT / _CAMERA_DISTANCE)
    proj = perspective(fov, 1.0, 0.1, 2.0).double()
    mats = []
    for yaw in yaw_deg:
        a = math.radians(float(yaw))
        eye = centre + _CAMERA_DISTANCE * torch.tensor([math.sin(a), 0.0, math.cos(a)], dtype=torch.float64)
        mats.append(proj @ look_at(eye, centre, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)))
    return InversionViews(matrices=torch.stack(mats).float(), sh=torch.from_numpy(light_sh(light)),
                          size=int(size), yaw_deg=tuple(float(y) for y in yaw_deg))


def inversion_views(config: InvertConfig) -> InversionViews:
    """Cameras orbiting the face centre (0.6 m away, 0.21 m seen vertically) at ``config.yaw_deg``,
    and the world-frame light ``config.light`` (cached)."""
    return _views(config.render_size, tuple(config.yaw_deg), config.light)


def render_inversion_views(views: InversionViews, vertices: torch.Tensor, albedo: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Render face-part meshes from the fixed views: grey shaded geometry and unlit albedo.

    Both renders come from one rasterization per view (back faces culled),
    composited over a uniform grey, and are encoded to sRGB for LPIPS. Shading:
    ``0.6 * sh_shading(n, views.sh)`` with interpolated vertex normals (clamped
    at 0). Albedo: bilinear texture lookup at the corners' head UVs.
    Differentiable w.r.t. ``vertices`` (inside silhouettes, like the
    rasterizer) and ``albedo``.

    Args:
        views: from :func:`inversion_views`.
        vertices: [B, Vf, 3] float face-part vertices in metres (:func:`face_vertices`).
        albedo: [B, 3, Ra, Ra] float linear albedo maps in [0, 1] (any square size).

    Returns:
        (geometry, albedo) renders, each [B * N, 3, S, S] float in [0, 1], ordered
        head-major (head b, view k at index ``b * N + k``).
    """
    fm = face_mesh()
    if vertices.ndim != 3 or vertices.shape[1:] != (fm.ids.numel(), 3):
        raise InputError(f"vertices: expected [B, {fm.ids.numel()}, 3], got {list(vertices.shape)}")
    if albedo.ndim != 4 or albedo.shape[0] != vertices.shape[0] or albedo.shape[1] != 3:
        raise InputError(f"albedo: expected [{vertices.shape[0]}, 3, R, R], got {list(albedo.shape)}")
    dev, dt = vertices.device, vertices.dtype
    s = views.size
    out = render_head(vertices, fm.faces.to(dev), views.matrices.to(dev, dt), (s, s),
                      corner_uv=fm.corner_uv.to(dev, dt), corner_faces=fm.corner_faces.to(dev),
                      albedo=albedo.permute(0, 2, 3, 1), light=views.sh.to(dev, dt))  # B * N images
    mask = out.mask[..., None]  # [BN, S, S, 1]
    shade = out.shading * _GREY  # [BN, S, S, 3]
    bg = torch.full((), _BACKGROUND, dtype=dt, device=dev)
    geometry = torch.where(mask, display_srgb(shade), bg).permute(0, 3, 1, 2)
    textured = torch.where(mask, display_srgb(out.albedo), bg).permute(0, 3, 1, 2)
    return geometry.contiguous(), textured.contiguous()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _region() -> tuple[torch.Tensor, torch.Tensor]:
    """(face-region vertex ids, [M, 2] their head UVs)."""
    ids = face_region_vertices()
    uv = load_ict().topology.head_uv[ids]
    if not np.isfinite(uv).all():  # offset_map_to_mesh samples exactly these vertices from the map
        raise InputError("face region vertices without a head UV")
    return torch.from_numpy(ids), torch.from_numpy(uv.astype(np.float32))


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise InputError(f"{name}: expected [3, R, R] or [B, 3, R, R], got {list(x.shape)}")
    return x


def map_errors(albedo: torch.Tensor, offsets: torch.Tensor, target_albedo: torch.Tensor,
               target_offsets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Compare heads given as UV maps: vertex error on the face region and albedo L1 on the charts.

    * ``vertex_mm``: mean over the face-region vertices
      (:func:`avatarsdk.paint.face_region_vertices`, ~4,000) of the Euclidean
      distance between the two meshes of :func:`avatarsdk.uvmap.offset_map_to_mesh`,
      in mm, same frame, no alignment. Those vertices all have a head UV, so
      ``offset_map_to_mesh`` samples them straight from the maps; this
      function samples them directly (same values, no least-squares fit).
    * ``albedo_l1``: mean over the chart texels (:func:`chart_mask`) and the
      channels of |linear albedo difference|, at the larger of the two
      resolutions (the smaller map is upsampled bilinearly).

    Args:
        albedo: [B, 3, R, R] (or [3, R, R]) linear albedo in [0, 1].
        offsets: same shape, metres.
        target_albedo: [B, 3, Rt, Rt] (or [3, Rt, Rt]), B equal or 1.
        target_offsets: same shape as ``target_albedo``.

    Returns:
        {"vertex_mm": [B], "albedo_l1": [B]} float tensors (0-d for unbatched inputs).
    """
    single = albedo.ndim == 3
    a, o = _as_batch(albedo, "albedo"), _as_batch(offsets, "offsets")
    ta, to = _as_batch(target_albedo, "target_albedo"), _as_batch(target_offsets, "target_offsets")
    if a.shape != o.shape or ta.shape != to.shape or ta.shape[0] not in (1, a.shape[0]):
        raise InputError(f"shapes do not match: {list(a.shape)}, {list(o.shape)}, {list(ta.shape)}, "
                         f"{list(to.shape)}")
    ids, uv = _region()
    del ids

    def sample(m: torch.Tensor) -> torch.Tensor:
        grid = (uv.to(m.device, m.dtype) * 2 - 1).view(1, -1, 1, 2).expand(m.shape[0], -1, -1, -1)
        return F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0]

    dist = (sample(o) - sample(to)).norm(dim=1)  # [B, M] metres
    vertex_mm = dist.mean(1) * 1000.0
    size = max(a.shape[-1], ta.shape[-1])

    def up(m: torch.Tensor) -> torch.Tensor:
        return m if m.shape[-1] == size else F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)

    mask = chart_mask(size).to(a.device)
    diff = (up(a) - up(ta)).abs().mean(1)  # [B, S, S]
    albedo_l1 = (diff * mask).sum((1, 2)) / mask.sum().clamp_min(1)
    out = {"vertex_mm": vertex_mm, "albedo_l1": albedo_l1}
    return {k: v[0] for k, v in out.items()} if single else out


# ---------------------------------------------------------------------------
# Inversion
# ---------------------------------------------------------------------------


def _check_target(t, name: str) -> torch.Tensor:
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.array(t, np.float32))
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise InputError(f"{name} must be a float tensor or array, got {type(t).__name__}")
    if t.ndim != 3 or t.shape[0] != 3 or t.shape[1] != t.shape[2] or t.shape[1] < 4:
        hint = " (channels first: use .permute(2, 0, 1) on [R, R, 3] maps)" if t.ndim == 3 and t.shape[-1] == 3 else ""
        raise InputError(f"{name}: expected [3, R, R] with R >= 4, got {list(t.shape)}{hint}")
    if not torch.isfinite(t).all():
        raise InputError(f"{name} has non-finite values")
    return t.detach().float()


def _encode(albedo: torch.Tensor, offsets: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.cat([albedo * 2.0 - 1.0, offsets / scale], dim=1)


def invert(
    G: Generator,
    target_albedo: torch.Tensor | np.ndarray,
    target_offsets: torch.Tensor | np.ndarray,
    config: InvertConfig | None = None,
    *,
    discriminators: Discriminators | None = None,
    w0: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> Inversion:
    """Find the W+ latent whose maps G decodes closest to a target head (paper eq. 1).

    Args:
        G: the generator (frozen here; its ``requires_grad`` flags and mode are
            restored afterwards). Runs on G's device.
        target_albedo: [3, Rt, Rt] linear albedo in [0, 1] in the unified head UV
            (e.g. ``torch.from_numpy(uvmaps.albedo).permute(2, 0, 1)`` of
            :func:`avatarsdk.train.data.synthetic_sample`, or of a fitted avatar
            via :func:`avatarsdk.train.data.avatar_sample`, decoded from sRGB).
        target_offsets: [3, Rt, Rt] offsets in metres from the generic neutral.
            Rt may differ from G's resolution: the L1 term compares G's maps with
            the target resampled to G's size (area down, bilinear up); renders
            and errors use the target at its own size.
        config: settings (default :class:`InvertConfig`).
        discriminators: G's three discriminators for the adversarial term
            (None: no adversarial term).
        w0: starting latent, [L, w_dim], [1, L, w_dim] or [w_dim]; None: ``G.w_avg``.
            With ``wplus=False`` its mean over layers is used.
        progress: optional ``callback("invert", fraction)`` after each step.

    Returns:
        :class:`Inversion`.

    Raises:
        InputError: bad targets (shape, layout, non-finite, albedo outside [0, 1]),
            G, discriminators, w0 or config.
        WeightsError: the ST-LPIPS weights are missing (when an LPIPS term is on).
    """
    cfg = config or InvertConfig()
    if not isinstance(cfg, InvertConfig):
        raise InputError(f"config must be an InvertConfig, got {type(cfg).__name__}")
    if not isinstance(G, Generator) or G.cfg.out_channels != 6:
        raise InputError(f"G must be a 6-channel Generator, got {type(G).__name__}")
    ta = _check_target(target_albedo, "target_albedo")
    to = _check_target(target_offsets, "target_offsets")
    if ta.shape != to.shape:
        raise InputError(f"target_albedo {list(ta.shape)} and target_offsets {list(to.shape)} differ in shape")
    if float(ta.min()) < -1e-4 or float(ta.max()) > 1 + 1e-4:
        raise InputError(f"target_albedo must be linear albedo in [0, 1], got [{float(ta.min()):.3g}, "
                         f"{float(ta.max()):.3g}]")
    if float(to.abs().max()) > 0.25:
        raise InputError(f"target_offsets reach {float(to.abs().max()):.3g} m; expected offsets from the mean "
                         "head in metres (under 0.25 m)")
    gcfg = G.cfg
    res = gcfg.resolution
    use_adv = discriminators is not None and cfg.adv > 0
    if discriminators is not None:
        if not isinstance(discriminators, Discriminators) or discriminators.cfg.resolution != res:
            raise InputError(f"discriminators must be Discriminators at G's resolution {res}")
    dev = next(G.parameters()).device
    ta, to = ta.clamp(0, 1)[None].to(dev), to[None].to(dev)

    # Starting latent.
    if w0 is None:
        start = G.mapping.w_avg.detach()[None].expand(gcfg.num_ws, -1)
    else:
        if not isinstance(w0, torch.Tensor) or not w0.is_floating_point():
            raise InputError(f"w0 must be a float tensor, got {type(w0).__name__}")
        start = w0.detach()
        if start.shape == (1, gcfg.num_ws, gcfg.w_dim):
            start = start[0]
        elif start.shape == (gcfg.w_dim,):
            start = start[None].expand(gcfg.num_ws, -1)
        if start.shape != (gcfg.num_ws, gcfg.w_dim) or not torch.isfinite(start).all():
            raise InputError(f"w0: expected finite [{gcfg.num_ws}, {gcfg.w_dim}] (or [1, L, w_dim] or "
                             f"[{gcfg.w_dim}]), got {list(w0.shape)}")
    start = start.to(dev, torch.float32)
    if cfg.wplus:
        param = start.clone()[None]  # [1, L, w_dim]
    else:
        param = start.mean(0).clone()[None, None]  # [1, 1, w_dim]
    param_init = param.clone()
    param.requires_grad_(True)

    def ws_of(p: torch.Tensor) -> torch.Tensor:
        return p if cfg.wplus else p.expand(1, gcfg.num_ws, -1)

    # Fixed parts of the loss.
    if ta.shape[-1] == res:
        ta_r, to_r = ta, to
    else:
        mode = "area" if ta.shape[-1] > res else "bilinear"
        kw = {} if mode == "area" else {"align_corners": False}
        ta_r = F.interpolate(ta, size=(res, res), mode=mode, **kw)
        to_r = F.interpolate(to, size=(res, res), mode=mode, **kw)
    target_maps = _encode(ta_r, to_r, gcfg.offset_scale_m)  # [1, 6, R, R]
    pix_mask = F.max_pool2d(chart_mask(res).float()[None, None], 3, 1, 1).to(dev)  # charts + 1 texel
    pix_norm = pix_mask.sum().clamp_min(1) * 3
    lpips = views = tgeo_f = talb_f = None
    if cfg.uses_lpips:
        lpips = perceptual(cfg.lpips_net).to(dev)
        views = inversion_views(cfg)
        with torch.no_grad():
            tgeo, talb = render_inversion_views(views, face_vertices(to), ta)
            tgeo_f, talb_f = lpips_features(lpips, tgeo), lpips_features(lpips, talb)

    terms = ["pix_albedo", "pix_offsets"]
    if cfg.uses_lpips:
        terms += ["lpips_geometry", "lpips_albedo"]
    if use_adv:
        terms.append("adv")
    history: dict[str, list[float]] = {k: [] for k in terms + ["total"]}
    weights = {"pix_albedo": cfg.pix_albedo, "pix_offsets": cfg.pix_offsets, "lpips_geometry": cfg.lpips_geometry,
               "lpips_albedo": cfg.lpips_albedo, "adv": cfg.adv}

    g_flags = [p.requires_grad for p in G.parameters()]
    g_mode = G.training
    d_flags = [p.requires_grad for p in discriminators.parameters()] if discriminators is not None else []
    d_mode = discriminators.training if discriminators is not None else False
    G.eval().requires_grad_(False)
    if discriminators is not None:
        discriminators.eval().requires_grad_(False)
    def losses(maps: torch.Tensor) -> dict[str, torch.Tensor]:
        # Albedo as decode_maps sees it (clamped): values past +-1 all decode to the same albedo.
        diff = (torch.cat([maps[:, :3].clamp(-1.0, 1.0), maps[:, 3:]], 1) - target_maps).abs() * pix_mask
        values = {"pix_albedo": diff[:, :3].sum() / pix_norm, "pix_offsets": diff[:, 3:].sum() / pix_norm}
        if cfg.uses_lpips:
            albedo, offsets = decode_maps(maps, gcfg)
            geo, alb = render_inversion_views(views, face_vertices(offsets), albedo)
            values["lpips_geometry"] = lpips_to(lpips, geo, tgeo_f).mean()
            values["lpips_albedo"] = lpips_to(lpips, alb, talb_f).mean()
        if use_adv:
            values["adv"] = g_nonsaturating_loss(discriminators(maps))
        total = maps.new_zeros(())
        for k, v in values.items():
            if weights[k] > 0:
                total = total + weights[k] * v
        values["total"] = total
        return values

    opt = torch.optim.Adam([param], lr=cfg.lr, betas=cfg.betas)
    best_total, best_w, best_step = math.inf, param.detach().clone(), 0
    t0 = time.perf_counter()
    try:
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step)
            values = losses(G.synthesis(ws_of(param)))
            for k in history:
                history[k].append(float(values[k].detach()))
            total = history["total"][-1]
            if not math.isfinite(total):
                raise InputError(f"inversion diverged at step {step} (non-finite loss {total}); lower the lr")
            if total < best_total:
                best_total, best_w, best_step = total, param.detach().clone(), step
            opt.zero_grad(set_to_none=True)
            values["total"].backward()
            opt.step()
            if progress is not None:
                progress("invert", (step + 1) / cfg.steps)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            # The latent after the last update has not been scored yet: keep it if it is the best.
            if float(losses(G.synthesis(ws_of(param)))["total"]) < best_total:
                best_w, best_step = param.detach().clone(), cfg.steps
            ws = ws_of(best_w)
            albedo, offsets = decode_maps(G.synthesis(ws), gcfg)
            a0, o0 = decode_maps(G.synthesis(ws_of(param_init)), gcfg)
            errors = {k: float(v) for k, v in map_errors(albedo, offsets, ta, to).items()}
            initial = {k: float(v) for k, v in map_errors(a0, o0, ta, to).items()}
    finally:
        for p, f in zip(G.parameters(), g_flags):
            p.requires_grad_(f)
        G.train(g_mode)
        if discriminators is not None:
            for p, f in zip(discriminators.parameters(), d_flags):
                p.requires_grad_(f)
            discriminators.train(d_mode)
    log.debug("inversion: %d steps in %.1f s, vertex %.3f -> %.3f mm", cfg.steps, seconds,
              initial["vertex_mm"], errors["vertex_mm"])
    return Inversion(
        w=ws[0].detach().cpu().float().clone(),
        albedo=albedo[0].detach().cpu().float().clone(),
        offsets=offsets[0].detach().cpu().float().clone(),
        history={k: tuple(v) for k, v in history.items()},
        errors=errors,
        initial_errors=initial,
        best_step=best_step,
        seconds=seconds,
    )


# ---------------------------------------------------------------------------
# Fitted heads
# ---------------------------------------------------------------------------


def fit_targets(vertices: np.ndarray, albedo_srgb: np.ndarray, resolution: int, *, gutter: int = 4,
                ict_dir=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A fitted head as inversion targets at G's resolution.

    Args:
        vertices: [V, 3] neutral vertices in metres on the ICT topology (``model.morph(identity)``).
        albedo_srgb: [H, W, 3|4] uint8 sRGB skin albedo in the unified head UV (what the fit's unwrap makes).
        resolution: G's map side.
        gutter: texels of dilation around the charts of the offset map (as the training data).
        ict_dir: ICT-FaceKit folder.

    Returns:
        ([3, R, R] float32 linear albedo in [0, 1] (resampled in linear light: area down,
        bilinear up), [3, R, R] float32 offsets in metres from the generic neutral).

    Raises:
        InputError: wrong vertex count, non-finite vertices or a bad albedo.
    """
    model = load_ict(ict_dir)
    v = np.array(vertices, np.float32)
    if v.shape != (model.topology.num_vertices, 3) or not np.isfinite(v).all():
        raise InputError(f"vertices: expected finite [{model.topology.num_vertices}, 3], got {v.shape}")
    img = np.asarray(albedo_srgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputError(f"albedo: expected uint8 [H, W, 3|4], got {img.dtype} {img.shape}")
    off, _ = mesh_to_offset_map(v[None], model.topology, model.neutral, size=resolution, gutter=gutter)
    lin = srgb_to_linear(torch.from_numpy(img[..., :3].astype(np.float32) / 255.0)).permute(2, 0, 1)[None]
    if lin.shape[-1] != resolution or lin.shape[-2] != resolution:
        down = img.shape[0] >= resolution and img.shape[1] >= resolution
        lin = F.interpolate(lin, size=(resolution, resolution), mode="area") if down else \
            F.interpolate(lin, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return lin[0].clamp(0, 1).contiguous(), off[0].permute(2, 0, 1).contiguous()


def invert_fit(G: Generator, vertices: np.ndarray, albedo_srgb: np.ndarray, config: InvertConfig | None = None, *,
               w0: torch.Tensor | None = None, ict_dir=None, progress: Progress | None = None) -> Inversion:
    """G's latent for a fitted head: :func:`fit_targets` at G's resolution, then :func:`invert`.

    The refinement's ``init="fit"`` starts (and anchors its latent prior) here; the bootstrap
    (:mod:`avatarsdk.train.bootstrap`) inverts every fitted photo the same way.
    """
    albedo, offsets = fit_targets(vertices, albedo_srgb, G.cfg.resolution, ict_dir=ict_dir)
    return invert(G, albedo, offsets, config, w0=w0, progress=progress)

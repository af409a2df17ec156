"""De-lit albedo from one photo: unwrap, divide out the light, fill, blend.

Given a fit (geometry, camera, SH light), every texel of the unified head UV
that the photo sees gets ``photo / shading``; its confidence is how squarely the
surface faces the camera. The unseen half of the face is filled from the mirror
texel (faces are nearly symmetric; the mirror map comes from the mean head's
vertex symmetry), and what no photo sees (back of the head, under the chin,
inside the ears) from a prior albedo whose tone is matched to the observed
skin. The layers are joined by multi-band (Laplacian pyramid) blending so no
seam shows where the confidence changes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy.ndimage import binary_dilation, label
from scipy.sparse.linalg import splu
from scipy.spatial import cKDTree

from avatarsdk.cache import cached_arrays, code_digest
from avatarsdk.colour import srgb_to_linear
from avatarsdk.errors import InputError
from avatarsdk.fit import FitResult
from avatarsdk.materials import SCLERA_SRGB
from avatarsdk.nn.parsing import INPUT_SIZE
from avatarsdk.render import interpolate, rasterize, transform_points
from avatarsdk.render.camera import gl_matrices
from avatarsdk.render.shading import sh_shading, vertex_normals
from avatarsdk.rigs.ict import ICT_EXPRESSIONS
from avatarsdk.rigs.model import FACE_CHART_SCALE, FaceModel
from avatarsdk.paint import (ALBEDO_TONES, LUMA, SkinParams, face_region_mask, mean_albedo_srgb, paint_albedo,
                             procedural_albedo, tone_for_luminance)
from avatarsdk.uvmap import dilate, rasterize_uv


@functools.lru_cache(maxsize=2)
def mirror_index(model: FaceModel) -> np.ndarray:
    """[V] index of each vertex's left-right mirror on the generic neutral."""
    v = model.neutral
    mirrored = v * np.array([-1.0, 1.0, 1.0], np.float32)
    return cKDTree(v).query(mirrored)[1].astype(np.int64)


def _skin(model: FaceModel) -> tuple[np.ndarray, torch.Tensor]:
    t = model.topology
    tris = np.nonzero(t.tri_material == t.materials.index("skin"))[0]
    return t.triangles[tris], torch.from_numpy(t.corner_uv[tris].copy())


@functools.lru_cache(maxsize=4)
def mirror_uv_map(model: FaceModel, size: int) -> torch.Tensor:
    """[size, size, 2] UV of the mirror point of every texel (NaN-free; gutter dilated).

    Computed once per ICT release and size (~1 s at 1024 px) and kept in the
    disk cache (:mod:`avatarsdk.cache`; the key covers the code, so a cached map
    equals a fresh one).
    """
    key = {"ict": model.data.source_sha256, "size": int(size),
           "code": code_digest("avatarsdk.albedo", "avatarsdk.uvmap", "avatarsdk.render.raster",
                               "avatarsdk.rigs.model", "avatarsdk.rigs.ict")}
    arrays = cached_arrays(f"mirror-uv{int(size)}", key, lambda: {"map": _mirror_uv_map(model, size).numpy()})
    return torch.from_numpy(arrays["map"])


def _mirror_uv_map(model: FaceModel, size: int) -> torch.Tensor:
    tris, cuv = _skin(model)
    mirror = mirror_index(model)
    t = model.topology
    # The mirror corner's UV: same chart as the corner itself, via the vertex head_uv,
    # falling back to the corner's own UV where the mirror vertex has none.
    mu = t.head_uv[mirror[tris]]  # [F, 3, 2]
    own = cuv.numpy()
    mu = np.where(np.isfinite(mu), mu, own)
    # Corners whose mirror vertex reads its UV from the other chart (seam vertices
    # keep their face-chart UV): reflect the corner's own UV instead. ICT's face
    # chart is exactly symmetric about u = 0.375 (measured: 0 texels at 1024), the
    # scalp part of the back chart about u = 0.875.
    far = (np.abs(mu - own).sum(-1) > 0.5).any(1)
    axis = np.where(own[far][..., :1] < 0.75, 0.75, 1.75)
    mu[far] = np.concatenate([axis - own[far][..., :1], own[far][..., 1:]], -1)
    vals, mask = rasterize_uv(torch.from_numpy(mu.astype(np.float64))[None], cuv, size)
    return dilate(vals.float(), mask, 8)[0]


def push_pull(image: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fill the texels of zero weight with a smooth pull of the weighted texels around them.

    Push-pull (Gortler et al. 1996): weighted averages down a pyramid, then back up, each level
    keeping its own average where it has weight and taking the coarser level's where it has none.

    Args:
        image: [H, W, C] float; weight: [H, W] float in [0, 1] (H, W powers of two).

    Returns:
        [H, W, C]: ``image`` where ``weight`` is 1, the pulled fill where it is 0, a mix between.
    """
    x = (image * weight[..., None]).permute(2, 0, 1)[None]
    m = weight[None, None].clamp(0, 1)
    levels = [(x, m)]
    while x.shape[-1] > 1 and x.shape[-2] > 1:
        x, m = F.avg_pool2d(x, 2), F.avg_pool2d(m, 2)
        levels.append((x, m))
    out = levels[-1][0] / levels[-1][1].clamp_min(1e-8)
    for x, m in reversed(levels[:-1]):
        up = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        a = (m * 4).clamp(0, 1)  # a quarter of a level's footprint with weight decides its own colour
        out = x / m.clamp_min(1e-8) * a + up * (1 - a)
    return out[0].permute(1, 2, 0)


def laplacian_blend(layers: list[torch.Tensor], weights: list[torch.Tensor], levels: int = 6) -> torch.Tensor:
    """Multi-band blend of [H, W, C] images with [H, W] weights (normalised per pixel)."""
    def pyr_down(x):
        return F.avg_pool2d(x, 2)

    def pyr_up(x, shape):
        return F.interpolate(x, size=shape, mode="bilinear", align_corners=False)

    total = None
    wsum = None
    for img, w in zip(layers, weights):
        g = img.permute(2, 0, 1)[None]
        m = w[None, None]
        gs, ms = [g], [m]
        for _ in range(levels):
            gs.append(pyr_down(gs[-1]))
            ms.append(pyr_down(ms[-1]))
        lap = [gs[i] - pyr_up(gs[i + 1], gs[i].shape[-2:]) for i in range(levels)] + [gs[-1]]
        contrib = [lap[i] * ms[i] for i in range(levels + 1)]
        total = contrib if total is None else [a + b for a, b in zip(total, contrib)]
        wsum = ms if wsum is None else [a + b for a, b in zip(wsum, ms)]
    bands = [t / s.clamp_min(1e-6) for t, s in zip(total, wsum)]
    out = bands[-1]
    for i in range(levels - 1, -1, -1):
        out = pyr_up(out, bands[i].shape[-2:]) + bands[i]
    return out[0].permute(1, 2, 0)


def unwrap(
    model: FaceModel,
    fit: FitResult,
    image: np.ndarray,
    region: np.ndarray,
    *,
    size: int = 1024,
    delight: bool = True,
    keep: np.ndarray | None = None,
    lips: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the photo into the unified head UV and divide out the fitted light.

    Args:
        model: the ICT model.
        fit: camera, identity, expression and light of the photo.
        image: [H, W, 3] uint8 sRGB photo.
        region: [H, W] float in [0, 1], where the photo shows the face (not hair, not background).
        size: texture size.
        delight: divide by the SH shading (False: raw photo colours, the
            "unwrap without de-lighting" baseline).
        keep: [H, W] float or bool, the pixels the parser calls unoccluded face
            surface (:func:`occlusion_free`); texels whose pixel is outside it get
            no confidence (mirror and prior fill them). None: ``region`` alone.
        lips: [H, W] bool, the pixels the parser calls lips. A smile or an open
            mouth is never fitted exactly, so lip pixels land on skin texels (a
            red halo round the neutral mouth) and skin or teeth on lip texels.
            With this mask, texels of the model's lip region
            (:func:`lip_region`, shrunk by ``LIP_MARGIN``) take lip pixels only
            and texels outside it (grown by ``LIP_MARGIN``) no lip pixel;
            :func:`fill_lips` then colours the lip texels left empty.

    Returns:
        ([size, size, 3] linear albedo, [size, size] confidence in [0, 1]).
    """
    h, w = image.shape[:2]
    verts = torch.from_numpy(model.morph(fit.identity, fit.expression))
    tris, cuv = _skin(model)
    tris_t = torch.from_numpy(tris).long()
    normals = vertex_normals(verts, torch.tensor(model.topology.triangles, dtype=torch.long))
    corners = torch.cat([verts[tris_t], normals[tris_t]], -1)[None]  # [1, F, 3, 6]
    attrs, texel_mask = rasterize_uv(corners.double(), cuv, size, extrapolate=0.0)
    pos = attrs[0, ..., :3].float().reshape(-1, 3)
    nrm = F.normalize(attrs[0, ..., 3:].float().reshape(-1, 3), dim=-1, eps=1e-8)
    covered = texel_mask[0].reshape(-1)

    cam = fit.camera
    rot = torch.from_numpy(cam.rotation).float()
    trans = torch.from_numpy(cam.translation).float()
    pc = pos @ rot.T + trans  # OpenCV camera coordinates
    z = pc[:, 2].clamp_min(1e-4)
    u = cam.fx * pc[:, 0] / z + cam.cx
    v = cam.fy * pc[:, 1] / z + cam.cy
    view = F.normalize(-pc, dim=-1)
    facing = (nrm @ rot.T * view).sum(-1)  # cos of the angle between normal and view ray

    # Visibility: depth of the whole head from the camera (eyes, lashes and nose occlude too).
    scale = min(1.0, 768 / max(h, w))
    rh, rw = max(8, round(h * scale)), max(8, round(w * scale))
    all_tris = torch.tensor(model.topology.triangles, dtype=torch.long)
    clip = transform_points(verts, gl_matrices(cam, (rh, rw)))
    frags = rasterize(clip, all_tris, (rh, rw))
    cam_z = (verts @ rot.T + trans)[:, 2:3]
    zbuf = interpolate(cam_z, frags, all_tris)[0, ..., 0]
    zbuf = torch.where(frags.mask[0], zbuf, torch.full_like(zbuf, float("inf")))
    px = ((u + 0.5) * scale - 0.5).round().long()
    py = ((v + 0.5) * scale - 0.5).round().long()
    inside = (px >= 0) & (px < rw) & (py >= 0) & (py < rh)
    depth_seen = zbuf[py.clamp(0, rh - 1), px.clamp(0, rw - 1)]
    visible = inside & (z <= depth_seen + 0.004) & covered

    img = srgb_to_linear(torch.tensor(image, dtype=torch.float32) / 255.0)
    grid = torch.stack([(u + 0.5) / w * 2 - 1, (v + 0.5) / h * 2 - 1], -1).view(1, -1, 1, 2)
    colour = F.grid_sample(img.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                           align_corners=False)[0, :, :, 0].T
    if keep is not None:
        if np.shape(keep) != (h, w):
            raise InputError(f"keep mask {np.shape(keep)} does not match the photo ({h}, {w})")
        region = np.asarray(region, np.float32) * np.asarray(keep, np.float32)
    reg = F.grid_sample(torch.from_numpy(np.asarray(region, np.float32)).float()[None, None], grid, mode="bilinear",
                        padding_mode="zeros", align_corners=False)[0, 0, :, 0]
    if delight:
        shade = sh_shading(nrm, torch.from_numpy(fit.light)).clamp_min(0.08)
        albedo = colour / shade
    else:
        albedo = colour
    conf = ((facing - 0.15) / 0.45).clamp(0, 1) ** 2 * visible.float() * reg.clamp(0, 1)
    if lips is not None:
        if np.shape(lips) != (h, w):
            raise InputError(f"lips mask {np.shape(lips)} does not match the photo ({h}, {w})")
        lipness = F.grid_sample(torch.from_numpy(np.asarray(lips, np.float32))[None, None], grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)[0, 0, :, 0]
        inner, outer = _lip_bands(model, size)
        wrong = (inner.reshape(-1) & (lipness < 0.5)) | (~outer.reshape(-1) & (lipness > 0.5))
        conf = torch.where(wrong, torch.zeros_like(conf), conf)
    conf = conf.view(size, size) * (1 - eyelid_mask(model, size))
    return albedo.clamp(0, 1).view(size, size, 3), conf


@functools.lru_cache(maxsize=4)
def eyelid_mask(model: FaceModel, size: int, *, lo: float = 0.0015, hi: float = 0.004) -> torch.Tensor:
    """[size, size] weight in [0, 1] of the eyelid skin that a blink uncovers.

    A photo with open eyes does not show that skin: it is folded into the lid
    crease, and the fitted lid lands on the photo's lashes, eye white and crease
    shadow, which a closed eye then shows as a grey streaked smudge. The mask is
    a smoothstep of how far each skin vertex moves under both ICT blinks (0 below
    ``lo``, 1 above ``hi``, metres); those texels get no photo confidence, so
    the mirror cannot bring the other lid's copy either and the tone-matched
    prior fills them.
    """
    basis = model.expression_basis
    motion = np.linalg.norm(basis[ICT_EXPRESSIONS.index("eyeBlink_L")] + basis[ICT_EXPRESSIONS.index("eyeBlink_R")],
                            axis=1)
    weight = np.clip((motion - lo) / (hi - lo), 0, 1)
    weight = weight * weight * (3 - 2 * weight)
    tris, cuv = _skin(model)
    values, _ = rasterize_uv(torch.from_numpy(weight[tris].astype(np.float64))[None, ..., None], cuv, size)
    return values[0, ..., 0].float().clamp(0, 1)


LIP_MARGIN = 0.006
"""UV band about the model's lip outline where texels take lip or skin pixels alike (the outline is approximate)."""


@functools.lru_cache(maxsize=4)
def lip_region(model: FaceModel, size: int) -> torch.Tensor:
    """[size, size] bool texels of the lips in the unified head UV: the outer lip outline of the 68 landmarks.

    The same outline the procedural skin (:mod:`avatarsdk.paint`) paints its lips in.
    """
    t = model.topology
    uv = t.head_uv[np.asarray(t.landmarks68)[48:60]].astype(np.float64) * size
    img = Image.new("1", (size, size), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in uv], fill=1)
    return torch.from_numpy(np.asarray(img, bool).copy())


def _lip_bands(model: FaceModel, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lip region shrunk by LIP_MARGIN, grown by LIP_MARGIN) as [size, size] bool."""
    r = max(1, round(LIP_MARGIN * size))
    m = lip_region(model, size)[None, None].float()
    grown = F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)[0, 0] > 0
    shrunk = -F.max_pool2d(-m, 2 * r + 1, stride=1, padding=r)[0, 0] > 0
    return shrunk, grown


@functools.lru_cache(maxsize=1)
def _lip_to_skin(model: FaceModel) -> np.ndarray:
    """[3] linear lip / skin colour ratio of the procedural skin at its mean tone and default lips."""
    size = 256
    model_lips = lip_region(model, size).numpy()
    img = srgb_to_linear(torch.from_numpy(paint_albedo(SkinParams(tone=mean_albedo_srgb()), size=size)).float()
                         / 255.0).numpy()
    ring = binary_dilation(model_lips, iterations=round(0.03 * size)) & ~binary_dilation(model_lips, iterations=2)
    return (np.median(img[model_lips], 0) / np.maximum(np.median(img[ring], 0), 1e-3)).astype(np.float32)


def fill_lips(model: FaceModel, albedo: torch.Tensor, confidence: torch.Tensor, *,
              min_texels: int = 50, unseen_from_skin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour the lip texels the photo did not show with the colour of the lip texels it did.

    With an open mouth or a smile, parts of the neutral closed lips (the inner
    vermilion rolled into the mouth, a corner) have no visible lip pixel;
    mirror and the procedural prior would fill them with a skin-toned guess.
    Instead they take the median de-lit colour of the confidently seen lip
    texels (:func:`lip_region`), at full confidence where the photo gave
    none, blended by confidence where it gave some.

    Args:
        model: the ICT model.
        albedo: [S, S, 3] linear albedo from :func:`unwrap` (with ``lips``).
        confidence: [S, S] in [0, 1].
        min_texels: fewer confidently seen lip texels than this: unchanged (left to mirror and
            prior), or with ``unseen_from_skin``, see there.
        unseen_from_skin: when too few lips were seen (a hand over the mouth), the lips take the
            median seen skin around them times the procedural model's lip / skin ratio rather
            than the prior's pale lips (unchanged when that ring too is unseen).

    Returns:
        (albedo, confidence), both new tensors.
    """
    size = albedo.shape[0]
    lip = lip_region(model, size)
    seen = lip & (confidence > 0.5)
    if int(seen.sum()) < min_texels:
        if not unseen_from_skin:
            return albedo, confidence
        # No lip seen (a hand over the mouth): the seen skin around the mouth times the lip / skin
        # ratio of the procedural skin model, rather than the prior's lips, tone-matched as skin.
        _, grown = _lip_bands(model, size)
        ring = F.max_pool2d(grown[None, None].float(), 2 * round(0.03 * size) + 1, stride=1,
                            padding=round(0.03 * size))[0, 0] > 0
        around = ring & ~grown & (confidence > 0.5)
        if int(around.sum()) < min_texels:
            return albedo, confidence
        colour = albedo[around].median(0).values * torch.from_numpy(_lip_to_skin(model))
    else:
        colour = albedo[seen].median(0).values
    c = confidence.clamp(0, 1)[..., None]
    filled = torch.where(lip[..., None], c * albedo + (1 - c) * colour, albedo)
    return filled, torch.where(lip, torch.ones_like(confidence), confidence)


def _skin_like(image: np.ndarray, parsing, where: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels of ``where`` whose colour is close to the parse's skin (median chromaticity
    within 0.03, lightness 0.45-1.8x): skin, not a glasses frame."""
    out = np.zeros(where.shape, bool)
    skin = parsing.skin
    if not where.any() or skin.sum() < 100:
        return out
    rgb = image.astype(np.float32) + 1.0
    ref = np.median(rgb[skin], 0)
    px = rgb[where]
    lum, ref_lum = px.sum(1), ref.sum()
    chroma = np.abs(px / lum[:, None] - ref / ref_lum).max(1)
    out[where] = (chroma < 0.03) & (lum > 0.45 * ref_lum) & (lum < 1.8 * ref_lum)
    return out


def occlusion_free(parsing, *, grow: float = 0.004, glasses_grow: float = 0.02,
                   image: np.ndarray | None = None) -> np.ndarray:
    """Pixels whose colour may enter the skin albedo, from a face parse.

    Kept: skin, nose, brows, lips and ears (:attr:`FaceParse.face_surface`);
    dropped: everything else, and a band of ``grow`` times the parser's crop
    side (about 2 px on a 500 px crop) around hair, hat, glasses, cloth, the
    mouth interior and jewellery (:attr:`FaceParse.occluders`), where the
    parser's boundary is soft and strands or teeth bleed into the skin label.

    Glasses get a wider band, ``glasses_grow``: the parser labels lenses well but
    the frame's outer edge, a thin metal rim or the bridge only in part, and those
    grey lines were baked round the eyes and across the nose (the development
    set's photos with glasses).

    The "mesh" parse knows no occluders but hands (:attr:`FaceParse.hands`):
    for it, everything but the hands (and the band around them) is kept, and
    the caller's face region decides the rest.

    Args:
        parsing: :class:`~avatarsdk.datatypes.FaceParse`.
        grow: width of the dropped band around occluders, as a fraction of the crop side.
        glasses_grow: width of the band around glasses (bisenet), same units.
        image: the photo ([H, W, 3] uint8): with it, face-surface pixels near the glasses (within
            1.5 ``glasses_grow``) whose colour is not the face's skin colour (frame parts the parser
            calls skin) are dropped too.

    Returns:
        [H, W] float32 in {0, 1}.
    """
    if parsing.method == "bisenet":
        ok, occ = parsing.face_surface, parsing.occluders
        if image is not None and parsing.glasses.any():
            # Thin parts of a frame (the bridge, a rim's edge) come out as skin or nose: near the
            # glasses, pixels whose colour is not the face's skin colour are dropped too.
            side = float(np.hypot(*parsing.crop[:, 0])) * INPUT_SIZE if parsing.crop is not None else max(ok.shape)
            near = binary_dilation(parsing.glasses, structure=np.ones((3, 3), bool),
                                   iterations=max(1, round(1.5 * glasses_grow * side))) & ok
            occ = occ | (near & ~_skin_like(image, parsing, near))
    else:
        hands = parsing.hands if parsing.hands is not None else np.zeros(parsing.labels.shape, bool)
        ok, occ = np.ones(parsing.labels.shape, bool), hands
    side = float(np.hypot(*parsing.crop[:, 0])) * INPUT_SIZE if parsing.crop is not None else max(ok.shape)
    r = max(1, round(grow * side))
    if occ.any():
        occ = binary_dilation(occ, structure=np.ones((3, 3), bool), iterations=r)
    rg = round(glasses_grow * side)
    if parsing.method == "bisenet" and rg > r and parsing.glasses.any():
        occ = occ | binary_dilation(parsing.glasses, structure=np.ones((3, 3), bool), iterations=rg)
    return (ok & ~occ).astype(np.float32)


def reject_forehead_hair(
    model: FaceModel,
    albedo: torch.Tensor,
    confidence: torch.Tensor,
    *,
    darker: float = 0.6,
    margin: float = 0.015,
    grow: float = 0.006,
) -> torch.Tensor:
    """Drop the forehead texels that show hair (a fringe) instead of skin.

    The face region of the photo includes the forehead up to the face oval,
    and a fringe over it would be baked into the albedo as a brown band.
    Hair is much darker than the skin it covers in nearly every photo, so
    forehead texels (face chart, above the brows by ``margin`` in UV) whose
    luminance is below ``darker`` times the median of the confident skin
    elsewhere lose their confidence, grown by ``grow`` (UV units) to catch the
    soft edges of strands; mirror and prior fill them. Blonde or grey hair on
    dark skin is not caught.

    Args:
        model: the ICT model (brow landmarks and head UV).
        albedo: [S, S, 3] linear albedo from :func:`unwrap`.
        confidence: [S, S] in [0, 1].
        darker: luminance ratio below which a forehead texel counts as hair.
        margin: how far above the brow landmarks (UV) the forehead starts.
        grow: dilation of the hair mask (UV).

    Returns:
        [S, S] confidence with the hair texels at 0.
    """
    size = albedo.shape[0]
    t = model.topology
    v_brow = float(np.nanmin(t.head_uv[np.asarray(t.landmarks68)[17:27], 1])) - margin
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    forehead = (centres[:, None] < v_brow) & (centres[None, :] < FACE_CHART_SCALE)
    sure = confidence > 0.5
    lum = albedo.mean(-1)
    reference = sure & ~forehead
    if int(reference.sum()) < 100:
        return confidence
    hair = forehead & sure & (lum < darker * lum[reference].median())
    r = max(1, round(grow * size))
    hair = F.max_pool2d(hair[None, None].float(), 2 * r + 1, stride=1, padding=r)[0, 0] > 0
    return torch.where(hair & forehead, torch.zeros_like(confidence), confidence)


@functools.lru_cache(maxsize=4)
def _feature_texels(model: FaceModel, size: int) -> torch.Tensor:
    """[size, size] bool: texels of features whose colour is not the cheeks' (lips, brows, lids).

    The lip region grown by ``LIP_MARGIN``, a band along the 68 landmarks' brows (3 % of the UV
    side wide) and the lids that a blink uncovers (:func:`eyelid_mask`).
    """
    t = model.topology
    img = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(img)
    for brow in (slice(17, 22), slice(22, 27)):
        uv = t.head_uv[np.asarray(t.landmarks68)[brow]].astype(np.float64) * size
        draw.line([(float(x), float(y)) for x, y in uv], fill=1, width=max(1, round(0.03 * size)), joint="curve")
    _, lips = _lip_bands(model, size)
    return torch.from_numpy(np.asarray(img, bool).copy()) | lips | (eyelid_mask(model, size) > 0)


def _log_colour(albedo: torch.Tensor) -> torch.Tensor:
    """[..., 3] (log luminance, log R/G, log G/B) of a linear albedo."""
    a = albedo.clamp_min(1e-3)
    return torch.stack([torch.log(a @ torch.from_numpy(LUMA).float()),
                        torch.log(a[..., 0] / a[..., 1]), torch.log(a[..., 1] / a[..., 2])], -1)


SEEN_CONFIDENCE = 0.15
"""Confidence at and below which :func:`complete_albedo` gives a texel no weight (grazing views, mask edges)."""

FOREIGN_CHROMA = 5.0
"""Robust z distance in chroma (log R/G, log G/B) from the face's own skin beyond which a texel is not skin."""

FOREIGN_DARKER = 5.0
"""Robust z (log luminance) below the face's own skin beyond which a texel is not skin."""


def foreign_texels(
    model: FaceModel,
    albedo: torch.Tensor,
    confidence: torch.Tensor,
    *,
    chroma: float = FOREIGN_CHROMA,
    darker: float = FOREIGN_DARKER,
    patch: float = 0.03,
    density: float = 0.4,
    weak: float = 0.6,
    grow: float = 0.006,
) -> torch.Tensor:
    """Texels whose de-lit colour is not the face's own skin: something the parser called skin.

    The parser calls some occluders skin: a glass held at the chin (its rim and what it holds),
    the shadow of sunglasses on the cheeks, a bridge of a frame. Their de-lit colour stands
    out from the face's own skin, which the unwrap itself gives: a robust model of it (median
    and scaled median absolute deviation, over the confident texels outside the lips, brows
    and lids) of log luminance and log chroma (log R/G, log G/B). A texel is foreign when its
    chroma is more than ``chroma`` robust deviations from the skin's, or its luminance more
    than ``darker`` below (the shading is divided out, so a darker texel is darker material,
    or a shadow the light model does not have). The skin's own variation sets the scale, so a
    dark skin tone, a red one, stubble spread over the jaw or a flushed nose are not outliers
    of their own face.

    Redder than the skin (towards red or magenta) is never foreign: blood, in a flush, a spot,
    and the ears and nostril rims whose shadow the light model lacks. Lips, brows and lids
    (:func:`_feature_texels`) are not tested. Only patches count: outliers where at least
    ``density`` of the seen texels in a window of ``patch`` (UV) are outliers, so that creases,
    wrinkles, moles, freckles and stray brow hairs (lines and specks) stay. From each patch
    (with its window around it) the mask runs on through connected texels that are outliers at
    ``weak`` times the thresholds (a glass's rim running off it), is closed over gaps up to the
    window, takes in the small islands of seen skin it cuts off against the unwrap's edge (the
    skin seen through a glass), and is grown by ``grow``. Mirror and prior fill it.

    A patch near the lips reaches on towards them (:func:`foreign_at_the_lips`): through the gap
    between it and the lips, where a redder dark texel is the occluder's (a glass pressed to the
    lower lip: its rim, the wine, the skin it encloses), and into the band round the lips through
    texels that are neither skin nor lip (:func:`lip_band_outliers`), never into the lips proper.
    On the development set this takes the rim line and smudge the glass left under a lower lip
    and changes nothing on faces with no patch by the lips.

    Tested are texels of confidence above :data:`SEEN_CONFIDENCE` (below it the completion gives
    them no weight). On the development set this drops a wine glass at a chin and dark
    strands at a few temples; on clean faces nothing or a temple's edge.

    Args:
        model: the ICT model (lip, brow and lid texels).
        albedo: [S, S, 3] linear de-lit albedo from :func:`unwrap`.
        confidence: [S, S] in [0, 1].
        chroma, darker: thresholds in robust deviations (see above).
        patch, density, weak, grow: see above (``patch`` and ``grow`` in UV units).

    Returns:
        [S, S] bool.
    """
    size = albedo.shape[0]
    seen = confidence > SEEN_CONFIDENCE
    features = _feature_texels(model, size)
    reference = (confidence > 0.5) & ~features
    none = torch.zeros(size, size, dtype=torch.bool)
    if int(reference.sum()) < 500:
        return none
    z = _robust_z(_log_colour(albedo), reference)
    # Redder than the skin, towards red to magenta (more R over G, not more G over B than that:
    # blood, in a flush, a spot, the ears and nostril rims the light model leaves dark) is the
    # face's own; towards grey, yellow, green or blue it is not.
    tested = seen & ~features & ~((z[..., 1] > 0) & (z[..., 2] < z[..., 1]))
    off_chroma = tested & (z[..., 1:].norm(dim=-1) > chroma)
    dark = tested & (z[..., 0] < -darker)

    # Patches, not specks or lines: where at least ``density`` of the seen texels within
    # ``patch`` (UV) are outliers (a glass's texels mix rim, contents and the skin behind;
    # a crease, a mole or a few brow hairs are a small part of any such window).
    r = max(1, round(patch * size / 2))
    outliers = off_chroma | dark
    # The window's share of outliers, compared without dividing by the window's size.
    dense = (window_count(outliers, r) > density * window_count(seen, r)) & outliers
    if not dense.any():
        return none
    # From those patches, on through the texels connected to them that are outliers at ``weak``
    # times the thresholds (a glass's rim running off its patch), then grown by ``grow``.
    weak_out = tested & ((z[..., 1:].norm(dim=-1) > weak * chroma) | (z[..., 0] < -weak * darker))
    seed = window_any(dense, r).numpy()  # each patch with its window around it
    reached = connected_to(seed, weak_out.numpy() | seed)
    # Gaps up to ``patch`` closed.
    reached = (~window_any(~window_any(torch.from_numpy(reached), r), r)).numpy() & seen.numpy()
    # Islands of seen texels that the outliers and the unwrap's edge cut off, smaller than 4 windows
    # (the skin seen through a glass, between its rim and its contents), go with them.
    reached |= _small_islands(seen.numpy() & ~reached, reached, 4 * (2 * r + 1) ** 2)
    g = max(1, round(grow * size))
    mask = window_any(torch.from_numpy(reached), g) & seen
    return mask | foreign_at_the_lips(model, albedo, confidence, z, mask, window=r, grow=g,
                                      chroma=weak * chroma, darker=weak * darker)


def _robust_z(f: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """[S, S, 3] robust z-scores of log colour ``f`` against its ``reference`` texels: median and MAD (x1.4826),
    the spread floored at 0.08 in log luminance and 0.03 in each log chroma (a very even skin or lip)."""
    ref = f[reference]
    centre = ref.median(0).values
    spread = (1.4826 * (ref - centre).abs().median(0).values).clamp_min(torch.tensor([0.08, 0.03, 0.03]))
    return (f - centre) / spread


def _small_islands(free: np.ndarray, mask: np.ndarray, max_area: int) -> np.ndarray:
    """The 4-connected components of ``free`` that touch ``mask`` (8-neighbours) and have fewer than ``max_area`` texels."""
    islands, n = label(free)
    if not n:
        return np.zeros_like(free)
    area = np.bincount(islands.ravel(), minlength=n + 1)
    touch = np.unique(islands[binary_dilation(mask, structure=np.ones((3, 3), bool))])
    small = np.zeros(n + 1, bool)
    small[touch] = area[touch] < max_area
    small[0] = False
    return small[islands]


def foreign_at_the_lips(model: FaceModel, albedo: torch.Tensor, confidence: torch.Tensor, z: torch.Tensor,
                        mask: torch.Tensor, *, window: int, grow: int, chroma: float, darker: float) -> torch.Tensor:
    """What a foreign patch leaves between itself and the lips: a glass pressed to the lower lip.

    :func:`foreign_texels` neither tests the lips with the band round them nor lets its reach
    cross texels redder than the skin, so a glass touching the lower lip leaves its dark rim line,
    what shows through it (wine: redder and dark) and the skin it encloses against the lip. From
    the foreign ``mask`` the reach runs on, through texels connected to it or to within ``grow``
    of it (a rim line may lie a texel off the glass's mask),

    * in the gap between the mask and the lips that a closing of both by ``window`` fills, through
      texels off the skin at ``chroma`` / ``darker`` (skin z-scores ``z``) whatever their hue: a
      redder texel there is the glass's, not a flush (plain skin in such a gap stays);
    * in the band round the lips, through texels that are neither skin nor lip
      (:func:`lip_band_outliers`: the rim line across the band).

    What it adds is grown by ``grow``, and the small islands of skin that it, the mask and the lips
    cut off (under 4 windows: the skin seen through the glass) go with it. The lips proper never.

    Returns:
        [S, S] bool, the texels to add to ``mask`` (none when no patch lies near the lips).
    """
    size = albedo.shape[0]
    seen = confidence > SEEN_CONFIDENCE
    none = torch.zeros(size, size, dtype=torch.bool)
    if not mask.any():
        return none
    inner, lips = _lip_bands(model, size)
    features = _feature_texels(model, size)
    off = seen & ~features & ((z[..., 1:].norm(dim=-1) > chroma) | (z[..., 0] < -darker))
    gap = ~window_any(~window_any(mask | lips, window), window) & ~lips & off
    band = lip_band_outliers(model, albedo, confidence, z, chroma=chroma, darker=darker)
    m = mask.numpy()
    near = (window_any(mask, grow) & seen).numpy()  # a component within ``grow`` of the mask touches it
    added = connected_to(near, near | (gap | band).numpy()) & ~near
    if not added.any():
        return none
    added = (window_any(torch.from_numpy(added), grow) & seen & ~inner).numpy() & ~m
    enclosed = _small_islands(seen.numpy() & ~m & ~added & ~lips.numpy(), added, 4 * (2 * window + 1) ** 2)
    return torch.from_numpy(added | enclosed)


def lip_band_outliers(model: FaceModel, albedo: torch.Tensor, confidence: torch.Tensor, z: torch.Tensor, *,
                      chroma: float, darker: float) -> torch.Tensor:
    """Texels of the band round the lips whose de-lit colour is neither the skin's nor the lips'.

    The band (the model's lip outline grown by ``LIP_MARGIN``, less the outline shrunk by it)
    takes lip pixels or skin pixels (:func:`unwrap`: the outline is approximate), so the skin's
    model alone would call its lip texels foreign. The lips get their own robust model, the same
    as the skin's (:func:`foreign_texels`: median and scaled MAD of log luminance and log chroma,
    spread floored alike), over the confident texels of the shrunk outline. A band texel is an
    outlier when it is off the skin by ``chroma`` robust deviations in chroma or ``darker`` below
    (``z``: its skin z-scores) and off the lips alike, by their own deviations: a dark grey-brown
    rim line is darker than both and less red than the lips. Redder than the lips is never an
    outlier (a lip's edge, blood), nor is anything with fewer than 50 confident lip texels to model.

    Args:
        model: the ICT model (its lip outline).
        albedo: [S, S, 3] linear de-lit albedo.
        confidence: [S, S].
        z: [S, S, 3] skin z-scores of (log luminance, log R/G, log G/B).
        chroma, darker: thresholds in robust deviations, for either model.

    Returns:
        [S, S] bool.
    """
    size = albedo.shape[0]
    inner, outer = _lip_bands(model, size)
    seen = confidence > SEEN_CONFIDENCE
    reference = inner & (confidence > 0.5)
    none = torch.zeros(size, size, dtype=torch.bool)
    if int(reference.sum()) < 50:
        return none
    zl = _robust_z(_log_colour(albedo), reference)
    off_skin = (z[..., 1:].norm(dim=-1) > chroma) | (z[..., 0] < -darker)
    redder_than_lips = (zl[..., 1] > 0) & (zl[..., 2] < zl[..., 1])
    off_lips = ~redder_than_lips & ((zl[..., 1:].norm(dim=-1) > chroma) | (zl[..., 0] < -darker))
    return outer & ~inner & seen & off_skin & off_lips


def window_any(m: torch.Tensor, r: int) -> torch.Tensor:
    """[H, W] bool: any texel of ``m`` in the (2r+1)^2 window around each texel.

    Two 1-D max pools instead of one 2-D one (0.4 s per call at 1024 px with r = 15: the 2-D pool
    visits every texel of the window); the same result (tested against the 2-D pool).
    """
    x = F.max_pool2d(m[None, None].float(), (2 * r + 1, 1), stride=1, padding=(r, 0))
    return F.max_pool2d(x, (1, 2 * r + 1), stride=1, padding=(0, r))[0, 0] > 0


def window_count(m: torch.Tensor, r: int) -> torch.Tensor:
    """[H, W] int64: texels of ``m`` in the (2r+1)^2 window around each texel (clipped at the edges).

    From an integral image, exact, in time independent of ``r`` (tested against a summing pool).
    """
    c = F.pad(m.to(torch.int32), (r + 1, r, r + 1, r)).cumsum(0).cumsum(1)
    k = 2 * r + 1
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def connected_to(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The texels of ``mask`` 8-connected to ``seed`` within it (``seed`` must lie in ``mask``).

    Equal to ``scipy.ndimage.binary_propagation(seed, structure=np.ones((3, 3)), mask=mask)``, which
    dilates one texel per pass until nothing changes: seconds at 1024 px when a rim runs far. One
    labelling of ``mask``'s components does it in a single pass (tested against it).
    """
    components, n = label(mask, structure=np.ones((3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(components[seed & mask])] = True
    keep[0] = False
    return keep[components]


def reject_foreign(model: FaceModel, albedo: torch.Tensor, confidence: torch.Tensor, **kwargs) -> torch.Tensor:
    """``confidence`` with the :func:`foreign_texels` at 0 (same keyword arguments)."""
    return torch.where(foreign_texels(model, albedo, confidence, **kwargs), torch.zeros_like(confidence), confidence)


GREY_SPREAD = 6
"""Most spread between the RGB channels (of 255, 99th percentile over the face) of a photo
that carries no colour: a greyscale photo, also one stored as RGB or JPEG-compressed (its
chroma noise is a few levels); the skin of a colour photo spreads 30-80."""


def photo_has_colour(image: np.ndarray, region: np.ndarray) -> bool:
    """Whether the photo shows the face in colour (not greyscale).

    Args:
        image: [H, W, 3] uint8 sRGB photo.
        region: [H, W] float face region (:func:`avatarsdk.detect.face_region`).

    Returns:
        False when the channels agree within :data:`GREY_SPREAD` on the face.
    """
    px = image[region > 0.5] if (region > 0.5).any() else image.reshape(-1, 3)
    spread = px.max(-1).astype(np.int16) - px.min(-1)
    return bool(np.percentile(spread, 99) > GREY_SPREAD)


def colourise_grey(albedo: torch.Tensor, confidence: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Give the albedo unwrapped from a greyscale photo a plausible skin colour.

    A grey photo says how light the skin is, not its colour. The procedural skin
    (:func:`avatarsdk.paint.procedural_albedo`, plain: bald, no beard or freckles)
    is painted at the tone whose luminance matches the observed skin's median;
    each texel then keeps the photo's luminance (its detail and shading) with
    the procedural skin's chromaticity at that texel (lips redder than cheeks).

    Args:
        albedo: [S, S, 3] linear albedo from :func:`unwrap` (grey: equal channels).
        confidence: [S, S] in [0, 1].
        size: S.

    Returns:
        ([S, S, 3] linear coloured albedo, [S, S, 3] linear prior for :func:`complete_albedo`).
    """
    luma = torch.from_numpy(LUMA)
    y = albedo @ luma  # [S, S]
    sure = confidence > 0.5
    observed = float(y[sure].median()) if int(sure.sum()) > 100 else float(y.median())
    tone = tone_for_luminance(observed)
    plain = procedural_albedo(0, size=size, tone=tone, hair_style="bald", beard=0.0, freckles=0.0, age=0.2)
    prior = srgb_to_linear(torch.from_numpy(plain).float() / 255.0)
    coloured = prior * (y / (prior @ luma).clamp_min(1e-4))[..., None]
    return coloured.clamp(0, 1), prior


def complete_albedo(
    model: FaceModel,
    albedo: torch.Tensor,
    confidence: torch.Tensor,
    prior: torch.Tensor,
    *,
    pull: bool = True,
) -> torch.Tensor:
    """Fill the unseen texels (mirror, then tone-matched prior) and blend seams.

    Args:
        model: the ICT model (for the mirror map).
        albedo: [S, S, 3] linear albedo from :func:`unwrap`.
        confidence: [S, S] in [0, 1].
        prior: [S, S, 3] linear prior albedo (e.g. procedural skin) for what no photo sees.
        pull: first replace the photo layer's texels of no weight (occluders, background, grazing
            views) by a :func:`push_pull` of the weighted ones: the blend's coarse bands average
            every texel of a layer, so a lock of hair or a hand left out of the unwrap still
            darkened or tinted the skin around it.

    Returns:
        [S, S, 3] linear albedo, gutters dilated.
    """
    size = albedo.shape[0]
    # Match the prior's tone to the observed skin (median over confident texels).
    sure = confidence > 0.5
    if sure.sum() > 100:
        observed = albedo[sure].median(0).values
        reference = prior[sure].median(0).values
        prior = (prior * (observed / reference.clamp_min(1e-3))).clamp(0, 1)
    # Low confidences are grazing views and mask edges (background bleeds in): drop them.
    w_photo = ((confidence - SEEN_CONFIDENCE) / (1 - SEEN_CONFIDENCE)).clamp(0, 1)
    if pull:
        albedo = push_pull(albedo, (w_photo > 0).float())
    # Texels a layer has no weight at still feed the coarse bands of the blend (and the mirror's
    # bilinear reads) near texels it has weight at: a closed eyelid's texels (folded away in an
    # open-eye photo) carried the lashes and eye white, stretched, into the lid as a grey streaked
    # smudge. There, the photo layer holds the prior instead (a smooth mask, so no step for the
    # blend's fine bands to ring at; replacing every zero-weight texel did ring, above the brows).
    lid = eyelid_mask(model, size)[..., None]
    albedo = albedo * (1 - lid) + prior * lid
    mirror = mirror_uv_map(model, size)
    grid = (mirror * 2 - 1).view(1, size, size, 2)
    mirrored = F.grid_sample(albedo.permute(2, 0, 1)[None], grid, mode="bilinear", align_corners=False)
    mirrored = mirrored[0].permute(1, 2, 0)
    mconf = F.grid_sample(confidence[None, None], grid, mode="bilinear", align_corners=False)[0, 0]
    w_mirror = 0.8 * ((mconf - 0.15) / 0.85).clamp(0, 1) * (1 - w_photo)
    w_prior = torch.full_like(confidence, 0.1)
    mirrored = mirrored * (1 - lid) + prior * lid
    out = laplacian_blend([albedo, mirrored, prior], [w_photo, w_mirror, w_prior], levels=int(math.log2(size)) - 3)
    # The blend works in UV space, where the face chart and the scalp chart are far apart: the
    # photo's tone reaches the face chart's top edge but not the scalp across the seam, a line
    # across the upper forehead. Level the charts where they meet on the head.
    return level_seams(model, out.clamp(0, 1))


@functools.lru_cache(maxsize=4)
def _seam_field(model: FaceModel, rings: int):
    """UV-welded skin graph near the seams (see :func:`level_seams`); cached per model.

    Returns:
        (copy_uv [N, 2] float64, copy_of_corner [F, 3] int64, seam_groups: list of
        [k] int64 arrays of copies of one vertex, solver(offsets [N_seam, C]) -> [N, C]).
    """
    tris, cuv = _skin(model)
    cuv = cuv.numpy().astype(np.float32)
    bits = np.ascontiguousarray(cuv.reshape(-1, 2)).view(np.uint32).astype(np.int64)
    keys = np.concatenate([tris.reshape(-1, 1).astype(np.int64), bits], 1)
    uniq, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    corner = inverse.reshape(-1, 3)
    copy_uv = cuv.reshape(-1, 2)[first].astype(np.float64)
    vert = uniq[:, 0]
    n = len(vert)
    # Seam copies: an ICT vertex with more than one UV.
    counts = np.bincount(vert)
    seam = counts[vert] > 1
    order = np.argsort(vert[seam], kind="stable")
    seam_ids = np.nonzero(seam)[0][order]
    _, starts = np.unique(vert[seam_ids], return_index=True)
    groups = np.split(seam_ids, starts[1:])
    # Graph distance (in edges) from the seam over the welded graph (charts stay apart).
    e = np.concatenate([corner[:, [0, 1]], corner[:, [1, 2]], corner[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64).tocsr()
    dist = np.full(n, rings, np.int64)
    frontier = seam.copy()
    dist[frontier] = 0
    for d in range(1, rings):
        reached = (adj @ frontier.astype(np.float64)) > 0
        frontier = reached & (dist == rings)
        dist[frontier] = d
    free = np.nonzero((dist > 0) & (dist < rings))[0]
    fixed_seam = np.nonzero(dist == 0)[0]
    # Harmonic (uniform-weight Laplace) interpolation: offset on the seam copies, 0 at `rings` edges away.
    deg = np.asarray(adj.sum(1)).ravel()
    lap = (sp.diags(deg) - adj).tocsr()
    lu = splu(lap[free][:, free].tocsc())
    coupling = lap[free][:, fixed_seam]

    def solve(seam_offsets: np.ndarray) -> np.ndarray:
        out = np.zeros((n, seam_offsets.shape[1]))
        out[fixed_seam] = seam_offsets
        out[free] = lu.solve(-(coupling @ seam_offsets))
        return out

    return copy_uv, corner, groups, fixed_seam, solve


def level_seams(model: FaceModel, albedo: torch.Tensor, *, rings: int = 8) -> torch.Tensor:
    """Make the skin texture agree across UV seams, with a smooth correction on each side.

    At each vertex that has several UVs (a chart seam, e.g. where the face chart
    meets the scalp), the texture is read at every UV and each chart gets the
    difference to their mean; that offset fades to zero ``rings`` edges into
    the chart by harmonic interpolation on the mesh (about 3 cm on the ICT
    head, wide enough that no gradient shows), and is rasterised into the
    texture. A seam vertex then reads one colour from every chart; texels
    further than ``rings`` edges from any seam are unchanged. (This is the
    usual seam levelling of texture atlases; no library here offers it.)

    Args:
        model: the ICT model (skin triangles and their UVs).
        albedo: [S, S, 3] float texture in [0, 1] (any colour space; linear here).
        rings: width of the correction band in mesh edges.

    Returns:
        [S, S, 3] float texture in [0, 1].
    """
    size = albedo.shape[0]
    copy_uv, corner, groups, fixed_seam, solve = _seam_field(model, rings)
    grid = torch.from_numpy(copy_uv * 2 - 1).float().view(1, -1, 1, 2)
    sampled = F.grid_sample(albedo.permute(2, 0, 1)[None].float(), grid, mode="bilinear",
                            padding_mode="border", align_corners=False)[0, :, :, 0].T.double().numpy()  # [N, 3]
    target = sampled.copy()
    for g in groups:
        target[g] = sampled[g].mean(0)
    field = solve((target - sampled)[fixed_seam])  # [N, 3]
    values = torch.from_numpy(field[corner])[None]  # [1, F, 3, 3]
    _, cuv = _skin(model)
    offset, _ = rasterize_uv(values, cuv, size)
    return (albedo + offset[0].to(albedo.dtype)).clamp(0, 1)


# ---------------------------------------------------------------------------
# Exposure from the whites of the eyes
# ---------------------------------------------------------------------------

# Model-frame normals of the visible sclera (+X is the subject's left): about the
# gaze, tilted a little outward.
_SCLERA_NORMALS = {"left": (0.2, 0.0, 0.98), "right": (-0.2, 0.0, 0.98)}


@dataclass(frozen=True)
class Exposure:
    """How far the photo's exposure is from the fitted light's (see :func:`sclera_exposure`).

    Attributes:
        scale: divide the de-lit albedo by this (1.0: no correction).
        per_eye: side -> {"pixels", "shading", "estimate"} for the eyes used.
    """

    scale: float
    per_eye: dict
    balance: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def to_json(self) -> dict:
        return {"scale": round(self.scale, 4), "per_eye": self.per_eye,
                "balance": [round(float(g), 4) for g in self.balance]}


def sclera_exposure(
    samples: dict[str, np.ndarray],
    light: np.ndarray,
    *,
    min_pixels: int = 40,
    min_shading: float = 0.6,
    dead_zone: float = 0.1,
    floor: float = 0.3,
) -> Exposure:
    """Estimate the photo's exposure from the whites of the eyes.

    The fit fixes the light/albedo scale by assuming the key light gives unit
    irradiance (:func:`avatarsdk.fit.fit_photo`): right for a well-exposed
    photo, but an underexposed one then yields an albedo that is too dark,
    and skin colour alone cannot tell a dim light-skinned face from a well-lit
    darker one. The sclera can: it is near-white in everyone. Each eye's
    brighter half of sclera pixels (lids shade the rest), divided by the
    sclera albedo (:data:`avatarsdk.materials.SCLERA_SRGB`) times the fitted
    shading at the eye, estimates the exposure.

    The cue is used only where it was measured to be reliable (synthetic
    photos, 1024 px): eyes with at least ``min_pixels`` sclera pixels (a face
    ~400 px tall or more) that the fitted light reaches well (shading at least
    ``min_shading``: under a top or side light the brow and nose shade the
    eye, which SH shading does not model, and the estimate reads 0.6-4.5x off).
    Only underexposure is corrected, beyond a ``dead_zone`` in log units, and
    never below ``floor``: the brightness anchor of the fit already handles a
    normally exposed photo, and an eye reading brighter than expected was in
    every measured case an error of the shading at the eye.

    Caveats: the synthetic benchmark renders eyes with this same sclera
    albedo, so it scores this cue under its own assumption; in real photos
    bloodshot or shaded eyes read darker (the floor bounds the harm).

    Args:
        samples: side -> [N, 3] uint8 sRGB sclera pixels (:func:`avatarsdk.detect.sclera_pixels`).
        light: [9, 3] fitted SH light (model frame).
        min_pixels: eyes with fewer pixels are ignored.
        min_shading: eyes with less fitted shading are ignored.
        dead_zone: log-exposure deficits below this are left alone (and the rest reduced by it).
        floor: smallest scale returned.

    Returns:
        :class:`Exposure` (scale 1.0 when no eye is usable).
    """
    sclera = float(srgb_to_linear(torch.tensor(SCLERA_SRGB)).mean())
    light_t = torch.as_tensor(np.asarray(light, np.float32))
    logs, weights, per_eye = [], [], {}
    for side, px in samples.items():
        px = np.asarray(px)
        if px.ndim != 2 or len(px) < min_pixels:
            continue
        lin = srgb_to_linear(torch.from_numpy(px[:, :3].astype(np.float32) / 255.0)).mean(-1)
        bright = lin[lin >= lin.median()]
        shade = float(sh_shading(torch.tensor([_SCLERA_NORMALS[side]]), light_t).mean())
        estimate = float(bright.mean()) / (sclera * max(shade, 1e-3))
        per_eye[side] = {"pixels": int(len(px)), "shading": round(shade, 4), "estimate": round(estimate, 4)}
        if shade < min_shading:
            continue
        logs.append(math.log(max(estimate, 1e-3)))
        weights.append(len(px) * shade)
    if not logs:
        return Exposure(scale=1.0, per_eye=per_eye)
    deficit = max(-float(np.average(logs, weights=weights)) - dead_zone, 0.0)
    return Exposure(scale=max(math.exp(-deficit), floor), per_eye=per_eye)


# ---------------------------------------------------------------------------
# The range of real skin
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SkinLimits:
    """Bounds of plausible skin albedo, as statistics of a face's linear albedo.

    Attributes:
        luminance: (lowest, highest) Rec. 709 luminance of the face's median linear albedo.
        red_green: (lowest, highest) ratio red / green of that median.
        blue_green: (lowest, highest) ratio blue / green.
    """

    luminance: tuple[float, float]
    red_green: tuple[float, float]
    blue_green: tuple[float, float]

    def as_json(self) -> dict:
        return {k: [round(v, 4) for v in getattr(self, k)] for k in ("luminance", "red_green", "blue_green")}


def _tone_limits() -> SkinLimits:
    # The cheek albedos of the ten Monk swatches (paint.ALBEDO_TONES, lightest to darkest) span, in linear
    # light, luminance 0.023-0.53, red/green 1.52-2.40 and blue/green 0.48-0.80. Widened by margins that
    # leave room for lips, brows, stubble and the fit's errors, not for a white, green, blue or black head.
    lin = srgb_to_linear(torch.tensor(ALBEDO_TONES, dtype=torch.float32) / 255.0).numpy()
    lum = lin @ LUMA
    rg, bg = lin[:, 0] / lin[:, 1], lin[:, 2] / lin[:, 1]
    return SkinLimits(luminance=(float(lum.min()) * 0.5, float(lum.max()) * 1.35),
                      red_green=(float(rg.min()) / 1.35, float(rg.max()) * 1.35),
                      blue_green=(float(bg.min()) / 1.5, float(bg.max()) * 1.4))


SKIN_LIMITS = _tone_limits()
"""The range of real skin that the refinement is held to and checked against (:func:`albedo_divergence`)."""


def _log_stats(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] linear rgb -> [..., 3] (log luminance, log red/green, log blue/green)."""
    rgb = rgb.clamp_min(1e-4)
    lum = rgb @ torch.as_tensor(LUMA, dtype=rgb.dtype, device=rgb.device)
    return torch.stack([lum.log(), (rgb[..., 0] / rgb[..., 1]).log(), (rgb[..., 2] / rgb[..., 1]).log()], -1)


def skin_range_excess(rgb: torch.Tensor, limits: SkinLimits = SKIN_LIMITS) -> torch.Tensor:
    """How far a face's mean linear albedo lies outside the range of real skin (differentiable).

    Args:
        rgb: [..., 3] linear albedo (a face region's mean).
        limits: the range (default :data:`SKIN_LIMITS`).

    Returns:
        [...] sum over luminance, red/green and blue/green of the squared distance, in log
        units, beyond the limits (0 inside).
    """
    stats = _log_stats(rgb)
    lo = torch.log(torch.tensor([limits.luminance[0], limits.red_green[0], limits.blue_green[0]], dtype=rgb.dtype,
                                device=rgb.device))
    hi = torch.log(torch.tensor([limits.luminance[1], limits.red_green[1], limits.blue_green[1]], dtype=rgb.dtype,
                                device=rgb.device))
    return (F.relu(lo - stats) + F.relu(stats - hi)).pow(2).sum(-1)


SKIN_LOCUS_TOLERANCE = 0.25
"""How far (log chroma units, about 28 %) a face's de-lit skin may lie from the skin locus before
:func:`skin_locus_balance` pulls it back. The farthest of the development set's faces without a coloured
light is 0.22 (pale, pink skin), those under a purple bar light 0.29-0.49."""


def _locus_point(q: np.ndarray) -> np.ndarray:
    """Nearest point to ``q`` ([2]: log red/green, log blue/green) on the polyline of the ten skin swatches."""
    lin = srgb_to_linear(torch.tensor(ALBEDO_TONES, dtype=torch.float32) / 255.0).numpy().astype(np.float64)
    pts = np.stack([np.log(lin[:, 0] / lin[:, 1]), np.log(lin[:, 2] / lin[:, 1])], 1)
    a, b = pts[:-1], pts[1:]
    t = np.clip(((q - a) * (b - a)).sum(1) / ((b - a) ** 2).sum(1), 0.0, 1.0)
    near = a + t[:, None] * (b - a)
    return near[np.argmin(np.linalg.norm(near - q, axis=1))]


def skin_locus_balance(albedo: torch.Tensor, conf: torch.Tensor, *, tolerance: float = SKIN_LOCUS_TOLERANCE,
                       min_texels: int = 200) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """White-balance a de-lit albedo whose skin is off the range of real skin colour (a coloured light).

    The fit keeps its light nearly white (its colour is confounded with the
    skin's), so a purple bar light or a low orange sun stays in the albedo as
    pink or orange skin. Real skin albedo, from the lightest to the darkest,
    lies near one curve of chromaticity: the ten cheek swatches of
    :data:`avatarsdk.paint.ALBEDO_TONES` in (log red/green, log blue/green).
    When the median of the confident face texels lies more than ``tolerance``
    from that curve, red and blue are scaled (a von Kries white balance, the
    light's colour divided out) so that it lies at ``tolerance``, the median's
    luminance kept. Skin within the tolerance, whatever its tone, is left alone.

    Args:
        albedo: [S, S, 3] linear de-lit albedo.
        conf: [S, S] confidence of each texel (the unwrap's).
        tolerance: log-chroma distance from the curve left alone.
        min_texels: fewer confident face texels: nothing is changed.

    Returns:
        (the balanced albedo, clamped to [0, 1]; the (r, g, b) gains applied).
    """
    size = albedo.shape[0]
    m = (conf.numpy() > 0.5) & (face_region_mask(size) > 0.5)
    if int(m.sum()) < min_texels:
        return albedo, (1.0, 1.0, 1.0)
    med = np.median(albedo.numpy()[m].astype(np.float64), 0)
    if med.min() <= 1e-4:
        return albedo, (1.0, 1.0, 1.0)
    q = np.log([med[0] / med[1], med[2] / med[1]])
    p = _locus_point(q)
    d = float(np.linalg.norm(q - p))
    if d <= tolerance:
        return albedo, (1.0, 1.0, 1.0)
    target = p + (q - p) * tolerance / d
    gains = np.array([math.exp(target[0] - q[0]), 1.0, math.exp(target[1] - q[1])])
    gains *= float(med @ LUMA) / float((med * gains) @ LUMA)
    g = tuple(float(x) for x in gains)
    return (albedo * torch.tensor(g, dtype=albedo.dtype)).clamp(0, 1), g


def skin_statistics(albedo: torch.Tensor, mask: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Median linear albedo of a face region and its luminance and chroma ratios.

    Args:
        albedo: [S, S, 3] linear albedo.
        mask: [S, S] texels to use (e.g. :func:`avatarsdk.paint.face_region_mask`), bool or in [0, 1].

    Returns:
        {"rgb": [3] list, "luminance", "red_green", "blue_green"} floats.
    """
    m = torch.as_tensor(np.asarray(mask)) > 0.5
    px = torch.as_tensor(albedo, dtype=torch.float32)[m]
    if px.shape[0] == 0:
        raise InputError("the face region has no texels")
    med = px.median(0).values
    stats = _log_stats(med).exp()
    return {"rgb": [round(float(x), 4) for x in med], "luminance": round(float(stats[0]), 4),
            "red_green": round(float(stats[1]), 4), "blue_green": round(float(stats[2]), 4)}


def albedo_divergence(albedo: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | np.ndarray, *,
                      limits: SkinLimits = SKIN_LIMITS, luminance_ratio: float = 1.7,
                      chroma_log: float = 0.3) -> str | None:
    """Whether a face albedo ran away from a reference one (a refinement from the fit's).

    The statistics of :func:`skin_statistics` are compared on the face region: the albedo
    diverged when its median's luminance is more than ``luminance_ratio`` times brighter or
    darker than the reference's, its red/green or blue/green ratio is off by more than
    ``chroma_log`` in log units, or it lies outside the range of real skin (``limits``) while
    the reference does not. A white, green, blue or black head fails; one a little lighter,
    darker or warmer than the reference passes.

    Args:
        albedo, reference: [S, S, 3] linear albedos (same size).
        mask: [S, S] face-region texels.

    Returns:
        None, or the reason in one line.
    """
    a, r = skin_statistics(albedo, mask), skin_statistics(reference, mask)
    ratio = a["luminance"] / max(r["luminance"], 1e-4)
    if not 1.0 / luminance_ratio <= ratio <= luminance_ratio:
        return (f"face albedo luminance {a['luminance']:.3f} is {ratio:.2f}x the fit's {r['luminance']:.3f} "
                f"(allowed {1 / luminance_ratio:.2f}-{luminance_ratio:.2f}x)")
    for key, name in (("red_green", "red/green"), ("blue_green", "blue/green")):
        d = abs(math.log(max(a[key], 1e-4) / max(r[key], 1e-4)))
        if d > chroma_log:
            return f"face albedo {name} {a[key]:.2f} vs the fit's {r[key]:.2f} (log difference {d:.2f} > {chroma_log})"

    def inside(s: dict) -> bool:
        return all(lo <= s[k] <= hi for k, (lo, hi) in (("luminance", limits.luminance),
                                                        ("red_green", limits.red_green),
                                                        ("blue_green", limits.blue_green)))
    if not inside(a) and inside(r):
        return (f"face albedo (luminance {a['luminance']:.3f}, red/green {a['red_green']:.2f}, blue/green "
                f"{a['blue_green']:.2f}) is outside the range of real skin {limits.as_json()}")
    return None

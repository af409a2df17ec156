"""Top-level jobs: plain functions from inputs to an Avatar (no printing, no files)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avatarsdk import __version__, pretrained
from avatarsdk.albedo import (albedo_divergence, colourise_grey, complete_albedo, fill_lips, occlusion_free,
                              photo_has_colour, reject_foreign, reject_forehead_hair, sclera_exposure,
                              skin_locus_balance, skin_statistics, unwrap)
from avatarsdk.colour import linear_to_srgb, srgb_to_linear
from avatarsdk.detect import detect_upright, face_region, sclera_pixels, skin_mask
from avatarsdk.errors import ConfigError, InputError
from avatarsdk.fit import FitOptions, LandmarkSpec, fit_photo
from avatarsdk.hair import HAIR_MODES, auto_hair, with_hair
from avatarsdk.hair.photo import fit_hair
from avatarsdk.licensing import resolve
from avatarsdk.losses import face_mesh
from avatarsdk.materials import IRIS_COLOURS, SKIN_TONES, default_textures, paint_mouth_interior, plain_skin_albedo
from avatarsdk.nn.checkpoint import load
from avatarsdk.nn.identity import embed_photo
from avatarsdk.nn.onnx import OnnxModel
from avatarsdk.nn.stylegan import decode_maps, sample_z
from avatarsdk.invert import InvertConfig, invert_fit
from avatarsdk.iris import eyes_behind_glasses, iris_colour
from avatarsdk.parse import parse_face
from avatarsdk.pbr import photo_relief, skin_maps
from avatarsdk.photo import load_photo
from avatarsdk.refine import RefineConfig, RefineTarget, refine
from avatarsdk.rigs import load_ict
from avatarsdk.rigs.ict import ICT_EXPRESSIONS
from avatarsdk.rigs.mediapipe_map import load_correspondence
from avatarsdk.sizes import PHOTO_MIN_TEXTURE_SIZE, check_texture_size
from avatarsdk.paint import face_region_mask, procedural_albedo
from avatarsdk.datatypes import FACE_MESH_POINTS, Avatar, Photo, Rig
from avatarsdk.uvmap import offset_map_to_mesh

log = logging.getLogger(__name__)


def random_avatar(
    seed: int,
    *,
    identity_scale: float = 1.0,
    names: str = "arkit",
    texture_size: int = 1024,
    ict_dir: str | os.PathLike | None = None,
) -> Avatar:
    """Sample a random ICT identity with a plain skin-tone albedo.

    Args:
        seed: seeds identity, skin tone and iris colour (same seed, same head).
        identity_scale: multiplies the N(0, 1) identity coefficients; > 2 gives
            caricatures, 0 the generic mean head.
        names: blendshape naming, "arkit" (52) or "ict" (53).
        texture_size: skin albedo resolution (power of two, 64..4096).
        ict_dir: ICT-FaceKit folder (default: configured location).

    Raises:
        InputError: bad scale or texture size.
        DataError: ICT data missing.
    """
    if not (0.0 <= identity_scale <= 5.0) or not np.isfinite(identity_scale):
        raise InputError(f"identity_scale must be in [0, 5], got {identity_scale}")
    check_texture_size(texture_size)
    rng = np.random.default_rng(seed)
    model = load_ict(ict_dir)
    coeffs = rng.standard_normal(model.identity_basis.shape[0]) * identity_scale
    vertices = model.morph(coeffs)
    tone = np.asarray(SKIN_TONES[rng.integers(len(SKIN_TONES))], np.float64) / 255.0
    tone = np.clip(tone * rng.uniform(0.95, 1.05), 0, 1)  # brightness only: keeps the hue of the swatch
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    skin = paint_mouth_interior(plain_skin_albedo(tuple(tone), size=texture_size), model.topology, vertices)
    textures = {"skin": skin, **default_textures(iris_rgb=iris, seed=seed),
                **skin_maps(vertices, model.topology, size=texture_size, seed=seed, occlusion_from=model.neutral)}
    meta = {
        "generator": f"avatarsdk {__version__}",
        "mode": "random",
        "seed": int(seed),
        "identity_scale": float(identity_scale),
        "identity": [round(float(c), 6) for c in coeffs],
        "ict_sha256": model.data.source_sha256,
    }
    return Avatar(vertices=vertices, topology=model.topology, textures=textures, rig=model.rig(vertices, names=names),
                  meta=meta)


@functools.lru_cache(maxsize=2)
def _generator(path: str | None):
    return load(path if path is not None else pretrained.locate("generator"), kind="generator").model


def load_generator(path: str | os.PathLike | None = None):
    """The UV StyleGAN2 G of a checkpoint (None: the shipped weights, sha256 checked), loaded once per path."""
    return _generator(None if path is None else str(Path(path).resolve()))


@functools.lru_cache(maxsize=2)
def _regressor(path: str | None):
    return load(path if path is not None else pretrained.locate("regressor"), kind="regressor").model


@functools.lru_cache(maxsize=4)
def _onnx(name: str):
    """The shipped ONNX graph ``name`` (a :data:`avatarsdk.pretrained.REGISTRY` key) in onnxruntime, sha256 pinned."""
    return OnnxModel(pretrained.locate(name), sha256=pretrained.REGISTRY[name].sha256)


def infer_maps(photo, *, refuse_multiple: bool = False, generator=None, regressor=None) -> tuple:
    """The paper's inference path: identity embedding -> R -> w -> G -> UV maps.

    Args:
        photo: a path, bytes, array or :class:`Photo`.
        refuse_multiple: raise MultipleFaces instead of taking the largest face.
        generator, regressor: checkpoints (default: the shipped weights).

    Returns:
        (photo, landmarks, embedding [128], ws [L, w_dim], albedo [R, R, 3] linear, offsets [R, R, 3] metres).
    """
    photo = photo if isinstance(photo, Photo) else load_photo(photo)
    photo, lm, _ = detect_upright(photo, refuse_multiple=refuse_multiple)
    emb = embed_photo(photo, lm)
    ws = regress_latent(emb, regressor=regressor)[None]
    if generator is None:  # the shipped G: its ONNX synthesis graph in onnxruntime
        G = _generator(None)
        maps = torch.from_numpy(_onnx("generator_onnx")(ws))
    else:
        G = _generator(str(Path(generator).resolve()))
        with torch.no_grad():
            maps = G.synthesis(torch.from_numpy(ws))
    albedo, offsets = decode_maps(maps, G.cfg)
    return (photo, lm, emb, ws[0], albedo[0].permute(1, 2, 0).numpy(), offsets[0].permute(1, 2, 0).numpy())


def maps_to_avatar(
    albedo: np.ndarray,
    offsets: np.ndarray,
    *,
    names: str = "arkit",
    texture_size: int = 1024,
    ict_dir: str | os.PathLike | None = None,
    meta: dict | None = None,
    generic_occlusion: bool = False,
) -> Avatar:
    """Assemble a rigged avatar from the paper's UV maps (what G produces).

    Args:
        albedo: [R, R, 3] linear albedo in [0, 1], unified head UV.
        offsets: [R, R, 3] xyz offsets in metres from the generic neutral head.
        names: blendshape naming, "arkit" (52) or "ict" (53).
        texture_size: skin texture side (the albedo is upsampled to it in linear light).
        ict_dir: ICT-FaceKit folder (default: configured location).
        meta: provenance to store in the avatar.
        generic_occlusion: bake the occlusion map from the generic head, once per
            process, instead of this head (NPC batches; see :func:`avatarsdk.pbr.skin_maps`).

    Returns:
        The Avatar: skin vertices sampled from the offset map, the other parts
        (eyes, teeth, lashes) following through ICT's identity basis.
    """
    check_texture_size(texture_size)
    return Avatar(**_avatar_parts(albedo, offsets, names, texture_size, ict_dir, generic_occlusion=generic_occlusion),
                  meta=dict(meta or {}))


def _offsets_mesh(offsets: np.ndarray, model) -> np.ndarray:
    """[V, 3] float64 head of an [H, W, 3] xyz offset map (G's geometry channels) on ``model``'s topology."""
    off = torch.as_tensor(np.asarray(offsets, np.float64))[None]
    return offset_map_to_mesh(off, model.topology, model.neutral, model.identity_basis)[0].numpy()


def _avatar_parts(albedo: np.ndarray, offsets: np.ndarray | None, names: str, texture_size: int,
                  ict_dir: str | os.PathLike | None, *, generic_occlusion: bool = False,
                  vertices: np.ndarray | None = None) -> dict:
    """Vertices, topology, textures and rig of :func:`maps_to_avatar` (everything but the meta).

    ``vertices`` ([V, 3] neutral head), when given, is the head instead of the one ``offsets`` decode to.
    """
    model = load_ict(ict_dir)
    if vertices is None:
        vertices = _offsets_mesh(offsets, model)
    lin = torch.as_tensor(np.asarray(albedo, np.float32)).permute(2, 0, 1)[None]
    lin = F.interpolate(lin, size=(texture_size, texture_size), mode="bicubic", align_corners=False).clamp(0, 1)
    skin = (linear_to_srgb(lin[0].permute(1, 2, 0)) * 255 + 0.5).to(torch.uint8).numpy()
    textures = {"skin": skin, **default_textures(), **skin_maps(vertices, model.topology, size=texture_size,
                                                                  occlusion_from=model.neutral if generic_occlusion else None)}
    return {"vertices": vertices.astype(np.float32), "topology": model.topology, "textures": textures,
            "rig": model.rig(vertices.astype(np.float32), names=names)}


def generated_avatar(
    seed: int,
    *,
    truncation_psi: float = 0.7,
    names: str = "arkit",
    texture_size: int = 1024,
    generator: str | os.PathLike | None = None,
    ict_dir: str | os.PathLike | None = None,
) -> Avatar:
    """Sample a new identity (geometry and albedo together) from the UV StyleGAN2 G.

    Args:
        seed: seeds z (same seed and weights, same head).
        truncation_psi: 1.0 samples the full learned distribution; lower values
            pull w toward the average head (more typical, less varied).
        names: blendshape naming, "arkit" (52) or "ict" (53).
        texture_size: skin texture side.
        generator: a generator checkpoint (``avatarsdk train gan`` output);
            default: the weights shipped with the SDK (sha256 checked).
        ict_dir: ICT-FaceKit folder.

    Raises:
        InputError: bad truncation or texture size.
        WeightsError: missing or tampered weights.
    """
    if not (0.0 <= truncation_psi <= 1.5) or not np.isfinite(truncation_psi):
        raise InputError(f"truncation_psi must be in [0, 1.5], got {truncation_psi}")
    G = load_generator(generator)
    with torch.no_grad():
        maps = G(sample_z(1, G.cfg.z_dim, int(seed)), truncation_psi=float(truncation_psi))
        albedo, offsets = decode_maps(maps, G.cfg)
    meta = {"generator": f"avatarsdk {__version__}", "mode": "gan", "seed": int(seed),
            "truncation_psi": float(truncation_psi), "resolution": G.cfg.resolution}
    return maps_to_avatar(albedo[0].permute(1, 2, 0).numpy(), offsets[0].permute(1, 2, 0).numpy(), names=names,
                          texture_size=texture_size, ict_dir=ict_dir, meta=meta, generic_occlusion=True)


# ---------------------------------------------------------------------------
# Photo -> avatar
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class PhotoFit:
    """What fitting one photo produced, before albedo and rig (see :func:`fit_stage`).

    Attributes:
        photo: the loaded photo.
        model: the ICT model it was fitted with.
        landmarks: detection and dense landmarks.
        region: [H, W] float face region (where the photo shows skin, not hair or background).
        fit: camera, coefficients, light and low-res albedo.
        timings: seconds per stage so far.
        parsing: :class:`~avatarsdk.datatypes.FaceParse` of the photo (None if not parsed).
        turns: quarter turns (counter-clockwise, as ``numpy.rot90``) that made the face upright;
            ``photo`` is the turned photo.
    """

    photo: object
    model: object
    landmarks: object
    region: np.ndarray
    fit: object
    timings: dict
    parsing: object = None
    turns: int = 0


def fit_stage(
    photo,
    *,
    refuse_multiple: bool = False,
    fit_options=None,
    ict_dir: str | os.PathLike | None = None,
    progress=None,
    parser: str | None = None,
) -> PhotoFit:
    """Load, detect, parse and fit one photo (the expensive half of :func:`create`).

    ``parser`` ("bisenet" or "mesh", :func:`avatarsdk.parse.parse_face`) decides
    which pixels the albedo unwrap may take; None: bisenet, or mesh when
    ``AVATARSDK_PERMISSIVE`` is on (:func:`avatarsdk.licensing.resolve`).

    Raises:
        PhotoError: unreadable image, no face, several faces (if refused), face too small.
        WeightsError: the bisenet parser's weights are missing or tampered with.
    """
    if parser is None:
        parser = resolve(None, None, "fit").parser

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    photo = photo if isinstance(photo, Photo) else load_photo(photo)
    timings["load"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    model = load_ict(ict_dir)
    cmap = load_correspondence()
    timings["model"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    photo, lm, turns = detect_upright(photo, refuse_multiple=refuse_multiple)  # a face upside down: turned
    skin = skin_mask(photo, lm)
    region = face_region(photo, lm)
    timings["detect"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    parsing = parse_face(photo, lm, method=parser)
    timings["parse"] = round(time.perf_counter() - t0, 3)
    spec = LandmarkSpec(cmap.triangle.astype(np.int64), cmap.bary, cmap.weight, cmap.contour.astype(np.int64))
    t0 = time.perf_counter()
    # The fit ignores what the parse calls occluded (photometric term) and landmarks under a hand.
    occluded = occlusion_free(parsing) < 0.5
    fit = fit_photo(model, spec, lm.points[:FACE_MESH_POINTS, :2], photo.image, skin, fit_options or FitOptions(),
                    progress, occluded=occluded, landmarks_occluded=parsing.hands)
    timings["fit"] = round(time.perf_counter() - t0, 3)
    return PhotoFit(photo=photo, model=model, landmarks=lm, region=region, fit=fit, timings=timings, parsing=parsing,
                    turns=turns)


def unwrap_stage(pf: PhotoFit, *, texture_size: int = 1024, delight: bool = True) -> tuple:
    """The photo unwrapped into the head UV, before completion (what :func:`albedo_stage` and the relief read).

    Only unoccluded face surface enters (the parse's masks), exposure from the
    whites of the eyes divides it, and forehead hair and texels whose colour is
    not the face's skin (:func:`~avatarsdk.albedo.foreign_texels`) lose their confidence.

    Returns:
        ([S, S, 3] linear de-lit albedo tensor, [S, S] confidence tensor, the
        :class:`~avatarsdk.albedo.Exposure` applied or None without de-lighting).
    """
    # With the parser, only unoccluded face surface enters the albedo (no hair, teeth, glasses, cloth,
    # hands); the mesh parser knows only hands.
    keep = occlusion_free(pf.parsing, image=pf.photo.image) if pf.parsing is not None else None
    # Lip texels take parsed lip pixels only, skin texels none (a smile's lips land off the closed mouth).
    lips = pf.parsing.lips if pf.parsing is not None else None
    albedo, conf = unwrap(pf.model, pf.fit, pf.photo.image, pf.region, size=texture_size, delight=delight, keep=keep,
                          lips=lips)
    exposure = None
    if delight:
        exposure = photo_exposure(pf)
        albedo = (albedo / exposure.scale).clamp(0, 1)
        conf = reject_forehead_hair(pf.model, albedo, conf)
        # What the parser called skin but is not skin-coloured (a glass at the chin, a lens's shadow).
        conf = reject_foreign(pf.model, albedo, conf)
        # A coloured light the fit left in the albedo (pink skin under a purple light): balanced back
        # (not a greyscale photo's: albedo_stage colourises it).
        if photo_has_colour(pf.photo.image, pf.region):
            albedo, balance = skin_locus_balance(albedo, conf)
            exposure = dataclasses.replace(exposure, balance=balance)
    return albedo, conf, exposure


def albedo_stage(pf: PhotoFit, *, texture_size: int = 1024, delight: bool = True,
                 unwrapped: tuple | None = None) -> tuple[np.ndarray, object]:
    """De-lit, completed skin albedo of a fitted photo.

    Args:
        pf: from :func:`fit_stage`.
        texture_size: texture side (power of two).
        delight: divide out the fitted light (False only for the benchmark's
            "unwrap without de-lighting" baseline).
        unwrapped: :func:`unwrap_stage`'s result for these arguments, if already computed.

    Returns:
        ([S, S, 3] uint8 sRGB albedo in the unified head UV, the
        :class:`~avatarsdk.albedo.Exposure` applied, or None without de-lighting).
    """
    albedo, conf, exposure = unwrapped or unwrap_stage(pf, texture_size=texture_size, delight=delight)
    if pf.parsing is not None and pf.parsing.lips is not None:
        albedo, conf = fill_lips(pf.model, albedo, conf, unseen_from_skin=True)
    if not photo_has_colour(pf.photo.image, pf.region):
        log.warning("%s: the photo has no colour (greyscale); the skin gets a plausible procedural colour "
                    "matched to its lightness", pf.photo.source)
        albedo, prior = colourise_grey(albedo, conf, texture_size)
    else:
        # What no photo sees comes from a plain procedural skin: bald (hair is a separate asset in games),
        # no stubble or freckles to invent; its tone is matched to the observed skin in complete_albedo.
        plain = procedural_albedo(0, size=texture_size, hair_style="bald", beard=0.0, freckles=0.0, age=0.2)
        prior = srgb_to_linear(torch.from_numpy(plain).float() / 255.0)
    skin_tex = complete_albedo(pf.model, albedo, conf, prior)
    return (linear_to_srgb(skin_tex) * 255 + 0.5).to(torch.uint8).numpy(), exposure


def relief_stage(pf: PhotoFit, unwrapped: tuple) -> np.ndarray:
    """Skin relief read from the photo's shading (:func:`avatarsdk.pbr.photo_relief`) of a de-lit unwrap.

    Args:
        pf: from :func:`fit_stage`.
        unwrapped: :func:`unwrap_stage`'s result (with de-lighting).

    Returns:
        [G, G, 2] float32 tangent-space slopes for :func:`avatarsdk.pbr.skin_maps`.
    """
    albedo, conf, _ = unwrapped
    posed = pf.model.morph(pf.fit.identity, pf.fit.expression)
    return photo_relief(posed, pf.model.topology, pf.fit.light, albedo.numpy(), conf.numpy())


def photo_exposure(pf: PhotoFit):
    """The photo's exposure read from the whites of the eyes (:func:`avatarsdk.albedo.sclera_exposure`).

    Eyes the parse puts behind eyeglasses (:func:`avatarsdk.iris.eyes_behind_glasses`) are left
    out: through a lens the eye white reads dark (tint, reflections, the frame across it), and an
    exposure read from it brightened a well-exposed portrait's skin 3.3x, to near white.
    """
    behind = eyes_behind_glasses(pf.parsing, pf.landmarks.points)
    samples = {side: px for side, px in sclera_pixels(pf.photo, pf.landmarks).items() if side not in behind}
    return sclera_exposure(samples, pf.fit.light)


def refine_target(pf: PhotoFit, exposure=None):
    """The refinement's view of a fitted photo: crop, camera, light, expression, face region, exposure.

    The face region is the fit's (face oval on the person, eyes and mouth opening
    cut) times, with the bisenet parser, :func:`avatarsdk.albedo.occlusion_free`.

    Args:
        pf: from :func:`fit_stage`.
        exposure: :func:`photo_exposure` of ``pf`` if already computed (computed here otherwise).

    Returns:
        :class:`avatarsdk.refine.RefineTarget`.
    """
    cam = pf.fit.camera
    exposure = (exposure or photo_exposure(pf)).scale
    region = pf.region  # the paper blends renders into the parsed face region: drop hair, teeth, glasses
    if pf.parsing is not None:
        region = region * occlusion_free(pf.parsing)
    return RefineTarget(image=pf.photo.image, points=pf.landmarks.points, box=tuple(pf.landmarks.box),
                        region=region, camera=cam, light=pf.fit.light, expression=pf.fit.expression,
                        exposure=float(exposure))


def iris_stage(pf: PhotoFit, exposure=None):
    """The iris colour of a fitted photo, de-lit with the fit's light and exposure (:func:`avatarsdk.iris.iris_colour`)."""
    return iris_colour(pf.photo.image, pf.landmarks.points, pf.fit.light,
                       exposure=1.0 if exposure is None else exposure.scale, parsing=pf.parsing)


def hair_stage(pf: PhotoFit, avatar: Avatar, exposure=None, *, seed: int = 0) -> Avatar:
    """``create(hair="auto")``: the avatar with hair chosen from the photo (:func:`avatarsdk.hair.photo.fit_hair`).

    Style and parameters by analysis by synthesis against the parsed hair mask
    with the fitted camera; colour from the hair pixels de-lit with the fitted
    light and the photo's exposure; very little parsed hair leaves the head bald.
    The search's report goes to ``meta["hair"]["photo"]`` (``meta["hair_photo"]``
    for a bald head). Without a hair-aware parse (the mesh parser), the
    colour-only rule :func:`avatarsdk.hair.auto_hair` decides.
    """
    if pf.parsing is None or pf.parsing.method != "bisenet":
        style, colour = auto_hair(pf.photo, avatar)
        return with_hair(avatar, style, colour, seed)
    res = fit_hair(avatar, pf.photo.image, pf.parsing, pf.fit.camera, pf.fit.light,
                   exposure=1.0 if exposure is None else float(exposure.scale), seed=seed)
    if res.style is None:
        return dataclasses.replace(avatar, meta={**avatar.meta, "hair_photo": res.to_json()})
    out = with_hair(avatar, res.style, res.colour, seed)
    out.meta["hair"]["photo"] = res.to_json()
    return out


def _fit_meta(pf: PhotoFit, exposure) -> dict:
    fit = pf.fit
    return {
        "identity": [round(float(c), 6) for c in fit.identity],
        "expression": {n: round(float(w), 4) for n, w in zip(ICT_EXPRESSIONS, fit.expression) if w > 1e-3},
        "camera": fit.camera.to_json(),
        "light_sh": np.asarray(fit.light).round(5).tolist(),
        "exposure": exposure.to_json() if exposure is not None else None,
        "losses": {k: round(float(v), 6) for k, v in fit.losses.items()},
        "face_box": [round(float(x), 1) for x in pf.landmarks.box],
        "faces_detected": pf.landmarks.num_faces,
        "photo_turned_deg": 90 * pf.turns,  # counter-clockwise; face_box and camera are in the turned photo
        "hands_detected": int(getattr(pf.parsing, "num_hands", 0)),
    }


def complete_generated_albedo(albedo: np.ndarray, *, texture_size: int = 1024,
                              ict_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Keep G's albedo on the face a photo constrains; fill the rest like the fit mode does.

    Refinement only sees the face region of the photo, so G's scalp, ears and
    neck are unconstrained by it (with the shipped, undertrained G they drift to
    implausible colours). Those texels are completed as in :func:`albedo_stage`:
    mirror, then a bald, plain procedural skin tone-matched to the face.

    Args:
        albedo: [R, R, 3] linear albedo from G.
        texture_size: output side.
        ict_dir: ICT-FaceKit folder.

    Returns:
        [texture_size, texture_size, 3] float32 linear albedo.
    """
    lin = torch.as_tensor(np.asarray(albedo, np.float32)).permute(2, 0, 1)[None]
    lin = F.interpolate(lin, size=(texture_size, texture_size), mode="bicubic", align_corners=False)
    lin = lin[0].permute(1, 2, 0).clamp(0, 1)
    conf = torch.from_numpy(face_region_mask(texture_size).astype(np.float32))
    plain = procedural_albedo(0, size=texture_size, hair_style="bald", beard=0.0, freckles=0.0, age=0.2)
    prior = srgb_to_linear(torch.from_numpy(plain).float() / 255.0)
    return complete_albedo(load_ict(ict_dir), lin, conf, prior).numpy()


def _check_device(device: str) -> str:
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' asked for, but this PyTorch build sees no CUDA device")
    return device


def regress_latent(embedding: np.ndarray, *, regressor: str | os.PathLike | None = None) -> np.ndarray:
    """R: identity embedding [128] -> W+ latent [L, w_dim] (float32).

    The shipped R runs as its ONNX graph in onnxruntime (sha256 pinned in the
    weights registry); a ``regressor`` checkpoint given here runs in PyTorch.
    """
    emb = np.asarray(embedding, np.float32).reshape(1, -1)
    if regressor is None:
        return np.asarray(_onnx("regressor_onnx")(emb), np.float32)[0]

    R = _regressor(str(Path(regressor).resolve()))
    with torch.no_grad():
        return R(torch.from_numpy(emb))[0].numpy()


INITS = ("regressor", "fit", "mean")
"""Starts of the refinement (:func:`refine_stage`), the default first ("fit" becomes the default
once the ablation in the README shows it ahead)."""


FIT_INVERSION = InvertConfig(steps=100, lr=0.05, lpips_geometry=0.0, lpips_albedo=0.0)
"""How ``init="fit"`` inverts the fit into G: the L1 terms of eq. 1 on the maps only (the
ST-LPIPS renders would triple the cost; the refinement that follows compares renders anyway);
the steps come from :attr:`avatarsdk.refine.RefineConfig.invert_steps`."""


def refine_stage(pf: PhotoFit, *, init: str = "fit", refine_options=None, device: str = "cpu", exposure=None,
                 generator: str | os.PathLike | None = None, regressor: str | os.PathLike | None = None,
                 fit_albedo: np.ndarray | None = None, progress=None) -> tuple:
    """The paper's Sec. 3.3 on a fitted photo: a start latent w0, then w refined against the photo through G.

    Args:
        pf: from :func:`fit_stage` (camera, light, expression, face region).
        init: where w0 comes from: "fit" (the fit's neutral head and de-lit albedo inverted
            into G, :func:`avatarsdk.invert.invert_fit`; refinement then only adds what the
            linear model and the unwrap missed), "regressor" (w0 = R(embedding), the paper)
            or "mean" (G's mean latent: the paper's Fig. 11 ablation). The latent prior of
            the refinement is anchored at w0.
        refine_options: :class:`avatarsdk.refine.RefineConfig` (default settings if None).
        device: "cpu" or "cuda" for G and the losses.
        exposure: :func:`photo_exposure` of ``pf`` if already computed.
        generator, regressor: checkpoints (default: the shipped weights).
        fit_albedo: [S, S, 3] uint8 sRGB albedo of :func:`albedo_stage` for ``init="fit"``
            (computed here at 512 if None).
        progress: optional callback(stage, fraction).

    Returns:
        (:class:`avatarsdk.refine.Refinement`, timings dict). With ``init="fit"`` the
        Refinement's ``start`` holds the inversion's map errors against the fit.
    """
    if init not in INITS:
        raise InputError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    _check_device(device)
    timings: dict[str, float] = {}
    w0, start = None, {"init": init}
    G = load_generator(generator)
    if device != "cpu":
        G = copy.deepcopy(G).to(device)
    if init == "regressor":
        t0 = time.perf_counter()
        emb = embed_photo(pf.photo, pf.landmarks)
        timings["embed"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        w0 = torch.from_numpy(regress_latent(emb, regressor=regressor))
        timings["regress"] = round(time.perf_counter() - t0, 3)
    elif init == "fit":
        if fit_albedo is None:
            fit_albedo, _ = albedo_stage(pf, texture_size=512)
        t0 = time.perf_counter()
        steps = (refine_options or RefineConfig()).invert_steps
        inv = invert_fit(G, pf.model.morph(pf.fit.identity), fit_albedo,
                         dataclasses.replace(FIT_INVERSION, steps=steps), progress=progress)
        timings["invert"] = round(time.perf_counter() - t0, 3)
        w0 = inv.w
        start |= {"inversion_steps": len(inv.history["total"]),
                  "inversion_start_errors": {k: round(v, 5) for k, v in inv.initial_errors.items()},
                  "inversion_errors": {k: round(v, 5) for k, v in inv.errors.items()}}
    t0 = time.perf_counter()
    anchor = pf.model.morph(pf.fit.identity)[face_mesh().ids.numpy()] if init == "fit" else None
    result = refine(G, refine_target(pf, exposure), None if w0 is None else w0.to(device), refine_options,
                    progress=progress, anchor=anchor)
    timings["refine"] = round(time.perf_counter() - t0, 3)
    return dataclasses.replace(result, start=start), timings


@dataclass(frozen=True, eq=False)
class CheckedRefinement:
    """A refinement's head after the divergence check (:func:`check_refinement`).

    Attributes:
        vertices: [V, 3] float32 neutral head (the fit's when the refinement diverged).
        albedo: [S, S, 3] float32 linear skin albedo (completed; the fit's when diverged).
        offsets: [R, R, 3] G's offsets in metres (None when diverged: the fit's head is used).
        diverged: None, or why the refinement was rejected.
        statistics: face-region albedo statistics ("refined", "fit") of :func:`avatarsdk.albedo.skin_statistics`.
    """

    vertices: np.ndarray
    albedo: np.ndarray
    offsets: np.ndarray | None
    diverged: str | None
    statistics: dict


def check_refinement(pf: PhotoFit, result, fit_albedo: np.ndarray, *, texture_size: int = 1024,
                     ict_dir: str | os.PathLike | None = None) -> CheckedRefinement:
    """Keep a refinement only if its face albedo stayed near the fit's and inside the range of real skin.

    G's albedo is completed like :func:`complete_generated_albedo`, then its face region
    (:func:`avatarsdk.paint.face_region_mask`) is compared with the fit's
    (:func:`avatarsdk.albedo.albedo_divergence`). A diverged refinement (a white, green, blue
    or black head) is replaced by the fit: its neutral head and de-lit albedo.

    Args:
        pf: the fitted photo.
        result: :class:`avatarsdk.refine.Refinement`.
        fit_albedo: [S, S, 3] uint8 sRGB albedo of :func:`albedo_stage` at ``texture_size``.
        texture_size: texture side.
        ict_dir: ICT-FaceKit folder.
    """
    albedo = complete_generated_albedo(result.albedo.permute(1, 2, 0).numpy(), texture_size=texture_size,
                                       ict_dir=ict_dir)
    fit_lin = srgb_to_linear(torch.from_numpy(np.asarray(fit_albedo)[..., :3]).float() / 255.0)
    if fit_lin.shape[0] != texture_size:
        raise InputError(f"fit_albedo is {fit_lin.shape[0]} texels wide, expected {texture_size}")
    offsets = result.offsets.permute(1, 2, 0).numpy()
    model = load_ict(ict_dir)

    def mesh(maps: torch.Tensor) -> np.ndarray:
        return _offsets_mesh(maps.permute(1, 2, 0).numpy(), model)

    residual = result.start.get("init") == "fit" and result.start_offsets is not None
    if residual:
        # Started from the fit's inversion: the fit's own head and albedo plus what the refinement
        # changed, so the inversion's error (and the detail G cannot hold) never reaches the avatar.
        start = complete_generated_albedo(result.start_albedo.permute(1, 2, 0).numpy(), texture_size=texture_size,
                                          ict_dir=ict_dir)
        albedo = np.clip(fit_lin.numpy() + (albedo - start), 0.0, 1.0).astype(np.float32)
        vertices = pf.model.morph(pf.fit.identity) + (mesh(result.offsets) - mesh(result.start_offsets))
    else:
        vertices = mesh(result.offsets)
    face = face_region_mask(texture_size)
    albedo_t = torch.from_numpy(albedo)
    stats = {"refined": skin_statistics(albedo_t, face), "fit": skin_statistics(fit_lin, face)}
    reason = None
    if not (np.isfinite(albedo).all() and np.isfinite(offsets).all()):
        reason = "non-finite maps"
    else:
        reason = albedo_divergence(albedo_t, fit_lin, face)
    if reason is not None:
        return CheckedRefinement(vertices=pf.model.morph(pf.fit.identity).astype(np.float32),
                                 albedo=fit_lin.numpy(), offsets=None, diverged=reason, statistics=stats)
    return CheckedRefinement(vertices=vertices.astype(np.float32), albedo=albedo, offsets=offsets, diverged=None,
                             statistics=stats)


def create(
    photo,
    *,
    mode: str = "fit",
    texture_size: int = 1024,
    refuse_multiple: bool = False,
    names: str = "arkit",
    fit_options=None,
    refine_options=None,
    init: str = "fit",
    device: str = "cpu",
    delight: bool = True,
    ict_dir: str | os.PathLike | None = None,
    progress=None,
    parser: str | None = None,
    permissive: bool | None = None,
    hair: str = "none",
) -> Avatar:
    """Build a normalized avatar (neutral expression, de-lit albedo) from one photo.

    Args:
        photo: a path, file bytes, an [H, W, 3] uint8 array or a :class:`Photo`.
        mode: "fit" (model fitting and a de-lit unwrap of the photo; the
            default, best on the fidelity benchmark), "infer" (the paper's
            inference path: identity embedding -> regressor R -> latent w ->
            generator G; no fitting) or "refine" (fit, then a latent refined
            against the photo through G: the paper's full pipeline, started
            from R's latent or the fit's inversion into G; a refinement whose face
            albedo diverges falls back to the fit, see :func:`check_refinement`).
        texture_size: skin albedo resolution (power of two, 256..4096).
        refuse_multiple: raise MultipleFaces instead of taking the largest face.
        names: blendshape naming, "arkit" (52) or "ict" (53).
        fit_options: :class:`avatarsdk.fit.FitOptions` overrides.
        refine_options: :class:`avatarsdk.refine.RefineConfig` overrides (mode "refine").
        init: start of the refinement (:func:`refine_stage`): "fit" (the fit inverted into G;
            the default: on the benchmark it keeps the fit's geometry and improves its albedo),
            "regressor" (R's latent) or "mean" (G's mean latent).
        device: "cpu" or "cuda" for the refinement.
        delight: divide the fitted light out of the albedo (False only for the
            benchmark's "unwrap without de-lighting" baseline).
        ict_dir: ICT-FaceKit folder (default: configured location).
        progress: optional callback(stage: str, fraction: float).
        parser: face parser for the albedo: "bisenet" (default) or "mesh" (:mod:`avatarsdk.parse`).
        permissive: use only components with permissive weights (:mod:`avatarsdk.licensing`);
            None reads ``AVATARSDK_PERMISSIVE``. ``avatar.meta["components"]`` records the choice.
        hair: "none" (bald) or "auto" (hair from the photo, :func:`hair_stage`; in infer mode the
            colour-only rule :func:`avatarsdk.hair.auto_hair`). Library styles and random hair are
            applied after create (:func:`avatarsdk.hair.with_hair`).

    Returns:
        The Avatar; ``avatar.meta["fit"]`` holds coefficients, camera, light and
        ``avatar.meta["timings_s"]`` the seconds per stage (what ``create``
        writes to fit.json).

    Raises:
        PhotoError: unreadable image, no face, several faces (if refused), face too small.
        InputError: bad mode, init, device or texture size.
        ConfigError: device="cuda" without CUDA; parser "bisenet" in permissive mode; unknown parser.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    choice = resolve(parser, permissive, mode)
    check_texture_size(texture_size, minimum=PHOTO_MIN_TEXTURE_SIZE)
    _check_device(device)
    if hair not in HAIR_MODES:
        raise InputError(f"create's hair must be one of {', '.join(HAIR_MODES)}, got {hair!r}")
    job = _CreateJob(mode=mode, texture_size=texture_size, refuse_multiple=refuse_multiple, names=names,
                     fit_options=fit_options, refine_options=refine_options, init=init, device=device,
                     delight=delight, ict_dir=ict_dir, progress=progress, choice=choice, hair=hair)
    return MODES[mode](photo, job)


@dataclass(frozen=True)
class _CreateJob:
    """The arguments of one :func:`create` call, as its mode functions read them."""

    mode: str
    texture_size: int
    refuse_multiple: bool
    names: str
    fit_options: object
    refine_options: object
    init: str
    device: str
    delight: bool
    ict_dir: str | os.PathLike | None
    progress: object
    choice: object  # avatarsdk.licensing's component choice (parser, perceptual term)
    hair: str = "none"  # "none" or "auto"


def _create_infer(photo, job: _CreateJob) -> Avatar:
    """``mode="infer"``: identity embedding -> R -> w -> G -> avatar (no fitting)."""
    t0 = time.perf_counter()
    photo, lm, emb, ws, albedo, offsets = infer_maps(photo, refuse_multiple=job.refuse_multiple)
    seconds = round(time.perf_counter() - t0, 3)
    meta = {"generator": f"avatarsdk {__version__}", "mode": job.mode, "source": photo.source,
            "photo_sha256": photo.sha256, "face_box": [round(float(x), 1) for x in lm.box],
            "faces_detected": lm.num_faces, "ws_norm": round(float(np.linalg.norm(ws)), 3),
            "components": job.choice.to_json() | {"parser": None}, "timings_s": {"infer": seconds}}
    avatar = maps_to_avatar(albedo, offsets, names=job.names, texture_size=job.texture_size, ict_dir=job.ict_dir,
                            meta=meta)
    if job.hair == "auto":
        style, colour = auto_hair(photo, avatar)
        avatar = with_hair(avatar, style, colour, 0)
    return avatar


def _fit_and_meta(photo, job: _CreateJob) -> tuple[PhotoFit, dict, dict, dict]:
    """The fit both photo modes start from: (fit, timings so far, meta so far, the fit's own timings)."""
    pf = fit_stage(photo, refuse_multiple=job.refuse_multiple, fit_options=job.fit_options, ict_dir=job.ict_dir,
                   progress=job.progress, parser=job.choice.parser)
    meta = {"generator": f"avatarsdk {__version__}", "mode": job.mode, "source": pf.photo.source,
            "photo_sha256": pf.photo.sha256, "ict_sha256": pf.model.data.source_sha256,
            "components": job.choice.to_json()}
    fit_timings = {f"fit.{k}": round(v, 3) for k, v in pf.fit.timings.items()}
    return pf, dict(pf.timings), meta, fit_timings


def _create_refine(photo, job: _CreateJob) -> Avatar:
    """``mode="refine"``: fit, then a latent (R's, or the fit's inversion) refined against the photo through G.

    The refined head is checked against the fit (:func:`check_refinement`); a diverged one is
    replaced by the fit's, with a warning and ``meta["refine"]["diverged"]``.
    """
    pf, timings, meta, fit_timings = _fit_and_meta(photo, job)
    refine_options = job.refine_options
    if not job.choice.perceptual:
        refine_options = dataclasses.replace(refine_options or RefineConfig(), lpips=0.0)
    t0 = time.perf_counter()
    unwrapped = unwrap_stage(pf, texture_size=job.texture_size)
    fit_skin, exposure = albedo_stage(pf, texture_size=job.texture_size, unwrapped=unwrapped)
    timings["albedo"] = round(time.perf_counter() - t0, 3)
    result, t = refine_stage(pf, init=job.init, refine_options=refine_options, device=job.device,
                             exposure=exposure, fit_albedo=fit_skin, progress=job.progress)
    timings.update(t)
    t0 = time.perf_counter()
    checked = check_refinement(pf, result, fit_skin, texture_size=job.texture_size, ict_dir=job.ict_dir)
    info = {**result.start, "steps": result.steps, "best_step": result.best_step,
            "initial": {k: round(v, 5) for k, v in result.initial.items()},
            "final": {k: round(v, 5) for k, v in result.final.items()},
            "face_albedo": checked.statistics, "diverged": checked.diverged is not None}
    iris = iris_stage(pf, exposure)
    if checked.diverged is not None:
        log.warning("%s: the refinement diverged (%s); the avatar is the fit's", pf.photo.source, checked.diverged)
        info["reason"] = checked.diverged
        parts = _fit_parts(pf, fit_skin, iris, job, timings, relief=relief_stage(pf, unwrapped))
    else:
        parts = _avatar_parts(checked.albedo, checked.offsets, job.names, job.texture_size, job.ict_dir,
                              vertices=checked.vertices)
        parts["textures"] = {**parts["textures"], **default_textures(iris_rgb=iris.colour)}
    timings["assemble"] = round(time.perf_counter() - t0, 3)
    meta |= {"fit": _fit_meta(pf, exposure), "iris": iris.to_json(), "refine": info,
             "timings_s": {**timings, **fit_timings}}
    return _with_photo_hair(pf, Avatar(**parts, meta=meta), exposure, job)


def _fit_rig(pf: PhotoFit, names: str) -> tuple[np.ndarray, Rig, float]:
    """(neutral head, its rig, wall seconds) of a fit: expression zero, eyes open, mouth closed."""
    t0 = time.perf_counter()
    neutral = pf.model.morph(pf.fit.identity)
    return neutral, pf.model.rig(neutral, names=names), round(time.perf_counter() - t0, 3)


def _fit_parts(pf: PhotoFit, skin_u8: np.ndarray, iris, job: _CreateJob, timings: dict, *, relief=None,
               rigging: Future | None = None) -> dict:
    """The fit's avatar but its meta: neutral head, rig, de-lit albedo, iris colour, PBR maps.

    ``rigging``: a future of :func:`_fit_rig` already running (on another thread), or None to build the rig here.
    """
    model = pf.model
    neutral, rig, timings["rig"] = rigging.result() if rigging is not None else _fit_rig(pf, job.names)
    t0 = time.perf_counter()
    textures = {"skin": paint_mouth_interior(skin_u8, model.topology, neutral), **default_textures(iris_rgb=iris.colour),
                **skin_maps(neutral, model.topology, size=skin_u8.shape[0], relief=relief)}
    timings["pbr"] = round(time.perf_counter() - t0, 3)
    return {"vertices": neutral, "topology": model.topology, "textures": textures, "rig": rig}


def _create_fit(photo, job: _CreateJob) -> Avatar:
    """``mode="fit"``: model fitting and a de-lit unwrap of the photo.

    The rig (the blendshape transfer: scipy's sparse factorisation and solve) depends on the
    fitted identity only. When torch runs on one thread (batch workers, ``OMP_NUM_THREADS=1``)
    it is built on a second thread while this one makes the albedo, relief, iris and PBR maps:
    both release the GIL for their heavy parts, so on two cores they overlap, and
    ``timings_s["rig"]`` is the rig's own wall time on its thread. With torch's own threads on
    the cores it runs after them: on 2 quiet cores the overlap made ``create`` slower (13.9 s
    against 13.0 s, median of 3), the two thread pools contending for the same cores.
    """
    pf, timings, meta, fit_timings = _fit_and_meta(photo, job)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="avatarsdk-rig") as pool:
        rigging = pool.submit(_fit_rig, pf, job.names) if torch.get_num_threads() == 1 else None
        t0 = time.perf_counter()
        unwrapped = unwrap_stage(pf, texture_size=job.texture_size, delight=job.delight)
        skin_u8, exposure = albedo_stage(pf, texture_size=job.texture_size, delight=job.delight, unwrapped=unwrapped)
        timings["albedo"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        relief = relief_stage(pf, unwrapped) if job.delight else None  # the residual is shading only once de-lit
        timings["relief"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        iris = iris_stage(pf, exposure)
        timings["iris"] = round(time.perf_counter() - t0, 3)
        parts = _fit_parts(pf, skin_u8, iris, job, timings, relief=relief, rigging=rigging)
    meta |= {"fit": _fit_meta(pf, exposure), "iris": iris.to_json(), "timings_s": {**timings, **fit_timings}}
    return _with_photo_hair(pf, Avatar(**parts, meta=meta), exposure, job)


def _with_photo_hair(pf: PhotoFit, avatar: Avatar, exposure, job: _CreateJob) -> Avatar:
    """The avatar with ``job.hair == "auto"`` applied (its seconds in ``timings_s["hair"]``)."""
    if job.hair != "auto":
        return avatar
    t0 = time.perf_counter()
    out = hair_stage(pf, avatar, exposure)
    return dataclasses.replace(out, meta={**out.meta, "timings_s": {**out.meta["timings_s"],
                                                                    "hair": round(time.perf_counter() - t0, 3)}})


MODES: dict[str, Callable[[object, _CreateJob], Avatar]] = {
    "fit": _create_fit,
    "infer": _create_infer,
    "refine": _create_refine,
}
"""The modes of :func:`create`, each a function from the photo and the call's arguments to the Avatar."""

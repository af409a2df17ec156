"""Top-level jobs: plain functions from inputs to an Avatar (no printing, no files)."""

from __future__ import annotations

import os

import numpy as np

from avatarsdk import __version__
from avatarsdk.errors import InputError
from avatarsdk.materials import default_textures, plain_skin_albedo
from avatarsdk.rigs import load_ict
from avatarsdk.types import Avatar

# Monk Skin Tone scale (Google, CC-BY 4.0), 10 sRGB swatches from lightest to darkest:
# a perceptually even range across the Fitzpatrick types I-VI.
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (246, 237, 228), (243, 231, 219), (247, 234, 208), (234, 218, 186), (215, 189, 150),
    (160, 126, 86), (130, 92, 67), (96, 65, 52), (58, 49, 42), (41, 36, 32),
)
IRIS_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.30, 0.18, 0.08), (0.20, 0.12, 0.06), (0.45, 0.33, 0.16), (0.28, 0.38, 0.22),
    (0.30, 0.45, 0.60), (0.45, 0.50, 0.55),
)


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
    if texture_size not in {2**k for k in range(6, 13)}:
        raise InputError(f"texture_size must be a power of two in [64, 4096], got {texture_size}")
    rng = np.random.default_rng(seed)
    model = load_ict(ict_dir)
    coeffs = rng.standard_normal(model.identity_basis.shape[0]) * identity_scale
    vertices = model.morph(coeffs)
    tone = np.asarray(SKIN_TONES[rng.integers(len(SKIN_TONES))], np.float64) / 255.0
    tone = np.clip(tone * rng.uniform(0.95, 1.05), 0, 1)  # brightness only: keeps the hue of the swatch
    iris = IRIS_COLOURS[rng.integers(len(IRIS_COLOURS))]
    textures = {"skin": plain_skin_albedo(tuple(tone), size=texture_size), **default_textures(iris_rgb=iris, seed=seed)}
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


# ---------------------------------------------------------------------------
# Photo -> avatar
# ---------------------------------------------------------------------------

MODES = ("fit",)


def create(
    photo,
    *,
    mode: str = "fit",
    texture_size: int = 1024,
    refuse_multiple: bool = False,
    names: str = "arkit",
    fit_options=None,
    delight: bool = True,
    ict_dir: str | os.PathLike | None = None,
    progress=None,
) -> Avatar:
    """Build a normalized avatar (neutral expression, de-lit albedo) from one photo.

    Args:
        photo: a path, file bytes, an [H, W, 3] uint8 array or a :class:`Photo`.
        mode: "fit" (model fitting, the paper's Sec. 3.2 pipeline).
        texture_size: skin albedo resolution (power of two, 256..4096).
        refuse_multiple: raise MultipleFaces instead of taking the largest face.
        names: blendshape naming, "arkit" (52) or "ict" (53).
        fit_options: :class:`avatarsdk.fit.FitOptions` overrides.
        delight: divide the fitted light out of the albedo (False only for the
            benchmark's "unwrap without de-lighting" baseline).
        ict_dir: ICT-FaceKit folder (default: configured location).
        progress: optional callback(stage: str, fraction: float).

    Returns:
        The Avatar; ``avatar.meta["fit"]`` holds coefficients, camera, light and
        per-stage timings (what ``create`` writes to fit.json).

    Raises:
        PhotoError: unreadable image, no face, several faces (if refused), face too small.
        InputError: bad mode or texture size.
    """
    import time

    import torch

    from avatarsdk.albedo import complete_albedo, unwrap
    from avatarsdk.colour import linear_to_srgb, srgb_to_linear
    from avatarsdk.detect import detect, face_region, skin_mask
    from avatarsdk.fit import FitOptions, LandmarkSpec, fit_photo
    from avatarsdk.photo import load_photo
    from avatarsdk.rigs.ict import ICT_EXPRESSIONS
    from avatarsdk.rigs.mediapipe_map import load_correspondence
    from avatarsdk.skin import procedural_albedo
    from avatarsdk.types import Photo

    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if texture_size not in {2**k for k in range(8, 13)}:
        raise InputError(f"texture_size must be a power of two in [256, 4096], got {texture_size}")
    timings: dict[str, float] = {}

    def stage(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    photo = photo if isinstance(photo, Photo) else load_photo(photo)
    stage("load", t0)
    t0 = time.perf_counter()
    model = load_ict(ict_dir)
    cmap = load_correspondence()
    stage("model", t0)
    t0 = time.perf_counter()
    lm = detect(photo, refuse_multiple=refuse_multiple)
    skin = skin_mask(photo, lm)
    region = face_region(photo, lm)
    stage("detect", t0)
    spec = LandmarkSpec(cmap.triangle.astype(np.int64), cmap.bary, cmap.weight, cmap.contour.astype(np.int64))
    t0 = time.perf_counter()
    fit = fit_photo(model, spec, lm.points[:468, :2], photo.image, skin, fit_options or FitOptions(), progress)
    stage("fit", t0)
    t0 = time.perf_counter()
    albedo, conf = unwrap(model, fit, photo.image, region, size=texture_size, delight=delight)
    prior = srgb_to_linear(torch.from_numpy(procedural_albedo(0, size=texture_size)).float() / 255.0)
    skin_tex = complete_albedo(model, albedo, conf, prior)
    skin_u8 = (linear_to_srgb(skin_tex) * 255 + 0.5).to(torch.uint8).numpy()
    stage("albedo", t0)
    t0 = time.perf_counter()
    neutral = model.morph(fit.identity)  # expression zero: eyes open, mouth closed
    textures = {"skin": skin_u8, **default_textures()}
    rig = model.rig(neutral, names=names)
    stage("rig", t0)
    meta = {
        "generator": f"avatarsdk {__version__}",
        "mode": mode,
        "source": photo.source,
        "photo_sha256": photo.sha256,
        "ict_sha256": model.data.source_sha256,
        "fit": {
            "identity": [round(float(c), 6) for c in fit.identity],
            "expression": {n: round(float(w), 4) for n, w in zip(ICT_EXPRESSIONS, fit.expression) if w > 1e-3},
            "camera": fit.camera.to_json(),
            "light_sh": np.asarray(fit.light).round(5).tolist(),
            "losses": {k: round(float(v), 6) for k, v in fit.losses.items()},
            "face_box": [round(float(x), 1) for x in lm.box],
            "faces_detected": lm.num_faces,
        },
        "timings_s": {**timings, **{f"fit.{k}": round(v, 3) for k, v in fit.timings.items()}},
    }
    return Avatar(vertices=neutral, topology=model.topology, textures=textures, rig=rig, meta=meta)


def benchmark_methods(texture_size: int = 512) -> dict:
    """The fidelity benchmark's methods: baselines and ours, each ``photo -> Reconstruction``."""
    from avatarsdk.bench.fidelity import BASELINES, Reconstruction
    from avatarsdk.fit import FitOptions

    def run(**kw):
        return lambda photo: Reconstruction.from_avatar(create(photo, texture_size=texture_size, **kw))

    return {
        **BASELINES,
        "landmarks_only_fit": run(fit_options=FitOptions(photometric=False)),
        "unwrap_no_delight": run(delight=False),
        "ours_fit": run(),
    }

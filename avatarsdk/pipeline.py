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

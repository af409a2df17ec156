"""The 15 Oculus (Meta) Lipsync visemes as named combinations of the 52 ARKit blendshapes.

Lip-sync tools (Oculus/Meta Lipsync, Ready Player Me, Convai, Azure's viseme
stream after a remap) drive a head by morph targets named ``viseme_sil``,
``viseme_PP``, ... ``viseme_U``. ICT-FaceKit has no visemes, so each one is a
fixed weighted sum of the ARKit shapes every avatar already has; exporting it
is one more morph target whose deltas are that sum (a viseme at weight w is
exactly the ARKit pose at w times the table's weights).

How the table was chosen: for each viseme, the articulation of its phonemes
as described in Meta's viseme reference (the lip, jaw and visible tongue
position of each group) was written as the ARKit/FACS shapes that produce it,
then the weights were set by rendering every viseme on random ICT heads and
comparing the mouth shapes side by side (lip contact for PP, lower lip under
the upper teeth for FF, tongue between the teeth for TH, the jaw series
aa > E > O > I > DD/nn > kk > SS, the rounding series U > O > RR > CH).
All visemes are left-right symmetric; weights stay in [0, 0.8] so they can
blend with expressions without overdriving the mouth.

====  ==================  =======================================================
name  phonemes            articulation -> ARKit shapes
====  ==================  =======================================================
sil   silence             the neutral face (all zero)
PP    p, b, m             lips pressed and slightly rolled in, jaw closed
FF    f, v                lower lip tucked under the upper teeth, upper lip up
TH    th                  tongue tip between the teeth, jaw slightly open
DD    t, d                jaw slightly open, lips apart and a little stretched
kk    k, g                jaw open a bit more, lips relaxed and stretched
CH    ch, j, sh           lips rounded and flared (funnel), teeth nearly closed
SS    s, z                teeth nearly closed, lips stretched wide
nn    n, l                jaw slightly open, tongue hidden, lips relaxed
RR    r                   lips rounded and pushed forward, jaw slightly open
aa    a (father)          jaw wide open, lower lip down
E     e (bed)             jaw half open, lips stretched
I     i (sit, see)        jaw a little open, lips spread (smile-like)
O     o (go)              jaw open, lips rounded (funnel)
U     u (you)             lips tightly rounded and protruded (pucker)
====  ==================  =======================================================
"""

from __future__ import annotations

import numpy as np

from avatarsdk.errors import InputError

__all__ = ["VISEME_NAMES", "VISEME_PREFIX", "VISEME_WEIGHTS", "viseme_shapes", "viseme_target_names"]

VISEME_NAMES: tuple[str, ...] = (
    "sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "I", "O", "U",
)
"""The Oculus Lipsync viseme names, in Oculus's order, spelled as Oculus's SDK and Ready Player Me's
avatars spell them (``viseme_I``, ``viseme_O``, ``viseme_U``: capital single letters, not ``ih``,
``oh``, ``ou``, which lip-sync code written for those avatars does not find)."""

VISEME_PREFIX = "viseme_"
"""Prefix of the exported morph target names (the Oculus / Ready Player Me convention)."""


def _sym(**weights: float) -> dict[str, float]:
    """Expand ``mouthSmile=0.3`` to ``mouthSmileLeft`` and ``mouthSmileRight``; other names stay."""
    sided = {"mouthSmile", "mouthStretch", "mouthPress", "mouthUpperUp", "mouthLowerDown", "mouthFrown",
             "mouthDimple", "cheekSquint", "noseSneer"}
    out: dict[str, float] = {}
    for name, w in weights.items():
        if name in sided:
            out[name + "Left"] = w
            out[name + "Right"] = w
        else:
            out[name] = w
    return out


VISEME_WEIGHTS: dict[str, dict[str, float]] = {
    "sil": {},
    "PP": _sym(mouthPress=0.6, mouthRollLower=0.3, mouthRollUpper=0.2, mouthShrugLower=0.2),
    "FF": _sym(mouthRollLower=0.6, mouthUpperUp=0.25, mouthShrugUpper=0.1, jawOpen=0.08, mouthStretch=0.1),
    "TH": _sym(jawOpen=0.18, tongueOut=0.4, mouthUpperUp=0.15, mouthLowerDown=0.1),
    "DD": _sym(jawOpen=0.2, mouthStretch=0.15, mouthUpperUp=0.1, mouthLowerDown=0.15),
    "kk": _sym(jawOpen=0.25, mouthStretch=0.25, mouthLowerDown=0.1, mouthUpperUp=0.05),
    "CH": _sym(mouthFunnel=0.5, mouthPucker=0.15, jawOpen=0.12, mouthUpperUp=0.2, mouthLowerDown=0.2),
    "SS": _sym(jawOpen=0.06, mouthStretch=0.4, mouthSmile=0.2, mouthUpperUp=0.15, mouthLowerDown=0.15),
    "nn": _sym(jawOpen=0.15, mouthStretch=0.1, mouthUpperUp=0.1, mouthLowerDown=0.05, mouthClose=0.05),
    "RR": _sym(mouthPucker=0.35, mouthFunnel=0.3, jawOpen=0.15, mouthUpperUp=0.1),
    "aa": _sym(jawOpen=0.65, mouthLowerDown=0.25, mouthUpperUp=0.1, mouthStretch=0.05),
    "E": _sym(jawOpen=0.35, mouthStretch=0.35, mouthSmile=0.2, mouthUpperUp=0.15, mouthLowerDown=0.2),
    "I": _sym(jawOpen=0.2, mouthSmile=0.4, mouthStretch=0.3, mouthUpperUp=0.2, mouthLowerDown=0.1),
    "O": _sym(jawOpen=0.45, mouthFunnel=0.55, mouthPucker=0.1, mouthLowerDown=0.1),
    "U": _sym(mouthPucker=0.75, mouthFunnel=0.35, jawOpen=0.15),
}
"""Viseme name -> {ARKit blendshape name: weight}; a viseme's deltas are sum(weight * shape)."""


def viseme_target_names() -> tuple[str, ...]:
    """The 15 exported morph target names: ``viseme_sil``, ``viseme_PP``, ... ``viseme_U``."""
    return tuple(VISEME_PREFIX + v for v in VISEME_NAMES)


def viseme_shapes(blendshape_names, blendshapes: np.ndarray) -> dict[str, np.ndarray]:
    """Combine a rig's ARKit blendshapes into the 15 viseme morph targets.

    viseme[v, k] = sum over ARKit shapes s of VISEME_WEIGHTS[viseme][s] * blendshapes[s, v, k]

    Args:
        blendshape_names: K names of the rig's shapes; must include every ARKit
            name the table uses (an ARKit-named rig has all 52).
        blendshapes: [K, V, 3] float deltas in metres.

    Returns:
        ``viseme_<name>`` -> [V, 3] float32 deltas in metres, in
        :data:`VISEME_NAMES` order (``viseme_sil`` is all zeros).

    Raises:
        InputError: the rig lacks ARKit shapes the table needs (e.g. an
            ICT-named rig), or the array does not match the names.
    """
    names = list(blendshape_names)
    blendshapes = np.asarray(blendshapes)
    if blendshapes.ndim != 3 or blendshapes.shape[0] != len(names) or blendshapes.shape[2] != 3:
        raise InputError(f"blendshapes: expected [{len(names)}, V, 3], got {blendshapes.shape}")
    needed = sorted({s for w in VISEME_WEIGHTS.values() for s in w})
    missing = [s for s in needed if s not in names]
    if missing:
        raise InputError(f"visemes need the ARKit blendshapes; the rig lacks {len(missing)} of them "
                         f"(e.g. {', '.join(missing[:3])}): build it with names='arkit'")
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for viseme in VISEME_NAMES:
        acc = np.zeros(blendshapes.shape[1:], np.float64)
        for shape, w in VISEME_WEIGHTS[viseme].items():
            acc += w * blendshapes[index[shape]].astype(np.float64)
        out[VISEME_PREFIX + viseme] = acc.astype(np.float32)
    return out

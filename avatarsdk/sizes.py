"""The one texture-size rule: a power of two in a range, checked where the value enters.

Every entry point (the CLI's ``--texture-size`` options, :class:`avatarsdk.batch.BatchOptions`,
the pipeline's avatar builders, the procedural skin painter, the regressor's
pair config) calls :func:`check_texture_size`, so a bad value fails the same
way everywhere, before any work: an :class:`~avatarsdk.errors.InputError`
naming the value and the range (exit code 2 in the CLI).
"""

from __future__ import annotations

import numbers

from avatarsdk.errors import InputError

__all__ = ["MAX_TEXTURE_SIZE", "MIN_TEXTURE_SIZE", "PHOTO_MIN_TEXTURE_SIZE", "check_texture_size"]

MIN_TEXTURE_SIZE = 64
"""Smallest skin texture of a generated head (random, GAN sample)."""
PHOTO_MIN_TEXTURE_SIZE = 256
"""Smallest skin texture of a head made from a photo (the photo unwrap and the
refinement's crops need at least this many texels across the face)."""
MAX_TEXTURE_SIZE = 4096
"""Largest texture side."""


def check_texture_size(size: object, *, minimum: int = MIN_TEXTURE_SIZE, maximum: int = MAX_TEXTURE_SIZE,
                       name: str = "texture_size") -> int:
    """Return ``size`` as an int if it is a power of two in [minimum, maximum].

    Args:
        size: the value to check (a bool is refused, an integral float is not).
        minimum: smallest allowed side; :data:`MIN_TEXTURE_SIZE` for generated
            heads, :data:`PHOTO_MIN_TEXTURE_SIZE` for photo modes.
        maximum: largest allowed side.
        name: how the message names the value ("texture_size", "--texture-size", ...).

    Returns:
        ``int(size)``.

    Raises:
        InputError: not an integer, not a power of two, or outside the range.
    """
    ok = isinstance(size, numbers.Integral) and not isinstance(size, bool)
    if ok:
        n = int(size)
        ok = minimum <= n <= maximum and n & (n - 1) == 0
    if not ok:
        raise InputError(f"{name} must be a power of two in [{minimum}, {maximum}], got {size!r}")
    return n

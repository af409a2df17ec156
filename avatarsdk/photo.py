"""Photo intake: decode any common image safely into an upright 8-bit sRGB ``Photo``.

What a file or array becomes:

* Orientation: the EXIF orientation tag (1-8) is applied, so the image is upright.
* Animated images (GIF, APNG, WebP) and multipage TIFF: the first frame, with a
  warning (logged) saying so; MPO (a camera JPEG with a preview or depth image
  appended): the photo, silently.
* Colour: an embedded ICC profile of an RGB or CMYK image (Display P3, Adobe RGB,
  press CMYK, ...) is converted to sRGB (profiles that are already sRGB are
  left alone); without one, RGB is taken as sRGB and CMYK gets Pillow's plain
  conversion.
* Transparency (RGBA, LA, PA, palette or single-colour ``tRNS``): composited
  over ``background``, white by default, which is how viewers and web pages
  show such a picture; a cut-out portrait on white also keeps the face
  detector and person segmentation on familiar ground. ``Photo`` has no alpha.
* Bit depth: 16-bit grey (``I;16`` PNG/TIFF) becomes value / 257, rounded;
  16-bit colour (48/64-bit PNG) is reduced by Pillow's decoder to the top 8 bits
  of each channel; 32-bit integer grey (``I``) is read as 16-bit data (clipped
  to 0..65535, / 257); float grey (``F``) as [0, 1] (clipped, NaN -> 0).
  Grey and bilevel images become three equal channels.

Limits, checked before any pixel is decoded: the file size (``stat``, before
reading) against ``max_bytes`` and the pixel count from the image header
against ``max_pixels``. Pillow's own decompression-bomb guard
(``Image.MAX_IMAGE_PIXELS``, ~89 MP) also applies and is treated as an error,
so ``max_pixels`` above it has no effect unless that global is raised.
Float conversions (alpha compositing, 16-bit and float arrays) run a block of
rows at a time, so memory beyond the decoded image and the result stays near
100 MB at any size (a 40 MP RGBA PNG: ~1 GB peak RSS in all).

Formats: only the decoders in :data:`FORMATS` (JPEG/MPO, PNG/APNG, GIF, WebP,
TIFF, BMP, AVIF) are tried. Pillow's other plugins (EPS, which runs
Ghostscript; PSD, ICO, PPM, FITS, ...) never see user bytes.

Everything wrong with the input (missing, unreadable, empty, truncated, not an
image in an accepted format, too large) raises ``UnreadableImage`` naming the source and the reason.
Other Pillow warnings (corrupt EXIF, ...) are logged at INFO, never shown (they
are caught with ``warnings.catch_warnings``, which is process-wide while a
decode runs).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from avatarsdk.errors import InputError, UnreadableImage
from avatarsdk.datatypes import Photo

__all__ = ["load_photo", "FORMATS", "MAX_PIXELS", "MAX_BYTES"]

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
"""Default pixel limit (40 MP: larger than any phone photo, small enough to decode safely)."""

MAX_BYTES = 50 * 2**20
"""Default file size limit (50 MiB)."""

FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "TIFF", "BMP", "AVIF")
"""Pillow format ids tried on user bytes (those this Pillow build has); everything else is refused."""

WHITE = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_MODES_16 = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def load_photo(
    src: str | os.PathLike | bytes | bytearray | memoryview | np.ndarray,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
    background: tuple[int, int, int] = WHITE,
) -> Photo:
    """Decode a photo file, encoded bytes or pixel array into an upright 8-bit RGB ``Photo``.

    Args:
        src: a path (``str`` or ``os.PathLike``) to an image file; the encoded
            bytes of one (``bytes``, ``bytearray``, ``memoryview``); or pixels as a
            numpy array: [H, W] grey, [H, W, 1] grey, [H, W, 3] RGB or
            [H, W, 4] RGBA, dtype ``uint8`` (0-255), ``uint16`` (0-65535) or
            float (0-1, finite). Arrays are taken as sRGB, already upright.
        max_pixels: most pixels (width * height) accepted, checked from the
            header before decoding.
        max_bytes: largest file or byte string accepted, checked before reading.
        background: sRGB colour, 0-255 each, that transparent pixels are
            composited over.

    Returns:
        Photo with ``image`` [H, W, 3] uint8 sRGB, ``source`` the path as given
        (``"<bytes>"`` / ``"<array>"`` otherwise) and ``sha256`` of the file or
        byte-string contents (of the array's C-order bytes for arrays).

    Raises:
        UnreadableImage: missing file, directory, no permission, empty or
            truncated file, not a supported image, or over a limit.
        InputError: ``background`` is not an RGB triple.
    """
    bg = tuple(background) if isinstance(background, (tuple, list)) else ()
    if len(bg) != 3 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 255 for c in bg):
        raise InputError(f"background must be three integers in 0..255, got {background!r}")
    if isinstance(src, np.ndarray):
        return _from_array(src, max_pixels, background)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        source = "<bytes>"
        if len(data) > max_bytes:
            raise UnreadableImage(f"{source}: {_size_text(len(data))} of image data, limit {_size_text(max_bytes)}")
    elif isinstance(src, (str, os.PathLike)):
        source = os.fsdecode(src)
        data = _read_file(Path(source), source, max_bytes)
    else:
        raise UnreadableImage(
            f"photo: expected a path, encoded bytes or a numpy array, got {type(src).__name__}"
        )
    if not data:
        raise UnreadableImage(f"{source}: empty file (0 bytes)")
    image = _decode(data, source, max_pixels, background)
    return Photo(image=image, source=source, sha256=hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

def _size_text(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def _mp(n: int) -> str:
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n} px"


def _read_file(path: Path, source: str, max_bytes: int) -> bytes:
    """Read a regular file of at most ``max_bytes``; every failure is an UnreadableImage."""
    try:
        st = path.stat()
    except ValueError:  # os.stat refuses a path with a NUL byte before the OS sees it
        raise UnreadableImage(f"{source!r}: the path contains a NUL byte") from None
    except FileNotFoundError:
        raise UnreadableImage(f"{source}: no such file") from None
    except PermissionError:
        raise UnreadableImage(f"{source}: permission denied") from None
    except OSError as e:
        raise UnreadableImage(f"{source}: cannot access ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UnreadableImage(f"{source}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise UnreadableImage(f"{source}: not a regular file")
    if st.st_size > max_bytes:
        raise UnreadableImage(f"{source}: file is {_size_text(st.st_size)}, limit {_size_text(max_bytes)}")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat
    except PermissionError:
        raise UnreadableImage(f"{source}: permission denied") from None
    except OSError as e:
        raise UnreadableImage(f"{source}: cannot read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise UnreadableImage(f"{source}: file is over {_size_text(max_bytes)}, limit {_size_text(max_bytes)}")
    return data


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------

def _decode(data: bytes, source: str, max_pixels: int, background: tuple[int, int, int]) -> np.ndarray:
    """Decode encoded image bytes to [H, W, 3] uint8 sRGB, upright."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=_formats())  # reads the header only
            w, h = im.size
            if w * h > max_pixels:
                raise UnreadableImage(
                    f"{source}: photo is {w}x{h} = {_mp(w * h)}, limit {_mp(max_pixels)}"
                )
            if w < 1 or h < 1:
                raise UnreadableImage(f"{source}: image has no pixels ({w}x{h})")
            im.load()  # first frame of animated formats
            fmt = im.format
            # MPO (a camera JPEG with a preview or depth image after the photo) is one photo: no word.
            frames = 1 if fmt == "MPO" else int(getattr(im, "n_frames", 1) or 1)
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb8(im, background, source)
        except UnreadableImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            # Pillow checks its own limit inside Image.open, before we see the size.
            m = re.search(r"\((\d+) pixels\)", str(e))
            measured = _mp(int(m.group(1))) if m else "too large"
            raise UnreadableImage(
                f"{source}: photo is {measured}, limit {_mp(min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels))} "
                "(stopped by Pillow's decompression-bomb guard at the header)"
            ) from None
        except UnidentifiedImageError:
            raise UnreadableImage(
                f"{source}: not an image in an accepted format ({', '.join(_formats())})"
            ) from None
        except Exception as e:  # noqa: BLE001
            # Pillow's plugins report malformed input with many exception types
            # (OSError for truncation, ValueError, SyntaxError, struct.error,
            # IndexError, EOFError, ...); all of them are the input's fault.
            reason = str(e) or type(e).__name__
            what = "file is truncated" if "truncated" in reason else "cannot decode image"
            raise UnreadableImage(f"{source}: {what} ({type(e).__name__}: {reason})") from None
    for w_ in caught:
        log.info("%s: %s", source, w_.message)
    if frames > 1:
        log.warning("%s: %s with %d frames; only the first frame is read", source,
                    "multipage TIFF" if fmt == "TIFF" else f"animated {fmt}", frames)
    log.debug("%s: decoded %s %dx%d", source, fmt, rgb.shape[1], rgb.shape[0])
    return rgb


_BLOCK_PX = 1 << 20
"""Pixels per block of rows when pixels go through float64 (~100 MB of temporaries at most)."""


def _row_blocks(h: int, w: int):
    """Slices of rows covering ``h`` rows of width ``w``, about ``_BLOCK_PX`` pixels each."""
    step = max(1, _BLOCK_PX // max(w, 1))
    for y in range(0, h, step):
        yield slice(y, min(h, y + step))


def _formats() -> tuple[str, ...]:
    """The ids of :data:`FORMATS` that this Pillow build can decode."""
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _to_rgb8(im: Image.Image, background: tuple[int, int, int], source: str) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to [H, W, 3] uint8 sRGB."""
    mode = im.mode
    if mode in _MODES_16 or mode in ("I", "F"):
        src = np.asarray(im)
        h, w = src.shape
        out = np.empty((h, w, 3), np.uint8)
        for rows in _row_blocks(h, w):  # float64 only a block at a time: bounded extra memory
            a = src[rows].astype(np.float64)
            if mode == "F":
                a = np.nan_to_num(a, nan=0.0, posinf=1.0, neginf=0.0).clip(0.0, 1.0) * 255.0
            else:
                a = a.clip(0.0, 65535.0) / 257.0
            out[rows] = np.rint(a).astype(np.uint8)[..., None]
        return out
    icc = im.info.get("icc_profile")
    has_alpha = mode in _ALPHA_MODES or "transparency" in im.info
    if has_alpha:
        rgba8 = np.asarray(im.convert("RGBA"))
        h, w = rgba8.shape[:2]
        bg = np.asarray(background, np.float64).reshape(1, 1, 3)
        out = np.empty((h, w, 3), np.uint8)
        for rows in _row_blocks(h, w):  # float64 only a block at a time: bounded extra memory
            rgba = rgba8[rows].astype(np.float64)
            alpha = rgba[..., 3:] / 255.0
            out[rows] = np.rint(rgba[..., :3] * alpha + bg * (1.0 - alpha)).astype(np.uint8)
        im = Image.fromarray(out, "RGB")
    elif mode == "CMYK" and icc:
        converted = _icc_to_srgb(im, icc, source)
        if converted is not None:
            return np.ascontiguousarray(np.asarray(converted), dtype=np.uint8)
        im = im.convert("RGB")
    elif mode != "RGB":
        im = im.convert("RGB")
    if icc and mode in ("RGB", "RGBA", "RGBa", "P", "PA"):
        converted = _icc_to_srgb(im, icc, source)
        if converted is not None:
            im = converted
    return np.array(im, dtype=np.uint8, copy=True, order="C")


def _icc_to_srgb(im: Image.Image, icc: bytes, source: str) -> Image.Image | None:
    """Convert an RGB or CMYK image with embedded profile ``icc`` to sRGB.

    Returns None (caller falls back to a plain conversion) when the profile is
    already sRGB, does not match the image's colour space, or cannot be used.
    """
    try:
        prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = prof.profile.xcolor_space.strip()
        desc = (ImageCms.getProfileDescription(prof) or "").strip()
        if (im.mode, space) not in (("RGB", "RGB"), ("CMYK", "CMYK")):
            return None
        if space == "RGB" and desc.lower().startswith("srgb"):
            return None
        return ImageCms.profileToProfile(im, prof, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception as e:  # noqa: BLE001 - a broken profile must not reject the photo
        log.warning("%s: ignoring unusable ICC profile (%s)", source, e)
        return None


# ---------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------

def _from_array(arr: np.ndarray, max_pixels: int, background: tuple[int, int, int]) -> Photo:
    source = "<array>"
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise UnreadableImage(f"{source}: expected [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {arr.shape}")
    h, w = arr.shape[:2]
    if h < 1 or w < 1:
        raise UnreadableImage(f"{source}: image has no pixels ({w}x{h})")
    if h * w > max_pixels:
        raise UnreadableImage(f"{source}: photo is {w}x{h} = {_mp(h * w)}, limit {_mp(max_pixels)}")
    if arr.dtype == np.uint8:
        kind = "u8"
    elif arr.dtype.kind == "u" and arr.dtype.itemsize == 2:  # uint16 of either byte order
        kind = "u16"
    elif np.issubdtype(arr.dtype, np.floating):
        with np.errstate(over="ignore", invalid="ignore"):  # long double beyond float64 -> inf, refused here
            if not all(np.isfinite(arr[rows].astype(np.float64)).all() for rows in _row_blocks(h, w)):
                raise UnreadableImage(f"{source}: float pixels must be finite")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise UnreadableImage(f"{source}: float pixels must lie in [0, 1], got [{lo:g}, {hi:g}]")
        kind = "float"
    else:
        raise UnreadableImage(f"{source}: dtype {arr.dtype} not supported (uint8, uint16 or float in [0, 1])")
    # Hashed and converted in blocks of rows: a 40 MP photo (or a zero-stride view claiming
    # one) needs ~100 MB of temporaries, not gigabytes. The digest is of the C-order bytes.
    sha = hashlib.sha256()
    for rows in _row_blocks(h, w):
        sha.update(np.ascontiguousarray(arr[rows]))
    digest = sha.hexdigest()
    image = np.empty((h, w, 3), np.uint8)
    if kind == "u8" and arr.ndim == 2:
        image[...] = arr[..., None]  # exact: no arithmetic needed
    elif kind == "u8" and arr.shape[2] == 3:
        image[...] = arr
    else:
        bg = np.asarray(background, np.float64).reshape(1, 1, 3)
        for rows in _row_blocks(h, w):
            a = arr[rows].astype(np.float64)
            if kind == "u16":
                a = a / 257.0
            elif kind == "float":
                a = a * 255.0
            if a.ndim == 2:
                a = a[..., None]
            elif a.shape[2] == 4:
                alpha = a[..., 3:] / 255.0
                a = a[..., :3] * alpha + bg * (1.0 - alpha)
            image[rows] = np.rint(a).clip(0, 255).astype(np.uint8)
    return Photo(image=image, source=source, sha256=digest)

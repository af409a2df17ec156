"""Fuzz the photo intake: random and mutated image files and random arrays into ``load_photo``.

The property: ``load_photo`` either returns a ``Photo`` whose image is
[H, W, 3] uint8, C-contiguous, with H * W within ``max_pixels``, or raises an
:class:`~avatarsdk.errors.AvatarError` subclass; no Python warning escapes it;
and every call returns within ``--limit`` seconds. Anything else (another exception type, a wrong result, a
slow call) is a failure.

Inputs, from one seeded generator (same seed, same inputs):

* random bytes (0-4096 of them, some starting with a real format's magic);
* mutations of small valid encodings (PNG in 7 modes, JPEG baseline, progressive,
  grey, CMYK and with EXIF, GIF still and animated, WebP lossy, lossless and
  animated, TIFF raw/LZW/PackBits/16-bit/float, BMP, AVIF): bit flips, random
  overwrites, truncation, deleted, inserted and duplicated slices, "interesting"
  integers (0, 1, 2^15, 2^16-1, 2^31-1, ...) written into the header, splices of
  two seeds; for PNG the chunk CRCs are recomputed half the time so mutated
  bodies get past the checksum to the decoder;
* random arrays: 20 dtypes (both byte orders, bool, complex, object), 0-4
  dimensions, values from random bytes (NaN and inf included), some
  non-contiguous views and zero-stride views of up to 3000 per dimension (so up
  to 9 MP; near the 40 MP limit a legitimate float RGBA array takes ~3 s, which
  is size, not a defect, and is measured apart from this property).

About 1 in 10 byte inputs goes through a temporary file path instead of bytes.

Usage::

    OMP_NUM_THREADS=1 python scripts/fuzz_intake.py [-n 10000] [--seed 0] [--limit 2.0]

Prints the count, failures (each with its input kind and error), the slowest
input and the maximum time per input; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

__all__ = ["Outcome", "check", "mutate", "random_array", "random_input", "seed_encodings"]

ASTRONAUT = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"

INTERESTING = (0, 1, 2, 7, 8, 16, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)

DTYPES = ("u1", "u2", ">u2", "u4", "u8", "i1", "i2", "i4", "i8", "f2", "f4", ">f4", "f8", ">f8", "g",
          "?", "c8", "c16", "O", "U1")


def _enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def seed_encodings() -> dict[str, bytes]:
    """Small valid files of every accepted format and many pixel modes (name -> bytes)."""
    a = Image.open(ASTRONAUT).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    grey = a.convert("L")
    rgba = a.copy()
    rgba.putalpha(Image.linear_gradient("L").resize((32, 32)))
    pal = a.quantize(16)
    exif = Image.Exif()
    exif[0x0112] = 6
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    frames = [a, a.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    s = {
        "png_rgb": _enc(a, "PNG"),
        "png_rgba": _enc(rgba, "PNG"),
        "png_p_trns": _enc(pal, "PNG", transparency=0),
        "png_l": _enc(grey, "PNG"),
        "png_i16": _enc(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG"),
        "png_la": _enc(rgba.convert("LA"), "PNG"),
        "png_1": _enc(grey.convert("1"), "PNG"),
        "png_icc": _enc(a, "PNG", icc_profile=srgb),
        "apng": _enc(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "jpeg": _enc(a, "JPEG", quality=80),
        "jpeg_progressive": _enc(a, "JPEG", progressive=True),
        "jpeg_grey": _enc(grey, "JPEG"),
        "jpeg_cmyk": _enc(a.convert("CMYK"), "JPEG"),
        "jpeg_exif": _enc(a, "JPEG", exif=exif),
        "gif": _enc(pal, "GIF"),
        "gif_animated": _enc(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0),
        "webp_lossy": _enc(a, "WEBP", quality=50),
        "webp_lossless": _enc(rgba, "WEBP", lossless=True),
        "webp_animated": _enc(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "tiff_raw": _enc(a, "TIFF"),
        "tiff_lzw": _enc(a, "TIFF", compression="tiff_lzw"),
        "tiff_packbits": _enc(rgba, "TIFF", compression="packbits"),
        "tiff_i16": _enc(Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "TIFF"),
        "tiff_f": _enc(Image.fromarray(np.asarray(grey, np.float32) / 255.0, "F"), "TIFF"),
        "bmp": _enc(a, "BMP"),
        "bmp_p": _enc(pal, "BMP"),
    }
    try:
        s["avif"] = _enc(a, "AVIF", quality=50)
    except (KeyError, OSError, ValueError):  # a Pillow build without AVIF
        pass
    return s


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC of a (possibly mutated) PNG, as far as its chunk structure holds."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out, pos = bytearray(data[:8]), 8
    while pos + 12 <= len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + n
        if end > len(data):
            break
        body = data[pos + 4 : pos + 8 + n]
        out += data[pos : pos + 8 + n] + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
        pos = end
    return bytes(out + data[pos:])


def mutate(data: bytes, rng: np.random.Generator, others: list[bytes]) -> bytes:
    """Apply 1-4 random mutations to ``data`` (``others``: seeds to splice with)."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        n = len(b)
        op = int(rng.integers(0, 9))
        # Headers hold the sizes and modes: aim half the mutations at the first 64 bytes.
        hi = max(1, min(n, 64) if rng.random() < 0.5 else n)
        if op == 0 and n:  # flip bits
            for _ in range(int(rng.integers(1, 9))):
                i = int(rng.integers(0, hi))
                b[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1 and n:  # overwrite with random bytes
            i = int(rng.integers(0, hi))
            k = int(rng.integers(1, 17))
            b[i : i + k] = rng.integers(0, 256, min(k, n - i), dtype=np.uint8).tobytes()
        elif op == 2:  # truncate
            b = b[: int(rng.integers(0, n + 1))]
        elif op == 3 and n:  # delete a slice
            i = int(rng.integers(0, n))
            del b[i : i + int(rng.integers(1, 65))]
        elif op == 4:  # insert random bytes
            i = int(rng.integers(0, n + 1))
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
        elif op == 5 and n:  # duplicate a slice
            i = int(rng.integers(0, n))
            k = int(rng.integers(1, 257))
            b[i:i] = b[i : i + k]
        elif op == 6 and n >= 4:  # an interesting integer into the header
            i = int(rng.integers(0, max(1, min(n, 64) - 3)))
            v = INTERESTING[int(rng.integers(0, len(INTERESTING)))]
            fmt = [">H", "<H", ">I", "<I"][int(rng.integers(0, 4))]
            packed = struct.pack(fmt, v & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
            b[i : i + len(packed)] = packed
        elif op == 7 and others:  # splice with another seed
            o = others[int(rng.integers(0, len(others)))]
            b = b[: int(rng.integers(0, n + 1))] + o[int(rng.integers(0, len(o) + 1)) :]
        elif op == 8 and n:  # repeat a tail many times (long chunks, many frames)
            i = int(rng.integers(max(0, n - 256), n))
            b += b[i:] * int(rng.integers(1, 50))
    out = bytes(b)
    return _fix_png_crcs(out) if rng.random() < 0.5 else out


def random_array(rng: np.random.Generator):
    """A random array: random dtype, 0-4 dims of 0-9, values from random bytes; sometimes a strided view."""
    dt = np.dtype(DTYPES[int(rng.integers(0, len(DTYPES)))])
    ndim = int(rng.choice([0, 1, 2, 2, 3, 3, 3, 3, 4]))
    shape = [int(rng.integers(0, 10)) for _ in range(ndim)]
    if ndim == 3 and rng.random() < 0.7:
        shape[2] = int(rng.choice([1, 3, 4]))
    count = int(np.prod(shape)) if shape else 1
    if dt.kind == "O":
        arr = np.empty(shape, dtype=object)
        arr.flat = [rng.choice([None, 1, 0.5, "x"]) for _ in range(count)] if count else []
    elif dt.kind == "U":
        arr = np.full(shape, "a", dtype=dt)
    else:
        raw = rng.integers(0, 256, count * dt.itemsize, dtype=np.uint8).tobytes()
        arr = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
        if dt.kind == "f" and rng.random() < 0.5:  # mostly valid floats, so the [0, 1] path runs too
            with np.errstate(all="ignore"):
                arr = (np.abs(np.nan_to_num(arr.astype(np.float64), nan=0.5, posinf=0.5, neginf=0.5)) % 1.0).astype(dt)
    r = rng.random()
    if r < 0.1 and arr.ndim >= 2:
        arr = arr[:, ::-1]
    elif r < 0.2 and arr.ndim >= 2:
        arr = np.asfortranarray(arr)
    elif r < 0.25:
        arr = np.broadcast_to(arr.reshape(-1)[:1].reshape((1,) * max(arr.ndim, 2)) if arr.size else
                              np.zeros((1, 1), dt), tuple(int(rng.integers(1, 3000)) for _ in range(max(arr.ndim, 2))))
    return arr


def random_input(rng: np.random.Generator, seeds: dict[str, bytes]) -> tuple[str, object]:
    """One fuzz input: (kind, value) where value is bytes or an array."""
    r = rng.random()
    names = sorted(seeds)
    if r < 0.15:
        n = int(rng.integers(0, 4097))
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        if rng.random() < 0.5:  # a real format's magic, then garbage
            magic = seeds[names[int(rng.integers(0, len(names)))]][:12]
            data = magic + data
        return "random_bytes", data
    if r < 0.25:
        return "array", random_array(rng)
    name = names[int(rng.integers(0, len(names)))]
    return f"mutated:{name}", mutate(seeds[name], rng, [seeds[k] for k in names])


@dataclass
class Outcome:
    """What one call did: ``ok`` is False for a property violation (``error`` says which)."""

    ok: bool
    seconds: float
    result: str  # "photo HxW", or the AvatarError class name
    error: str | None = None


def check(value, *, limit: float = 2.0, max_pixels: int | None = None) -> Outcome:
    """Call ``load_photo(value)`` and check the property.

    Args:
        value: bytes, a path or an array.
        limit: seconds the call may take.
        max_pixels: passed on when given (default: the SDK's).

    Returns:
        The outcome (``ok`` False when the property is violated).
    """
    from avatarsdk.errors import AvatarError
    from avatarsdk.photo import MAX_PIXELS, load_photo
    from avatarsdk.datatypes import Photo

    kw = {} if max_pixels is None else {"max_pixels": max_pixels}
    limit_px = MAX_PIXELS if max_pixels is None else max_pixels
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        try:
            p = load_photo(value, **kw)
        except AvatarError as e:
            dt = time.perf_counter() - t0
            problems = [f"took {dt:.2f} s"] if dt > limit else []
            problems += [f"leaked {w.category.__name__}: {w.message}" for w in leaked]
            return Outcome(not problems, dt, type(e).__name__, "; ".join(problems) or None)
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer looks for
            dt = time.perf_counter() - t0
            return Outcome(False, dt, type(e).__name__,
                           f"untyped {type(e).__name__}: {e}\n{''.join(traceback.format_exc(limit=-4))}")
    dt = time.perf_counter() - t0
    img = getattr(p, "image", None)
    problems = [f"leaked {w.category.__name__}: {w.message}" for w in leaked]
    if not isinstance(p, Photo) or not isinstance(img, np.ndarray):
        problems.append(f"returned {type(p).__name__}")
    else:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            problems.append(f"image {img.shape} {img.dtype}")
        elif not (1 <= img.shape[0] * img.shape[1] <= limit_px):
            problems.append(f"{img.shape[1]}x{img.shape[0]} outside 1..{limit_px} px")
        if not img.flags.c_contiguous:
            problems.append("not C-contiguous")
    if dt > limit:
        problems.append(f"took {dt:.2f} s")
    shape = f"photo {img.shape[0]}x{img.shape[1]}" if isinstance(img, np.ndarray) and img.ndim >= 2 else "photo"
    return Outcome(not problems, dt, shape, "; ".join(problems) or None)


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer; print the summary; return 1 on any failure."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=10_000, help="number of inputs")
    ap.add_argument("--seed", type=int, default=0, help="generator seed (same seed, same inputs)")
    ap.add_argument("--limit", type=float, default=2.0, help="seconds allowed per input")
    ap.add_argument("--hang", type=float, default=60.0, help="abort with a traceback if one input runs this long")
    ap.add_argument("--save", type=Path, default=None, help="folder to write failing byte inputs to")
    args = ap.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)  # the intake logs bad ICC profiles at WARNING: expected here
    rng = np.random.default_rng(args.seed)
    seeds = seed_encodings()
    failures: list[tuple[int, str, Outcome]] = []
    results: dict[str, int] = {}
    times: list[float] = []
    slowest = (0.0, -1, "")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            kind, value = random_input(rng, seeds)
            if isinstance(value, bytes) and rng.random() < 0.1:
                path = Path(tmp) / f"input{i % 7}.img"
                path.write_bytes(value)
                kind, value = kind + "@file", path
            faulthandler.dump_traceback_later(args.hang, exit=True)
            out = check(value, limit=args.limit)
            faulthandler.cancel_dump_traceback_later()
            times.append(out.seconds)
            results[out.result if not out.result.startswith("photo") else "Photo"] = \
                results.get(out.result if not out.result.startswith("photo") else "Photo", 0) + 1
            if out.seconds > slowest[0]:
                slowest = (out.seconds, i, kind)
            if not out.ok:
                failures.append((i, kind, out))
                if args.save is not None and isinstance(value, (bytes, Path)):
                    args.save.mkdir(parents=True, exist_ok=True)
                    data = value if isinstance(value, bytes) else value.read_bytes()
                    (args.save / f"fail_{i}.bin").write_bytes(data)
    total = time.perf_counter() - t_all
    t = np.asarray(times)
    print(f"inputs: {args.n} (seed {args.seed}) in {total:.1f} s")
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(results.items(), key=lambda kv: -kv[1])))
    print(f"failures: {len(failures)}")
    for i, kind, out in failures[:20]:
        print(f"  #{i} {kind}: {out.error}")
    print(f"time per input: max {t.max():.3f} s (#{slowest[1]} {slowest[2]}), p99 {np.percentile(t, 99):.3f} s, "
          f"median {np.median(t) * 1e3:.2f} ms; limit {args.limit} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

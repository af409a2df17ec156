"""Generate the bad-input corpus for photo intake (``load_photo``) and face detection (``detect``).

Every case is made here, from ``examples/astronaut.png`` or from nothing; nothing
is downloaded. Each case declares what ``load_photo`` followed by ``detect``
must do with it: raise one specific :mod:`avatarsdk.errors` class, or succeed
("valid") with the photo's size and, for photos of the astronaut, one face
found at a known place.

Usage::

    python scripts/make_bad_inputs.py OUT_DIR      # writes the files and OUT_DIR/manifest.json

From Python (the tests do this into ``tmp_path``)::

    from make_bad_inputs import make_corpus
    cases = make_corpus(folder)        # list[Case]; array cases carry their array

What is *not* here: real profile (extreme yaw) photos. A frontal photo cannot be
turned into a profile by warping it; the ``yaw_*`` cases squeeze the face
horizontally (foreshortening of a strongly turned head, without the occlusion),
which is a proxy only.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ASTRONAUT", "ASTRONAUT_FACE", "Case", "make_corpus"]

ASTRONAUT = Path(__file__).resolve().parents[1] / "examples" / "astronaut.png"

ASTRONAUT_FACE = (225.0, 119.0, 104.0)
"""Face of ``examples/astronaut.png``: detector box centre x, y and side, in pixels (512x512 photo)."""

EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    """One input and what the SDK must do with it.

    Attributes:
        name: unique identifier (also the test id).
        expect: ``"valid"``, or the name of the :mod:`avatarsdk.errors` class
            that ``load_photo`` + ``detect`` must raise.
        stage: where that error comes from: ``"load"`` (``load_photo``) or
            ``"detect"``; ``"detect"`` for valid cases.
        what: one line on what the input is and why it is here.
        path: the file (or folder, FIFO, link) to pass, or None for in-memory cases.
        source: for in-memory cases, the object given to ``load_photo``
            (numpy array, list, PIL image, ...); None otherwise.
        detect_kwargs: keyword arguments for ``detect`` (e.g. ``refuse_multiple``).
        size: for loads that must succeed: the expected (width, height) of the upright photo.
        faces: for valid cases with a face: the expected face centres (x, y) in
            the upright photo's pixels, one per face the detector must count;
            the detector's chosen (largest) box must be centred near one of them.
        face_side: expected face box side in pixels (the centre tolerance is a
            quarter of it; the measured side must be within a factor 1.5).
        message: a regular expression the error message must match (optional).
        skip: why this case cannot be checked in this environment, or None.
        cli_args: extra arguments when the case is run through ``avatarsdk create``.
    """

    name: str
    expect: str
    stage: str
    what: str
    path: Path | None = None
    source: object = None
    detect_kwargs: dict = field(default_factory=dict)
    size: tuple[int, int] | None = None
    faces: tuple[tuple[float, float], ...] = ()
    face_side: float | None = None
    message: str | None = None
    skip: str | None = None
    cli_args: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """The case without its in-memory source (for ``manifest.json``)."""
        src = self.source
        described = None
        if isinstance(src, np.ndarray):
            described = f"ndarray shape={src.shape} dtype={src.dtype} strides={src.strides}"
        elif src is not None:
            described = type(src).__name__
        return {
            "name": self.name, "expect": self.expect, "stage": self.stage, "what": self.what,
            "path": None if self.path is None else os.fsdecode(self.path), "source": described,
            "detect_kwargs": self.detect_kwargs, "size": self.size, "faces": self.faces,
            "face_side": self.face_side, "message": self.message, "skip": self.skip,
            "cli_args": list(self.cli_args),
        }


# ---------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------

def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes,
             extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A PNG written by hand: any header (huge sizes, 48-bit RGB) and extra chunks before IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = b"".join(png_chunk(k, d) for k, d in extra)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + body
            + png_chunk(b"IDAT", zlib.compress(rows, 9)) + png_chunk(b"IEND", b""))


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif


# Stored pixels for an upright image U under each EXIF orientation: the inverse of
# what a viewer applies (TIFF/EXIF: 6 = rotate 90 degrees clockwise to view).
_TO_STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1],
    5: lambda u: u.transpose(1, 0, 2),
    6: lambda u: np.rot90(u, 1),
    7: lambda u: u[::-1, ::-1].transpose(1, 0, 2),
    8: lambda u: np.rot90(u, -1),
}


def _canvas(img: np.ndarray, width: int, height: int, x: int, y: int, fill=(128, 128, 128)) -> np.ndarray:
    out = np.empty((height, width, 3), np.uint8)
    out[:] = fill
    out[y : y + img.shape[0], x : x + img.shape[1]] = img
    return out


def _resized(a: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((width, height), Image.Resampling.LANCZOS))


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


# ---------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------

def make_corpus(folder: str | os.PathLike) -> list[Case]:
    """Write every file case into ``folder`` and return all cases (file and in-memory).

    Args:
        folder: an empty or new folder; files, sub-folders, links and a FIFO are made in it.

    Returns:
        The cases, in a fixed order (names are unique).
    """
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    A = np.asarray(Image.open(ASTRONAUT).convert("RGB"))  # [512, 512, 3] uint8
    fx, fy, fs = ASTRONAUT_FACE
    rng = np.random.default_rng(1234)
    cases: list[Case] = []

    def write(name: str, data: bytes) -> Path:
        p = root / name
        p.write_bytes(data)
        return p

    def add(**kw) -> None:
        cases.append(Case(**kw))

    png_a = ASTRONAUT.read_bytes()
    jpg_a = encode(Image.fromarray(A), "JPEG", quality=92)

    # -- valid photos of one face, in every accepted format and pixel mode ---------------------
    one = dict(expect="valid", stage="detect", size=(512, 512), faces=((fx, fy),), face_side=fs)
    add(name="astronaut_png", what="the example photo, unchanged", path=write("astronaut.png", png_a), **one)
    add(name="astronaut_jpeg", what="baseline JPEG", path=write("astronaut.jpg", jpg_a), **one)
    add(name="progressive_jpeg", what="progressive JPEG",
        path=write("progressive.jpg", encode(Image.fromarray(A), "JPEG", quality=90, progressive=True)), **one)
    add(name="png_named_jpg", what="PNG bytes behind a .jpg name (content decides, not the extension)",
        path=write("really_png.jpg", png_a), **one)
    add(name="jpeg_named_png", what="JPEG bytes behind a .png name",
        path=write("really_jpeg.png", jpg_a), **one)
    add(name="cmyk_jpeg", what="CMYK JPEG (Adobe marker), converted to RGB",
        path=write("cmyk.jpg", encode(Image.fromarray(A).convert("CMYK"), "JPEG", quality=95)), **one)
    grey = np.asarray(Image.fromarray(A).convert("L"))
    add(name="grey_jpeg", what="8-bit greyscale JPEG", path=write("grey.jpg", encode(Image.fromarray(grey), "JPEG")),
        **one)
    add(name="grey16_png", what="16-bit greyscale PNG (I;16)",
        path=write("grey16.png", encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG")), **one)
    rows48 = b"".join(b"\x00" + (row.astype(">u2") * 257).tobytes() for row in A)
    add(name="rgb48_png", what="48-bit RGB PNG (16 bits per channel)",
        path=write("rgb48.png", _raw_png(512, 512, 16, 2, rows48)), **one)
    la = np.dstack([grey, np.full_like(grey, 255)])
    la[:40] = 0  # a fully transparent band at the top
    add(name="grey_alpha_png", what="grey + alpha PNG (LA), transparent band composited on white",
        path=write("grey_alpha.png", encode(Image.fromarray(la, "LA"), "PNG")), **one)
    pal = Image.fromarray(A).quantize(256, dither=Image.Dither.NONE)
    corner = pal.getpixel((0, 0))
    add(name="palette_alpha_png", what="256-colour palette PNG, the background's index transparent (tRNS)",
        path=write("palette_alpha.png", encode(pal, "PNG", transparency=corner)), **one)
    yy, xx = np.mgrid[0:512, 0:512]
    alpha = (((xx - 256) / 230.0) ** 2 + ((yy - 256) / 250.0) ** 2 <= 1.0).astype(np.uint8) * 255
    add(name="rgba_transparent_png", what="RGBA PNG, transparent outside an ellipse round the person",
        path=write("rgba_cutout.png", encode(Image.fromarray(np.dstack([A, alpha]), "RGBA"), "PNG")), **one)
    noise_frame = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    add(name="animated_gif", what="two-frame GIF: the astronaut, then noise (the first frame is used)",
        path=write("animated.gif", encode(Image.fromarray(A), "GIF", save_all=True, append_images=[noise_frame],
                                           duration=200, loop=0)), **one)
    pages = encode(Image.fromarray(A), "TIFF", save_all=True, append_images=[noise_frame])
    add(name="multipage_tiff", what="two-page TIFF: the astronaut, then noise (the first page is used, with a "
        "warning)", path=write("two_pages.tiff", pages), **one)
    grey_f = Image.fromarray(grey.astype(np.float32) / 255.0, "F")
    add(name="float_grey_tiff", what="32-bit float greyscale TIFF (mode F, values in [0, 1])",
        path=write("grey_float.tiff", encode(grey_f, "TIFF")), **one)
    add(name="webp_lossy", what="lossy WebP", path=write("astronaut.webp", encode(Image.fromarray(A), "WEBP",
                                                                                    quality=85)), **one)
    add(name="tiff_lzw", what="LZW-compressed TIFF",
        path=write("astronaut.tiff", encode(Image.fromarray(A), "TIFF", compression="tiff_lzw")), **one)
    add(name="bmp", what="24-bit BMP", path=write("astronaut.bmp", encode(Image.fromarray(A), "BMP")), **one)
    add(name="exif_orientation_9", what="EXIF orientation 9 (not a valid value): ignored, pixels as stored",
        path=write("orientation9.jpg", encode(Image.fromarray(A), "JPEG", quality=92, exif=_exif(9))), **one)

    # EXIF orientations 1-8: pixels stored transformed so that the upright photo is
    # a 400x512 crop of the astronaut (not square, so a wrong rotation shows in the size).
    upright = A[:, 40:440]
    for o in range(1, 9):
        stored = np.ascontiguousarray(_TO_STORED[o](upright))
        add(name=f"exif_orientation_{o}", expect="valid", stage="detect",
            what=f"JPEG stored {stored.shape[1]}x{stored.shape[0]} with EXIF orientation {o}; upright 400x512",
            path=write(f"orientation{o}.jpg", encode(Image.fromarray(stored), "JPEG", quality=92, exif=_exif(o))),
            size=(400, 512), faces=((fx - 40, fy),), face_side=fs)

    # -- names ----------------------------------------------------------------------------------
    add(name="unicode_name", what="non-ASCII file name (Cyrillic, CJK, emoji, combining accent)",
        path=write("фото 宇航员 🚀 é.png", png_a), **one)
    add(name="spaces_name", what="file name with leading, inner and trailing spaces",
        path=write("  my   photo  .png", png_a), **one)
    bad_utf8 = root / os.fsdecode(b"latin1-\xe9t\xe9.png")  # not valid UTF-8: a surrogate-escaped str
    bad_utf8.write_bytes(png_a)
    add(name="non_utf8_name", what="file name bytes that are not UTF-8", path=bad_utf8, **one)
    link = root / "link_to_astronaut.png"
    link.symlink_to(root / "astronaut.png")
    add(name="symlink", what="symbolic link to a photo", path=link, **one)

    # -- valid photos with a face somewhere else ------------------------------------------------
    add(name="wide_canvas_face", expect="valid", stage="detect", what="1280x512 (2.5:1) with the face at the right",
        path=write("wide_face.png", encode(Image.fromarray(_canvas(A, 1280, 512, 768, 0)), "PNG")),
        size=(1280, 512), faces=((fx + 768, fy),), face_side=fs)
    add(name="mirrored", expect="valid", stage="detect", what="mirrored left-right",
        path=write("mirrored.png", encode(Image.fromarray(A[:, ::-1]), "PNG")),
        size=(512, 512), faces=((511 - fx, fy),), face_side=fs)
    cut = A[:, 150:]
    add(name="face_cut_left_edge", expect="valid", stage="detect",
        what="cropped 75 px into the face box on the left (the face touches the border)",
        path=write("cut_left_150.png", encode(Image.fromarray(cut), "PNG")), size=(362, 512),
        faces=((fx - 150, fy),), face_side=fs)
    two = np.concatenate([A, A], axis=1)
    add(name="two_faces_take_largest", expect="valid", stage="detect",
        what="the astronaut twice side by side, default options: the largest face is used, two counted",
        path=write("two_faces.png", encode(Image.fromarray(two), "PNG")), size=(1024, 512),
        faces=((fx, fy), (fx + 512, fy)), face_side=fs)

    # The face mesh assumes an upright face: upside down it returns an upright-looking mesh with the mouth
    # where the eyes are, which contradicts the detector's keypoints. detect() refuses it; the pipeline's
    # detect_upright() turns the photo (tests/test_bad_inputs.py: test_rolled_faces_are_turned_upright).
    add(name="upside_down", expect="FaceOrientation", stage="detect",
        what="the astronaut turned 180 degrees (a photo held upside down)",
        path=write("upside_down.png", encode(Image.fromarray(np.ascontiguousarray(A[::-1, ::-1])), "PNG")),
        size=(512, 512), message="contradict the face detector")

    # -- decodable photos the detector must refuse ------------------------------------------------
    def no_face(name, what, img, fname, message=None, **kw):
        add(name=name, expect="NoFaceFound", stage="detect", what=what,
            path=write(fname, encode(Image.fromarray(img), "PNG")),
            size=(img.shape[1], img.shape[0]), message=message, **kw)

    no_face("flat_colour", "a flat grey 640x480 image", np.full((480, 640, 3), 128, np.uint8), "flat.png",
            message="no face found in the 640x480 photo")
    no_face("noise", "uniform RGB noise (the detector's false positive is rejected by the face mesh)",
            rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), "noise.png")
    t = np.linspace(0.0, 1.0, 480)[:, None, None]
    land = np.where(t < 0.6, (70 + 100 * t) * np.array([1.0, 1.4, 2.2]),
                    (120 - 60 * t) * np.array([0.7, 1.2, 0.5])) * np.ones((1, 800, 1))
    land[80:140, 600:660] = np.where(((np.mgrid[0:60, 0:60] - 30) ** 2).sum(0)[..., None] < 900, 250, 
                                     land[80:140, 600:660])  # a sun
    no_face("landscape_gradient", "sky-and-ground gradient with a sun disc, 800x480",
            np.clip(land, 0, 255).astype(np.uint8), "landscape.png")
    no_face("one_pixel", "a 1x1 image", np.full((1, 1, 3), 200, np.uint8), "one_pixel.png",
            message="1x1 photo")
    no_face("very_wide_strip", "4000x16 strip (aspect 250:1)", np.full((16, 4000, 3), 90, np.uint8), "strip.png")
    no_face("very_tall_strip", "16x4000 strip", np.full((4000, 16, 3), 90, np.uint8), "tall_strip.png")
    small = _resized(A, 154, 154)  # face ~31 px ...
    no_face("tiny_face_big_canvas", "astronaut downscaled to 154 px (face ~31 px) in a 1600x1200 canvas",
            _canvas(small, 1600, 1200, 700, 500), "tiny_face.png")
    no_face("face_in_very_wide_photo", "full-size face (104 px) at the end of a 2048x512 photo: the detector's "
            "192-px view makes it ~10 px", _canvas(A, 2048, 512, 1536, 0), "wide_2048.png")
    no_face("face_cut_in_half", "cropped through the face's centre line (left half of the face gone)",
            np.ascontiguousarray(A[:, 225:]), "cut_half.png")
    no_face("face_cut_below_eyes", "cropped at y=140 (forehead and eyes gone)",
            np.ascontiguousarray(A[140:]), "cut_eyes.png")
    for f in (0.35, 0.25):
        n = round(512 * f)
        no_face(f"yaw_proxy_squeezed_{round(f * 100)}", f"face squeezed to {round(f * 100)}% width (a proxy for a "
                "strongly turned head: foreshortening without occlusion)",
                _canvas(_resized(A, n, 512), 512, 512, (512 - n) // 2, 0), f"squeezed_{round(f * 100)}.png")
    black = Image.new("L", (6000, 6000), 0)
    add(name="black_36mp", expect="NoFaceFound", stage="detect",
        what="6000x6000 black PNG: 36 MP (under the limit) from a ~35 KB file, a zlib bomb that is allowed",
        path=write("black_36mp.png", encode(black, "PNG", optimize=True)), size=(6000, 6000))

    small_face = _canvas(_resized(A, 256, 256), 400, 400, 72, 72)
    add(name="small_face", expect="FaceTooSmall", stage="detect",
        what="astronaut at half size in a 400x400 canvas: the face box is ~52 px, under 64",
        path=write("small_face.png", encode(Image.fromarray(small_face), "PNG")), size=(400, 400),
        message=r"the face is \d+x\d+ px, need at least 64 px")
    add(name="two_faces_refused", expect="MultipleFaces", stage="detect", detect_kwargs={"refuse_multiple": True},
        what="the astronaut twice side by side with refuse_multiple", path=root / "two_faces.png",
        size=(1024, 512), message="2 faces found", cli_args=("--refuse-multiple",))
    add(name="three_faces_refused", expect="MultipleFaces", stage="detect", detect_kwargs={"refuse_multiple": True},
        what="the astronaut three times side by side (JPEG) with refuse_multiple",
        path=write("three_faces.jpg", encode(Image.fromarray(np.concatenate([A] * 3, axis=1)), "JPEG")),
        size=(1536, 512), message="3 faces found")
    grid = np.concatenate([np.concatenate([A, A], axis=1)] * 2, axis=0)
    add(name="four_faces_refused", expect="MultipleFaces", stage="detect", detect_kwargs={"refuse_multiple": True},
        what="2x2 grid of the astronaut with refuse_multiple",
        path=write("grid.png", encode(Image.fromarray(grid), "PNG")), size=(1024, 1024), message="4 faces found")
    add(name="shell_metachar_name", expect="NoFaceFound", stage="detect",
        what="a no-face photo named with shell syntax: $(...), backticks, ;, | and quotes",
        path=write("$(touch PWNED) `id`; rm -rf x | 'q\".png", encode(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")),
        size=(64, 64))
    markup = root / "rich[red]markup["  # with the file name below: .../rich[red]markup[/bold]x[red].png
    markup.mkdir()
    add(name="markup_in_path", expect="NoFaceFound", stage="detect",
        what="a no-face photo whose path holds console markup ([red] and an unmatched [/bold])",
        path=write(f"{markup.name}/bold]x[red].png", encode(Image.new("RGB", (64, 64), (9, 9, 9)), "PNG")),
        size=(64, 64))

    # -- unreadable files -----------------------------------------------------------------------------
    def bad(name, what, path, message=None, **kw):
        add(name=name, expect="UnreadableImage", stage="load", what=what, path=path, message=message, **kw)

    bad("zero_bytes", "empty file named .jpg", write("empty.jpg", b""), "empty file")
    bad("text_named_jpg", "a text file named .jpg", write("notes.jpg", b"this is not a photo\n" * 50), "not an image")
    bad("html_named_png", "an HTML page named .png", write("page.png", b"<!doctype html><html><body>hi</body></html>"),
        "not an image")
    bad("svg", "an SVG drawing (not a raster format)", write("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" '
        b'width="10" height="10"><circle cx="5" cy="5" r="4"/></svg>'), "not an image")
    bad("eps_not_accepted", "an EPS file: Pillow would hand it to Ghostscript; refused before that",
        write("figure.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto "
              b"stroke showpage\n%%EOF\n"), "accepted format")
    bad("ico_not_accepted", "an ICO icon of the astronaut (decodable by Pillow, not an accepted format)",
        write("astronaut.ico", encode(Image.fromarray(A), "ICO", sizes=[(256, 256)])), "accepted format")
    bad("ppm_not_accepted", "a binary PPM of the astronaut (not an accepted format)",
        write("astronaut.ppm", encode(Image.fromarray(A), "PPM")), "accepted format")
    bad("truncated_jpeg", "the JPEG cut at 60%", write("truncated.jpg", jpg_a[: len(jpg_a) * 6 // 10]), "truncated")
    bad("truncated_png", "the PNG cut at 60%", write("truncated.png", png_a[: len(png_a) * 6 // 10]))
    bad("png_header_only", "PNG signature and IHDR, nothing else", write("header_only.png", png_a[:33]))
    bad("png_bad_crc", "PNG whose IHDR checksum is wrong", write("bad_crc.png", _patch(png_a, 29, b"\0\0\0\0")))
    gif = encode(Image.fromarray(A).quantize(64), "GIF")
    bad("truncated_gif", "a GIF cut at 50%", write("truncated.gif", gif[: len(gif) // 2]))
    bad("zero_size_png", "PNG header declaring 0x0 pixels", write("zero_size.png", _raw_png(0, 0, 8, 2, b"")))
    bad("bomb_png_10gp", "PNG header declaring 100000x100000 (10 GP) in a 70-byte file",
        write("bomb_10gp.png", _raw_png(100_000, 100_000, 8, 2, b"")), "limit")
    bad("over_limit_42mp", "PNG header declaring 7000x6000 = 42 MP (over the 40 MP limit, under Pillow's guard)",
        write("over_42mp.png", _raw_png(7000, 6000, 8, 0, b"")), r"7000x6000 = 42\.0 MP, limit 40\.0 MP")
    bad("over_pillow_warning_100mp", "PNG header declaring 10000x10000 = 100 MP (Pillow's warning zone)",
        write("over_100mp.png", _raw_png(10_000, 10_000, 8, 0, b"")), "limit 40.0 MP")
    sof = jpg_a.index(b"\xff\xc0")  # baseline SOF0: length (2), precision (1), height (2), width (2)
    bad("bomb_jpeg_sof", "the JPEG with its frame header patched to 65000x65000",
        write("bomb.jpg", _patch(jpg_a, sof + 5, struct.pack(">HH", 65000, 65000))), "limit")
    bad("bomb_gif_screen", "a GIF whose logical screen is patched to 65535x65535",
        write("bomb.gif", _patch(gif, 6, struct.pack("<HH", 65535, 65535))), "limit")
    ztxt = zlib.compress(b"\0" * (64 * 2**20), 9)  # 64 MiB of text from ~64 KB
    bad("ztxt_bomb_png", "a 2x2 PNG with a zTXt chunk that inflates to 64 MiB",
        write("ztxt_bomb.png", _raw_png(2, 2, 8, 0, b"\0\0\0\0\0\0", extra=((b"zTXt", b"Comment\0\0" + ztxt),))))
    big = root / "sparse_60mib.jpg"
    with open(big, "wb") as f:  # a sparse file: 60 MiB by stat, no disk used
        f.write(jpg_a)
        f.truncate(60 * 2**20)
    bad("file_over_size_limit", "a 60 MiB (sparse) file: refused from stat, never read", big,
        r"file is 60\.0 MiB, limit 50\.0 MiB")
    folder = root / "a_folder.jpg"
    folder.mkdir()
    bad("directory", "a directory named like a photo", folder, "is a directory")
    bad("missing", "a path that does not exist", root / "no_such_photo.jpg", "no such file")
    fifo = root / "fifo.png"
    os.mkfifo(fifo)
    bad("fifo", "a named pipe (reading it would block forever)", fifo, "not a regular file")
    zero_link = root / "dev_zero.jpg"
    zero_link.symlink_to("/dev/zero")
    bad("link_to_dev_zero", "a link to /dev/zero (endless bytes)", zero_link, "not a regular file")
    dangling = root / "dangling.png"
    dangling.symlink_to(root / "nowhere.png")
    bad("dangling_symlink", "a link to a missing file", dangling, "no such file")
    loop = root / "loop_a.png"
    loop.symlink_to(root / "loop_b.png")
    (root / "loop_b.png").symlink_to(loop)
    bad("symlink_loop", "two links pointing at each other", loop, "cannot access")
    bad("name_too_long", "a 300-character file name", root / ("x" * 296 + ".png"), "cannot access")
    bad("nul_in_path", "a path string with a NUL byte", None, "NUL byte", source=str(root / "astro\0naut.png"))
    locked = write("no_permission.png", png_a)
    locked.chmod(0)
    root_user = hasattr(os, "geteuid") and os.geteuid() == 0
    bad("no_permission", "chmod 000", locked, "permission denied",
        skip="running as root: file modes do not apply" if root_user else None)

    # -- in-memory inputs to the Python API -------------------------------------------------------------
    def arr_bad(name, what, src, message=None):
        add(name=name, expect="UnreadableImage", stage="load", what=what, source=src, message=message)

    def arr_ok(name, what, src, size, faces=((fx, fy),), side=fs):
        add(name=name, expect="valid", stage="detect", what=what, source=src, size=size, faces=faces, face_side=side)

    f32 = A.astype(np.float32) / 255.0
    nan = f32.copy()
    nan[100, 100, 1] = np.nan
    arr_bad("array_nan", "float32 photo with one NaN", nan, "finite")
    inf = A.astype(np.float64) / 255.0
    inf[0, 0, 0] = np.inf
    arr_bad("array_inf", "float64 photo with one +inf", inf, "finite")
    arr_bad("array_neg_inf", "float32 all -inf", np.full((8, 8, 3), -np.inf, np.float32), "finite")
    arr_bad("array_float_0_255", "float photo in 0..255 instead of 0..1", A.astype(np.float32),
            r"\[0, 1\], got \[0, 255\]")
    arr_bad("array_int32", "int32 pixels", A.astype(np.int32), "dtype int32 not supported")
    arr_bad("array_int8", "int8 pixels", (A // 2).astype(np.int8), "dtype int8 not supported")
    arr_bad("array_bool", "boolean mask", A[..., 0] > 128, "dtype bool not supported")
    arr_bad("array_complex", "complex64 pixels", A.astype(np.complex64), "dtype complex64 not supported")
    arr_bad("array_object", "object array", np.array([[object()] * 4] * 4, dtype=object), "dtype object")
    arr_bad("array_str", "array of strings", np.full((4, 4), "px"), "not supported")
    arr_bad("array_two_channels", "[H, W, 2]", np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\)")
    arr_bad("array_batch", "[1, H, W, 3] batch", A[None], r"shape \(1, 512, 512, 3\)")
    arr_bad("array_chw", "[3, H, W] channels first", np.ascontiguousarray(A.transpose(2, 0, 1)),
            r"shape \(3, 512, 512\)")
    arr_bad("array_0d", "a 0-d array", np.array(7, np.uint8), r"shape \(\)")
    arr_bad("array_empty", "[0, 0, 3]", np.zeros((0, 0, 3), np.uint8), "no pixels")
    arr_bad("array_broadcast_10gp", "100000x100000x3 zero-stride view (10 GP, no memory behind it)",
            np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (100_000, 100_000, 3)), "limit 40.0 MP")
    arr_bad("list_of_lists", "a nested Python list, not an array", A[:4, :4].tolist(), "got list")
    arr_bad("pil_image", "a PIL image object", Image.fromarray(A), "got Image")
    arr_bad("none", "None", None, "got NoneType")
    arr_ok("array_uint8", "the photo as a uint8 array", A, (512, 512))
    arr_ok("array_float16", "float16 in [0, 1]", (A / 255.0).astype(np.float16), (512, 512))
    arr_ok("array_uint16_big_endian", "big-endian uint16 ('>u2')", (A.astype(">u2") * 257), (512, 512))
    arr_ok("array_fortran_order", "Fortran-ordered copy", np.asfortranarray(A), (512, 512))
    arr_ok("array_negative_strides", "mirrored view A[:, ::-1] (negative strides)", A[:, ::-1], (512, 512),
           faces=((511 - fx, fy),))
    arr_ok("array_rgba", "RGBA uint8 with a transparent border", np.dstack([A, alpha]), (512, 512))
    arr_ok("array_grey_hw1", "[H, W, 1] grey", grey[..., None], (512, 512))
    arr_bad("array_nan_grey", "float64 grey with NaN everywhere", np.full((64, 64), np.nan), "finite")
    return cases


def main(argv: list[str] | None = None) -> int:
    """Write the corpus and ``manifest.json`` into a folder; print one line per case."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write the corpus into (created)")
    args = ap.parse_args(argv)
    cases = make_corpus(args.out)
    manifest = [c.to_json() for c in cases]
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for c in cases:
        print(f"{c.name:32s} {c.expect:16s} {c.what}")
    print(f"{len(cases)} cases in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

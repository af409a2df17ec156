"""Photo intake: every pixel mode, EXIF orientation, limits and unreadable inputs."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLE
from avatarsdk.errors import InputError, PhotoError, UnreadableImage
from avatarsdk.photo import load_photo

from _scripts import load_script

# Any warning (Pillow's included) that escapes load_photo fails the test.
pytestmark = pytest.mark.filterwarnings("error")


encode = load_script("make_bad_inputs").encode  # image -> file bytes
png_chunk = load_script("make_bad_inputs").png_chunk  # (kind, data) -> a PNG chunk with its CRC


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand (for headers Pillow would not write: huge sizes, 48-bit RGB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(rows or b"")) + png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------

def test_astronaut_from_path_str_and_pathlike():
    data = EXAMPLE.read_bytes()
    a = load_photo(str(EXAMPLE))
    b = load_photo(EXAMPLE)
    assert a.image.shape == (512, 512, 3) and a.image.dtype == np.uint8
    assert a.image.flags.c_contiguous and not a.image.flags.writeable
    assert a.size == (512, 512)
    assert a.source == str(EXAMPLE)
    assert a.sha256 == b.sha256 == hashlib.sha256(data).hexdigest()
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.image, np.asarray(Image.open(EXAMPLE).convert("RGB")))


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_inputs(wrap):
    data = EXAMPLE.read_bytes()
    p = load_photo(wrap(data))
    assert p.source == "<bytes>" and p.sha256 == hashlib.sha256(data).hexdigest()
    np.testing.assert_array_equal(p.image, load_photo(EXAMPLE).image)


def test_unsupported_source_type():
    with pytest.raises(UnreadableImage, match="expected a path, encoded bytes or a numpy array, got int"):
        load_photo(42)


# ---------------------------------------------------------------------------
# Pixel modes
# ---------------------------------------------------------------------------

def test_grey_L_and_bilevel():
    g = np.array([[0, 100], [200, 255]], np.uint8)
    p = load_photo(encode(Image.fromarray(g, "L"), "PNG"))
    np.testing.assert_array_equal(p.image, np.repeat(g[..., None], 3, 2))
    b = load_photo(encode(Image.fromarray(g > 128), "PNG"))  # mode "1"
    np.testing.assert_array_equal(b.image[..., 0], np.where(g > 128, 255, 0))


def test_LA_composited_on_white():
    la = np.array([[[50, 255], [50, 0]], [[50, 128], [200, 255]]], np.uint8)
    p = load_photo(encode(Image.fromarray(la, "LA"), "PNG"))
    v, a = la[..., 0].astype(float), la[..., 1] / 255
    expect = np.rint(v * a + 255 * (1 - a))
    np.testing.assert_array_equal(p.image[..., 0], expect)
    assert (p.image[0, 1] == 255).all()  # fully transparent -> white


def test_RGBA_composite_and_background_option():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 255, 0, 0)  # transparent
    rgba[1, 0] = (0, 0, 255, 128)  # half blue
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    p = load_photo(data)
    assert tuple(p.image[0, 0]) == (255, 0, 0)
    assert tuple(p.image[0, 1]) == (255, 255, 255)
    assert tuple(p.image[1, 0]) == (127, 127, 255)
    q = load_photo(data, background=(128, 128, 128))
    assert tuple(q.image[0, 1]) == (128, 128, 128)
    with pytest.raises(InputError, match="background"):
        load_photo(data, background=(0, 0, 300))


def test_palette_with_transparency():
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    p = load_photo(encode(im, "PNG", transparency=1))  # index 1 transparent
    assert tuple(p.image[0, 0]) == (255, 0, 0)
    assert tuple(p.image[0, 1]) == (255, 255, 255)
    assert tuple(p.image[1, 0]) == (0, 0, 255)
    gif = load_photo(encode(im, "GIF", transparency=1))
    np.testing.assert_array_equal(gif.image, p.image)


def test_cmyk_jpeg():
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8, :, 0] = 255  # cyan
    cmyk[8:, :, 2] = 255  # yellow
    p = load_photo(encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100))
    assert p.image.shape == (16, 16, 3)
    np.testing.assert_allclose(p.image[2, 2], (0, 255, 255), atol=6)
    np.testing.assert_allclose(p.image[13, 13], (255, 255, 0), atol=6)


def test_16bit_grey_png():
    v = np.array([[0, 257 * 100], [65535, 257 * 37 + 200]], np.uint16)
    im = Image.fromarray(v)
    assert im.mode == "I;16"
    p = load_photo(encode(im, "PNG"))
    np.testing.assert_array_equal(p.image[..., 0], [[0, 100], [255, 38]])  # / 257, rounded


def test_48bit_rgb_png():
    px = np.array([[[65535, 257 * 128, 0], [0x1234, 0xFEDC, 0x00FF]]], ">u2")  # one row, two pixels
    rows = b"\x00" + px.tobytes()  # filter type 0
    p = load_photo(raw_png(2, 1, 16, 2, rows))
    np.testing.assert_array_equal(p.image[0], [[255, 128, 0], [0x12, 0xFE, 0x00]])  # top 8 bits


def test_I_and_F_tiff():
    i32 = np.array([[0, 257 * 10], [70000, -5]], np.int32)
    p = load_photo(encode(Image.fromarray(i32, "I"), "TIFF"))
    np.testing.assert_array_equal(p.image[..., 0], [[0, 10], [255, 0]])
    f = np.array([[0.0, 0.5], [1.0, 2.0]], np.float32)
    q = load_photo(encode(Image.fromarray(f, "F"), "TIFF"))
    np.testing.assert_array_equal(q.image[..., 0], [[0, 128], [255, 255]])


def test_animated_gif_and_png_give_first_frame():
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    for fmt in ("GIF", "PNG", "WEBP"):
        kw = {"lossless": True} if fmt == "WEBP" else {}
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
        assert Image.open(io.BytesIO(data)).n_frames == 3, fmt
        p = load_photo(data)
        np.testing.assert_allclose(p.image[1, 1], (255, 0, 0), atol=2, err_msg=fmt)


# Display = what a viewer shows for stored pixels S with that EXIF orientation
# (TIFF/EXIF spec: 6 = rotate 90 degrees clockwise to view, 8 = counter-clockwise).
ORIENT = {
    1: lambda s: s,
    2: lambda s: s[:, ::-1],
    3: lambda s: s[::-1, ::-1],
    4: lambda s: s[::-1],
    5: lambda s: s.transpose(1, 0, 2),
    6: lambda s: np.rot90(s, -1),
    7: lambda s: s[::-1, ::-1].transpose(1, 0, 2),
    8: lambda s: np.rot90(s, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(orientation):
    stored = (np.arange(3 * 5 * 3).reshape(3, 5, 3) * 5).astype(np.uint8)  # 5 wide, 3 tall, all distinct
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = load_photo(encode(Image.fromarray(stored), "PNG", exif=exif))
    np.testing.assert_array_equal(p.image, ORIENT[orientation](stored))


def test_exif_orientation_jpeg():
    # A coarse asymmetric pattern survives JPEG: a bright block top-left.
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:16, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    p = load_photo(encode(Image.fromarray(stored), "JPEG", exif=exif, quality=95))
    assert p.image.shape == (48, 32, 3)
    assert p.image[:16, 16:].mean() > 240 and p.image[32:, :16].mean() < 15  # now top-right


def test_bad_icc_profile_is_ignored():
    im = Image.new("RGB", (4, 4), (10, 20, 30))
    p = load_photo(encode(im, "PNG", icc_profile=b"not a profile at all" * 8))
    assert tuple(p.image[0, 0]) == (10, 20, 30)


# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------

def test_pixel_limit_from_header_without_decoding():
    bomb = raw_png(8000, 6000, 8, 2, None)  # header says 48 MP; no pixel data at all
    with pytest.raises(UnreadableImage, match=r"8000x6000 = 48\.0 MP, limit 40\.0 MP"):
        load_photo(bomb)
    with pytest.raises(UnreadableImage, match=r"4x4 = 16 px, limit 15 px"):
        load_photo(encode(Image.new("RGB", (4, 4)), "PNG"), max_pixels=15)


def test_pillow_decompression_bomb_is_unreadable():
    bomb = raw_png(20000, 30000, 8, 2, None)  # 600 MP: Pillow's own guard fires inside open()
    with pytest.raises(UnreadableImage, match=r"600\.0 MP, limit 40\.0 MP"):
        load_photo(bomb)


def test_file_size_limit(tmp_path):
    f = tmp_path / "big.png"
    data = EXAMPLE.read_bytes()
    f.write_bytes(data)
    with pytest.raises(UnreadableImage, match=r"big\.png: file is .* limit 1000 bytes"):
        load_photo(f, max_bytes=1000)
    with pytest.raises(UnreadableImage, match=r"<bytes>: .* limit 1000 bytes"):
        load_photo(data, max_bytes=1000)


def test_array_pixel_limit():
    with pytest.raises(UnreadableImage, match=r"20x10 = 200 px, limit 100 px"):
        load_photo(np.zeros((10, 20, 3), np.uint8), max_pixels=100)


# ---------------------------------------------------------------------------
# Unreadable inputs
# ---------------------------------------------------------------------------

def test_truncated_jpeg(tmp_path):
    data = encode(Image.open(EXAMPLE), "JPEG")
    f = tmp_path / "cut.jpg"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match=r"cut\.jpg: file is truncated"):
        load_photo(f)


def test_truncated_png_header():
    data = EXAMPLE.read_bytes()[:20]
    with pytest.raises(UnreadableImage, match="<bytes>"):
        load_photo(data)


def test_zero_bytes(tmp_path):
    f = tmp_path / "empty.jpg"
    f.write_bytes(b"")
    with pytest.raises(UnreadableImage, match=r"empty\.jpg: empty file"):
        load_photo(f)
    with pytest.raises(UnreadableImage, match="empty file"):
        load_photo(b"")


def test_text_file_named_jpg(tmp_path):
    f = tmp_path / "notes.jpg"
    f.write_text("this is not a photo\n" * 10)
    with pytest.raises(UnreadableImage, match=r"notes\.jpg: not an image"):
        load_photo(f)


def test_directory_and_missing(tmp_path):
    with pytest.raises(UnreadableImage, match="is a directory"):
        load_photo(tmp_path)
    with pytest.raises(UnreadableImage, match=r"nope\.png: no such file"):
        load_photo(tmp_path / "nope.png")


def test_not_a_regular_file():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(UnreadableImage, match="not a regular file"):
        load_photo("/dev/zero")


def test_permission_denied_simulated(tmp_path, monkeypatch):
    """Root ignores file modes, so simulate the failure at open()."""
    f = tmp_path / "secret.png"
    f.write_bytes(EXAMPLE.read_bytes())

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("avatarsdk.photo.open", denied, raising=False)
    with pytest.raises(UnreadableImage, match=r"secret\.png: permission denied"):
        load_photo(f)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file modes")
def test_permission_denied_real(tmp_path):
    f = tmp_path / "secret.png"
    f.write_bytes(EXAMPLE.read_bytes())
    f.chmod(0)
    with pytest.raises(UnreadableImage, match="permission denied"):
        load_photo(f)


def test_errors_are_photo_errors():
    assert issubclass(UnreadableImage, PhotoError)


# ---------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------

def test_array_uint8_shapes():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    p = load_photo(rgb)
    np.testing.assert_array_equal(p.image, rgb)
    assert p.source == "<array>" and p.sha256 == hashlib.sha256(rgb.tobytes()).hexdigest()
    assert p.image is not rgb and not p.image.flags.writeable
    g = rgb[..., 0]
    np.testing.assert_array_equal(load_photo(g).image, np.repeat(g[..., None], 3, 2))
    np.testing.assert_array_equal(load_photo(g[..., None]).image, np.repeat(g[..., None], 3, 2))
    np.testing.assert_array_equal(load_photo(rgb[:, ::2]).image, rgb[:, ::2])  # non-contiguous view


def test_array_rgba_uint16_float():
    rgba = np.array([[[255, 0, 0, 0], [0, 0, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(load_photo(rgba).image, [[[255, 255, 255], [0, 0, 255]]])
    u16 = np.array([[0, 257 * 9, 65535]], np.uint16)
    np.testing.assert_array_equal(load_photo(u16).image[0, :, 0], [0, 9, 255])
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(load_photo(f).image[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize(
    "arr, msg",
    [
        (np.zeros((4, 4), np.int64), "dtype int64 not supported"),
        (np.zeros((4, 4, 2), np.uint8), r"got shape \(4, 4, 2\)"),
        (np.zeros((4,), np.uint8), r"got shape \(4,\)"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.full((2, 2), 1.5), r"\[0, 1\], got \[1.5, 1.5\]"),
        (np.full((2, 2), np.nan), "finite"),
    ],
)
def test_array_errors(arr, msg):
    with pytest.raises(UnreadableImage, match=msg):
        load_photo(arr)

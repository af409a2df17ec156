"""Property tests of the photo intake (hypothesis): whatever the input, a valid Photo or an AvatarError.

The property and its checker are ``scripts/fuzz_intake.py``'s ``check``: only
AvatarError subclasses escape ``load_photo`` (or it returns a Photo with an
[H, W, 3] uint8 C-contiguous image within the pixel limit), no Python warning
escapes, and each call takes under ``LIMIT_S``. 300 examples in all here;
``python scripts/fuzz_intake.py -n 10000`` runs the long version.
"""

from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from avatarsdk.errors import UnreadableImage
from avatarsdk.photo import load_photo

from _scripts import load_script

LIMIT_S = 2.0


fz = load_script("fuzz_intake")
SEEDS = fz.seed_encodings()

FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _assert_property(value) -> None:
    out = fz.check(value, limit=LIMIT_S)
    assert out.ok, out.error


# ---------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------

_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.integers(0, 2**20)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 64)),
    st.tuples(st.just("int"), st.integers(0, 63), st.sampled_from(fz.INTERESTING), st.sampled_from([">H", "<H", ">I", "<I"])),
)


def _apply(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        n = len(b)
        if op[0] == "flip" and n:
            b[op[1] % n] ^= 1 << op[2]
        elif op[0] == "overwrite" and n:
            i = op[1] % n
            b[i : i + len(op[2])] = op[2]
        elif op[0] == "truncate":
            b = b[: op[1] % (n + 1)]
        elif op[0] == "insert":
            i = op[1] % (n + 1)
            b[i:i] = op[2]
        elif op[0] == "delete" and n:
            i = op[1] % n
            del b[i : i + op[2]]
        elif op[0] == "int" and n >= 4:
            v = op[2] & (0xFFFF if "H" in op[3] else 0xFFFFFFFF)
            i = op[1] % (n - 3)
            b[i : i + struct.calcsize(op[3])] = struct.pack(op[3], v)
    return bytes(b)


@st.composite
def mutated_files(draw) -> bytes:
    seed = draw(st.sampled_from(sorted(SEEDS)))
    data = _apply(SEEDS[seed], draw(st.lists(_MUTATION, min_size=1, max_size=4)))
    return fz._fix_png_crcs(data) if draw(st.booleans()) else data


_DTYPES = ["u1", "u2", ">u2", "u4", "i1", "i2", "i4", "i8", "f2", "f4", ">f4", "f8", "?", "c8"]


@st.composite
def arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    if draw(st.booleans()):  # image-like: [H, W] or [H, W, 1|3|4]
        shape = st.tuples(st.integers(0, 12), st.integers(0, 12)) | st.tuples(
            st.integers(0, 12), st.integers(0, 12), st.sampled_from([1, 3, 4]))
    else:
        shape = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)
    elements = None
    if dtype.kind == "f" and draw(st.booleans()):  # valid floats, so the [0, 1] path runs as well
        elements = st.floats(0.0, 1.0, width=min(64, dtype.itemsize * 8))
    arr = draw(hnp.arrays(dtype, draw(shape), elements=elements))
    if arr.ndim >= 2 and draw(st.booleans()):
        arr = arr[:, ::-1]
    return arr


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

@FUZZ
@given(st.binary(max_size=2048) | st.tuples(st.sampled_from(sorted(SEEDS)), st.binary(max_size=512)).map(
    lambda t: SEEDS[t[0]][:16] + t[1]))
def test_random_bytes(data):
    _assert_property(data)


@FUZZ
@given(mutated_files())
def test_mutated_files(data):
    _assert_property(data)


@FUZZ
@given(arrays())
def test_random_arrays(arr):
    _assert_property(arr)


def test_seeds_are_valid_photos():
    """The mutation seeds themselves load (so the mutations start from real files)."""
    assert len(SEEDS) >= 20
    for name, data in SEEDS.items():
        p = load_photo(data)
        assert p.image.shape == (32, 32, 3), name


def test_the_checker_catches_violations():
    """check() must flag an untyped exception, a wrong result and a slow call (so the tests above can fail)."""
    assert not fz.check(np.zeros((4, 4, 3), np.uint8), limit=0.0).ok  # too slow for a zero limit
    assert fz.check(b"junk").ok and fz.check(b"junk").result == "UnreadableImage"

    class Weird(np.ndarray):
        @property
        def ndim(self):  # an array subclass that breaks load_photo's shape logic
            raise RuntimeError("boom")

    out = fz.check(np.zeros((4, 4, 3), np.uint8).view(Weird))
    assert not out.ok and "untyped RuntimeError" in out.error


# ---------------------------------------------------------------------------
# Regressions found by the fuzzer
# ---------------------------------------------------------------------------

@pytest.mark.filterwarnings("error")
def test_long_double_beyond_float64_is_refused_without_a_warning():
    big = np.full((2, 2), np.longdouble("1e4000") if np.finfo(np.longdouble).max > 1e4000 else np.inf,
                  dtype=np.longdouble)
    with pytest.raises(UnreadableImage, match="finite"):
        load_photo(big)


def test_near_limit_arrays_convert_in_bounded_memory():
    """A 40 MP RGBA uint8 view: before the conversion ran in row blocks it peaked at ~3.6 GB (float64 copies)."""
    view = np.broadcast_to(np.array([200, 100, 50, 128], np.uint8), (6000, 6600, 4))
    tracemalloc.start()
    try:
        p = load_photo(view)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = p.image.nbytes  # 119 MB
    a = 128 / 255
    expect = tuple(int(np.rint(v * a + 255 * (1 - a))) for v in (200, 100, 50))
    assert p.image.shape == (6000, 6600, 3) and tuple(p.image[123, 456]) == expect
    assert peak < result + 250 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {result / 2**20:.0f} MiB result"


def test_seeded_fuzz_run():
    """2000 inputs of the script's own generator (seed 0): the same run as `fuzz_intake.py -n 2000`."""
    rng = np.random.default_rng(0)
    failures = []
    for i in range(2000):
        kind, value = fz.random_input(rng, SEEDS)
        out = fz.check(value, limit=LIMIT_S)
        if not out.ok:
            failures.append(f"#{i} {kind}: {out.error}")
    assert not failures, "\n".join(failures[:10])

"""Identity embedding: dlib's face-recognition ResNet in plain PyTorch (the paper's FaceNet role).

The weights are dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (CC0) from
the PyPI package ``face_recognition_models==0.3.0``, found and checksummed by
:mod:`avatarsdk.pretrained`. The file is read by :func:`read_dat`, a parser of
dlib's own serialization (no dlib, no pickle), and the network is rebuilt from
what the file says (layer kinds, filter shapes, strides, paddings). It is
dlib's ``anet_type`` from ``dnn_face_recognition_ex.cpp``::

    chip [3, 150, 150] --(p - mean) / 256--> con 7x7/2 (32) -> affine -> relu -> max_pool 3x3/2
      -> 3 x res(32) -> res_down(64) + 3 x res(64) -> res_down(128) + 2 x res(128)
      -> res_down(256) + 2 x res(256) -> res_down(256) -> mean over space -> fc 256->128 (no bias)

    res(x)      = relu(x + affine(con3x3/1(relu(affine(con3x3/1(x))))))
    res_down(x) = relu(avg_pool2x2/2(x) (+) affine(con3x3/1(relu(affine(con3x3/2(x))))))

29 conv, 29 affine (batch norm folded into a per-channel scale and shift),
1 fc: 5,614,592 floats. dlib's details, all reproduced here:

* strided convolutions and pools have padding 0 (dlib's default padding is
  ``kernel // 2`` only for stride 1), so 150 -> 72 -> 35 -> 17 -> 8 -> 3|4 -> 1|2;
* ``(+)`` is dlib's ``add_prev``: when the two tensors differ in channels or
  size, each is zero-padded at the end (channels, bottom rows, right columns)
  to the larger shape before adding. So the 128 -> 256 block adds a 3x3 conv
  branch to a 4x4 pooled shortcut and its output is 4x4;
* input: ``(pixel - mean) / 256`` with pixel in 0..255 and mean = (122.782,
  117.001, 104.298) for R, G, B (read from the file).

The descriptor is the fc output as dlib returns it: NOT L2-normalised (norms
measured 1.27-1.46 on faces); same person when the Euclidean distance is below
0.6, dlib's threshold (also stored in the file). Checked against dlib 20.0.1
(``dlib-bin``, used only for that check): descriptors of the same chip agree to
3e-7; chips cut by :func:`face_chip` from dlib's 5 points agree to within one
grey level and give descriptors 1e-4 apart (pyramid levels included). From
mediapipe's points instead of dlib's 5-point predictor, descriptors moved by
0.08-0.10 on the astronaut, its mirror and three synthetic heads.

Face chips: dlib embeds a 150x150 chip aligned by a similarity transform from
its 5-point landmarks (each eye's two corners and the base of the nose) to a
fixed template with padding 0.25 (``get_face_chip_details(det, 150, 0.25)``).
:func:`face_chip` reproduces that warp with ``grid_sample`` (differentiable in
the image), :data:`MEDIAPIPE_POINTS5` picks the corresponding mediapipe
face-mesh points.

Typical use::

    enc = IdentityEncoder.load()                       # frozen, eval mode
    chip = chip_from_landmarks(photo.image, landmarks)   # [3, 150, 150] in [0, 1]
    e = enc(chip[None])                                 # [1, 128]
    e = embed_photo(photo, landmarks)                   # np.ndarray [128]
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avatarsdk import pretrained
from avatarsdk.errors import InputError, WeightsError
from avatarsdk.datatypes import FACE_MESH_POINTS

__all__ = [
    "CHIP_PADDING",
    "CHIP_SIZE",
    "EMBEDDING_DIM",
    "MEDIAPIPE_POINTS5",
    "SAME_PERSON_DISTANCE",
    "TEMPLATE5",
    "DlibLayer",
    "DlibNet",
    "IdentityEncoder",
    "chip_from_landmarks",
    "chip_transform",
    "embed_photo",
    "face_chip",
    "identity_distance",
    "identity_loss",
    "points5_from_landmarks",
    "read_dat",
]

WEIGHTS_NAME = "dlib_resnet"
"""Key of the weight file in :data:`avatarsdk.pretrained.REGISTRY`."""

CHIP_SIZE = 150
"""Side of the aligned face chip in pixels (dlib's ``input_rgb_image_sized<150>``)."""

CHIP_PADDING = 0.25
"""Border around the 5-point template, as a fraction of its size (dlib's face-recognition example)."""

EMBEDDING_DIM = 128

SAME_PERSON_DISTANCE = 0.6
"""dlib's threshold: two descriptors closer than this (Euclidean) are taken as one person."""

TEMPLATE5: tuple[tuple[float, float], ...] = (
    (0.8595674595992, 0.2134981538014),  # subject's left eye, outer corner (image right)
    (0.6460604764104, 0.2289674387677),  # subject's left eye, inner corner
    (0.1205750620789, 0.2137274526848),  # subject's right eye, outer corner (image left)
    (0.3340850613712, 0.2290642403242),  # subject's right eye, inner corner
    (0.4901123135679, 0.6277975316475),  # base of the nose (subnasale)
)
"""dlib's 5-point face template on the unit square, x right, y down (``get_face_chip_details``)."""

MEDIAPIPE_POINTS5: tuple[int, ...] = (263, 362, 33, 133, 2)
"""Mediapipe face-mesh indices of the :data:`TEMPLATE5` points, in its order."""


# ---------------------------------------------------------------------------
# dlib .dat parser
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class DlibLayer:
    """One computational layer of a dlib network, as serialized.

    Attributes:
        kind: "con", "affine", "relu", "max_pool", "avg_pool", "add_prev" or "fc".
        params: float32 flat parameters (empty for layers without any). con:
            filters [N, K, kh, kw] then biases [N]; affine: gamma [C] then beta [C];
            fc: weights [in, out] (row-major) then, with a bias, biases [out].
        shape: con: (N, K, kh, kw); affine: (C,); fc: (in, out); pools: window
            (kh, kw), (0, 0) meaning the whole input; others: ().
        stride: (sy, sx) for con and pools, else ().
        padding: (py, px) for con and pools, else ().
        bias: con and fc: whether the layer adds a bias.
        offset: byte offset of the layer's record in the file.
    """

    kind: str
    params: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    shape: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    bias: bool = False
    offset: int = 0


@dataclass(frozen=True, eq=False)
class DlibNet:
    """A parsed dlib metric-learning network (``loss_metric`` over an RGB input).

    Attributes:
        layers: computational layers from the input to the output.
        input_mean: (R, G, B) mean subtracted from 0..255 pixels.
        input_size: (rows, cols) the input layer requires.
        margin: the loss's margin (training only).
        distance_threshold: the loss's same-identity distance threshold.
        num_wrappers: how many layer wrappers (add_layer, tags, skips) the file nests.
    """

    layers: tuple[DlibLayer, ...]
    input_mean: tuple[float, float, float]
    input_size: tuple[int, int]
    margin: float
    distance_threshold: float
    num_wrappers: int

    @property
    def num_floats(self) -> int:
        """Total number of parameters."""
        return int(sum(layer.params.size for layer in self.layers))

    def count(self, kind: str) -> int:
        """Number of layers of one kind."""
        return sum(layer.kind == kind for layer in self.layers)


class _Reader:
    """Sequential reader of dlib's serialization primitives."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def fail(self, what: str, at: int | None = None) -> WeightsError:
        at = self.pos if at is None else at
        return WeightsError(f"{self.source}: not a dlib face-recognition network file ({what} at byte {at} "
                            f"of {len(self.data)}); reinstall it with `pip install face_recognition_models==0.3.0`")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"truncated: {n} bytes wanted")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        # One control byte: low nibble = number of little-endian magnitude bytes, bit 7 = negative.
        start = self.pos
        ctrl = self.take(1)[0]
        n = ctrl & 0x0F
        if n > 8 or ctrl & 0x70:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}", start)
        value = int.from_bytes(self.take(n), "little")
        return -value if ctrl & 0x80 else value

    def str(self, max_len: int = 256) -> str:
        start = self.pos
        n = self.int()
        if not 0 <= n <= max_len:
            raise self.fail(f"string of length {n}", start)
        return self.take(n).decode("latin-1")

    def float(self) -> float:
        # dlib's float_details: integer mantissa m and exponent e, value m * 2**e.
        start = self.pos
        m, e = self.int(), self.int()
        if abs(e) > 2000:  # dlib marks inf/nan with exponents >= 32000
            raise self.fail(f"non-finite float (exponent {e})", start)
        return math.ldexp(m, e)

    def bool(self) -> bool:
        c = self.take(1)
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool {c!r}", self.pos - 1)
        return c == b"1"

    def tensor(self) -> np.ndarray:
        # version 2, dims (num_samples, k, nr, nc), then raw little-endian float32.
        start = self.pos
        if self.int() != 2:
            raise self.fail("unknown tensor version", start)
        dims = [self.int() for _ in range(4)]
        n = int(np.prod(dims, dtype=np.int64))
        if min(dims) < 0 or 4 * n > len(self.data) - self.pos:
            raise self.fail(f"tensor of shape {dims} past the end of the file", start)
        out = np.frombuffer(self.take(4 * n), dtype="<f4").astype(np.float32)
        if not np.isfinite(out).all():
            raise self.fail("non-finite weights", start)
        return out

    def alias(self) -> tuple[int, int, int, int]:
        start = self.pos
        if self.int() != 1:
            raise self.fail("unknown alias_tensor version", start)
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


def _read_layer(r: _Reader, name: str, offset: int) -> DlibLayer:
    """Parse one layer's details after its name string."""
    if name == "con_4":
        params = r.tensor()
        n, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
        filt, bias = r.alias(), r.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        shape = (filt[0], filt[1], filt[2], filt[3])
        if shape[0] != n or shape[2:] != (kh, kw) or params.size != int(np.prod(shape)) + bias[1]:
            raise r.fail(f"con layer with filters {shape}, biases {bias} and {params.size} floats", offset)
        return DlibLayer("con", params, shape, (sy, sx), (py, px), bias[1] > 0, offset)
    if name in ("affine_", "affine_2"):
        params = r.tensor()
        gamma, beta = r.alias(), r.alias()
        mode = r.int()
        if mode != 0 or gamma != beta or params.size != 2 * gamma[1]:
            raise r.fail(f"affine layer (mode {mode}, gamma {gamma}, {params.size} floats)", offset)
        return DlibLayer("affine", params, (gamma[1],), offset=offset)
    if name in ("max_pool_2", "avg_pool_2"):
        kh, kw, sy, sx, py, px = (r.int() for _ in range(6))
        return DlibLayer(name[:-2], shape=(kh, kw), stride=(sy, sx), padding=(py, px), offset=offset)
    if name in ("relu_", "add_prev_"):
        return DlibLayer(name[:-1], offset=offset)
    if name == "fc_2":
        n_out, n_in = r.int(), r.int()
        params = r.tensor()
        weights, _biases = r.alias(), r.alias()
        bias_mode = r.int()  # 0: has bias, 1: no bias
        for _ in range(4):
            r.float()
        has_bias = bias_mode == 0
        if weights[:2] != (n_in, n_out) or params.size != n_in * n_out + (n_out if has_bias else 0):
            raise r.fail(f"fc layer {n_in}->{n_out} with {params.size} floats", offset)
        return DlibLayer("fc", params, (n_in, n_out), bias=has_bias, offset=offset)
    raise r.fail(f"unsupported layer {name!r}", offset)


def read_dat(src: str | os.PathLike | bytes) -> DlibNet:
    """Parse a dlib ``loss_metric`` network file (e.g. ``dlib_face_recognition_resnet_model_v1.dat``).

    dlib's format, as far as this network uses it: integers are one control
    byte (low nibble = byte count, bit 7 = sign) then little-endian magnitude
    bytes; strings are a length then bytes; floats are an integer mantissa and
    exponent; bools are the characters ``'0'``/``'1'``; tensors are a version
    (2), four dims, then raw little-endian float32. The file nests the network
    as the loss layer, then every wrapper's version (outermost first), then the
    input layer, then each layer's details (input to output) followed by its
    wrapper's state (three bools and three empty tensors).

    Args:
        src: path of the file, or its bytes.

    Returns:
        The :class:`DlibNet`.

    Raises:
        WeightsError: unreadable, truncated or not a network of this kind.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, source = bytes(src), "<bytes>"
    else:
        source = os.fspath(src)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise WeightsError(f"cannot read weights {source}: {exc}") from exc
    r = _Reader(data, source)
    r.int()  # loss wrapper version
    if r.str() != "loss_metric_2":
        raise r.fail("no loss_metric_2 header", 0)
    margin, threshold = r.float(), r.float()
    wrappers = 0
    while True:  # wrapper versions (1, 2 or 3) until the input layer's name
        start = r.pos
        if r.data[start:start + 1] == b"\x01" and r.data[start + 1:start + 2] not in (b"\x01", b"\x02", b"\x03"):
            break
        if r.int() not in (1, 2, 3) or wrappers > 10_000:
            raise r.fail("bad layer wrapper version", start)
        wrappers += 1
    if r.str() != "input_rgb_image_sized":
        raise r.fail("no input_rgb_image_sized layer")
    mean = (r.float(), r.float(), r.float())
    size = (r.int(), r.int())
    layers: list[DlibLayer] = []
    while r.pos < len(data):
        offset = r.pos
        name = r.str(64)
        layers.append(_read_layer(r, name, offset))
        for _ in range(3):  # wrapper state: setup called, gradient stale, output disabled
            r.bool()
        for _ in range(3):  # x_grad, cached_output, params_grad (empty in a saved net)
            r.tensor()
        if len(layers) == 1:
            r.int()  # the innermost wrapper's sample expansion factor
    if not layers:
        raise r.fail("no layers")
    return DlibNet(layers=tuple(layers), input_mean=mean, input_size=size, margin=margin,
                   distance_threshold=threshold, num_wrappers=wrappers)


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------

class _Affine(nn.Module):
    """dlib ``affine_`` in conv mode: y = weight[c] * x + bias[c] (a folded batch norm)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


def _add_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib ``add_prev``: a + b, each zero-padded at the end of C, H and W to the larger shape."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _Block(nn.Module):
    """Residual block: relu(shortcut(x) (+) affine(conv(relu(affine(conv(x))))))."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, pool: tuple[int, int] | None) -> None:
        super().__init__()
        self.conv1 = conv1
        self.aff1 = _Affine(conv1.out_channels)
        self.conv2 = conv2
        self.aff2 = _Affine(conv2.out_channels)
        self.pool = pool  # (window, stride) of the shortcut's average pool, or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.aff1(self.conv1(x)))
        y = self.aff2(self.conv2(y))
        s = x if self.pool is None else F.avg_pool2d(x, self.pool[0], self.pool[1])
        return F.relu(_add_padded(y, s))


def _conv(layer: DlibLayer) -> nn.Conv2d:
    n, k, kh, kw = layer.shape
    conv = nn.Conv2d(k, n, (kh, kw), stride=layer.stride, padding=layer.padding, bias=layer.bias)
    w = torch.from_numpy(layer.params[: n * k * kh * kw].reshape(n, k, kh, kw).copy())
    with torch.no_grad():
        conv.weight.copy_(w)
        if layer.bias:
            conv.bias.copy_(torch.from_numpy(layer.params[n * k * kh * kw:].copy()))
    return conv


def _set_affine(aff: _Affine, layer: DlibLayer) -> None:
    c = layer.shape[0]
    if aff.weight.numel() != c:
        raise WeightsError(f"affine layer at byte {layer.offset} has {c} channels, its conv {aff.weight.numel()}")
    with torch.no_grad():
        aff.weight.copy_(torch.from_numpy(layer.params[:c].copy()))
        aff.bias.copy_(torch.from_numpy(layer.params[c:].copy()))


class IdentityEncoder(nn.Module):
    """dlib's face-recognition ResNet: aligned chips [B, 3, 150, 150] -> descriptors [B, 128].

    Build it with :meth:`load` (the registered weight file) or :meth:`from_dat`.
    Differentiable in its input, so it also serves as an identity loss.

    Attributes:
        input_size: (rows, cols) of the chips, (150, 150).
        embedding_dim: 128.
        distance_threshold: dlib's same-person Euclidean distance, 0.6.
    """

    def __init__(self, net: DlibNet) -> None:
        super().__init__()
        self.input_size = tuple(net.input_size)
        self.distance_threshold = float(net.distance_threshold)
        self.register_buffer("mean", torch.tensor(net.input_mean, dtype=torch.float32))
        seq = list(net.layers)
        kinds = [layer.kind for layer in seq]

        def bad(i: int, expected: str) -> WeightsError:
            got = kinds[i] if i < len(kinds) else "the end of the file"
            at = seq[i].offset if i < len(seq) else -1
            return WeightsError(f"unexpected layer sequence: layer {i} is {got} (byte {at}), expected {expected}")

        def expect(i: int, *names: str) -> None:
            for j, name in enumerate(names):
                if i + j >= len(kinds) or kinds[i + j] != name:
                    raise bad(i + j, name)

        # stem: con, affine, relu, max_pool
        expect(0, "con", "affine", "relu", "max_pool")
        self.stem_conv = _conv(seq[0])
        self.stem_aff = _Affine(self.stem_conv.out_channels)
        _set_affine(self.stem_aff, seq[1])
        mp = seq[3]
        self.stem_pool = (mp.shape, mp.stride, mp.padding)
        channels = self.stem_conv.out_channels
        i = 4
        blocks = []
        # blocks: con, affine, relu, con, affine, [avg_pool], add_prev, relu
        while i < len(kinds) and kinds[i] == "con":
            expect(i, "con", "affine", "relu", "con", "affine")
            c1, c2 = _conv(seq[i]), _conv(seq[i + 3])
            if c1.in_channels != channels or c2.in_channels != c1.out_channels:
                raise WeightsError(f"conv at byte {seq[i].offset} takes {c1.in_channels} channels, gets {channels}")
            channels = max(channels, c2.out_channels)  # add_prev pads the narrower input
            pool = None
            j = i + 5
            if j < len(kinds) and kinds[j] == "avg_pool":
                p = seq[j]
                if p.shape[0] != p.shape[1] or p.stride[0] != p.stride[1] or any(p.padding) or p.shape[0] == 0:
                    raise WeightsError(f"unsupported shortcut pool {p.shape}/{p.stride}/{p.padding} at byte {p.offset}")
                pool = (p.shape[0], p.stride[0])
                j += 1
            expect(j, "add_prev", "relu")
            block = _Block(c1, c2, pool)
            _set_affine(block.aff1, seq[i + 1])
            _set_affine(block.aff2, seq[i + 4])
            blocks.append(block)
            i = j + 2
        self.blocks = nn.ModuleList(blocks)
        # head: global average pool, fc
        expect(i, "avg_pool", "fc")
        if seq[i].shape != (0, 0):
            raise bad(i, "avg_pool over the whole input")
        fc = seq[i + 1]
        if i + 2 != len(seq):
            raise bad(i + 2, "the end of the file")
        n_in, n_out = fc.shape
        if n_in != channels:
            raise WeightsError(f"fc layer takes {n_in} inputs, the network gives {channels}")
        self.fc = nn.Linear(n_in, n_out, bias=fc.bias)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(fc.params[: n_in * n_out].reshape(n_in, n_out).T.copy()))
            if fc.bias:
                self.fc.bias.copy_(torch.from_numpy(fc.params[n_in * n_out:].copy()))
        self.embedding_dim = n_out

    @classmethod
    def from_dat(cls, src: str | os.PathLike | bytes | DlibNet) -> IdentityEncoder:
        """Build the network from a dlib .dat file (unchecked bytes) or a parsed :class:`DlibNet`.

        Returns:
            The encoder in eval mode, parameters frozen (``requires_grad=False``).

        Raises:
            WeightsError: the file cannot be parsed or is not this architecture.
        """
        net = src if isinstance(src, DlibNet) else read_dat(src)
        return cls(net).eval().requires_grad_(False)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, sha256: str | None = "registry") -> IdentityEncoder:
        """Load the registered dlib ResNet weights (or a given file), checksummed.

        Args:
            path: a .dat file, or None for ``avatarsdk.pretrained.locate("dlib_resnet")``.
            sha256: expected hex sha256 of ``path``; ``"registry"`` (default) uses
                the registry's; None skips the check (the parser still validates
                the structure).

        Returns:
            The encoder in eval mode on the CPU, parameters frozen.

        Raises:
            WeightsError: missing file, wrong checksum, or not this network.
        """
        entry = pretrained.REGISTRY[WEIGHTS_NAME]
        if path is None:
            path = pretrained.locate(WEIGHTS_NAME)
        elif sha256 is not None:
            pretrained.verify(path, entry.sha256 if sha256 == "registry" else sha256)
        return cls.from_dat(path)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """Embed aligned face chips.

        Args:
            chips: [B, 3, 150, 150] float RGB, sRGB-encoded, in [0, 1] (dlib's 0..255
                pixels divided by 255), e.g. from :func:`face_chip`.

        Returns:
            [B, 128] descriptors as dlib computes them (not normalised; norms of
            face descriptors are about 1.3-1.5). Compare with :func:`identity_distance`.

        Raises:
            InputError: wrong shape.
        """
        if chips.ndim != 4 or chips.shape[1] != 3 or tuple(chips.shape[2:]) != self.input_size:
            raise InputError(f"chips must be [B, 3, {self.input_size[0]}, {self.input_size[1]}], "
                             f"got {list(chips.shape)}")
        mean = self.mean.to(chips.dtype)
        x = (chips * 255.0 - mean[:, None, None]) / 256.0  # dlib: (pixel - mean) / 256
        x = F.relu(self.stem_aff(self.stem_conv(x)))
        (kh, kw), stride, padding = self.stem_pool
        x = F.max_pool2d(x, (kh, kw), stride, padding)
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


@functools.lru_cache(maxsize=1)
def _default_encoder() -> IdentityEncoder:
    return IdentityEncoder.load()


# ---------------------------------------------------------------------------
# Face chips
# ---------------------------------------------------------------------------

def points5_from_landmarks(landmarks) -> np.ndarray:
    """Pick dlib's 5 alignment points from mediapipe face-mesh landmarks.

    Args:
        landmarks: an :class:`avatarsdk.datatypes.Landmarks` or a [478 (or 468), >=2] array
            of pixel coordinates (x right, y down, pixel centres at integers).

    Returns:
        [5, 2] float64 (x, y) in :data:`TEMPLATE5` order: left eye outer and inner
        corner, right eye outer and inner corner (the subject's sides), subnasale.
    """
    pts = np.asarray(getattr(landmarks, "points", landmarks), dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < FACE_MESH_POINTS or pts.shape[1] < 2:
        raise InputError(f"landmarks must be [478, 2 or 3] mediapipe points, got {pts.shape}")
    return pts[list(MEDIAPIPE_POINTS5), :2].copy()


def _similarity(src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity dst ~ s R src + t (Umeyama 1991), as dlib's find_similarity_transform.

    Args:
        src, dst: [N, 2] float64 points.

    Returns:
        scale s (scalar tensor), rotation R [2, 2], translation t [2].
    """
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs ** 2).sum(1).mean()
    cov = xd.T @ xs / src.shape[0]
    u, d, vh = torch.linalg.svd(cov)
    sign = torch.ones(2, dtype=src.dtype)
    if torch.det(u) * torch.det(vh) < 0:
        sign[1] = -1.0
    rot = u @ torch.diag(sign) @ vh
    scale = (d * sign).sum() / var_s
    return scale, rot, mu_d - scale * rot @ mu_s


def chip_transform(points5, *, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> torch.Tensor:
    """Affine map from chip pixels to image pixels, as dlib's get_face_chip_details + extract_image_chip.

    dlib fits a similarity from the padded template (in chip pixels, ``(padding +
    t) / (1 + 2 padding) * size``) to the 5 points, turns it into a rotated
    rectangle of side ``size * s`` centred on the image of the chip centre
    ``(size/2, size/2)``, then samples chip pixel (0, 0) at the rectangle's corner
    and pixel ``size - 1`` at the opposite one, ``size * s - 1`` pixels away
    (dlib rectangles count their corner pixels). So, with pixel centres at integers::

        image(u) = T(size / 2) + (size * s - 1) / (size - 1) * R (u - (size - 1) / 2)

    (checked against dlib 20.0.1's ``get_face_chip``: same pixels to within 1/255
    once rounded down to 8 bits as dlib does).

    Args:
        points5: [5, 2] image points (x, y) in :data:`TEMPLATE5` order (array or
            tensor; taken as constants, no gradient flows to them).
        size: chip side in pixels.
        padding: template padding.

    Returns:
        [2, 3] float64 matrix A with image = A[:, :2] @ u + A[:, 2] (u = chip (x, y)).
    """
    if torch.is_tensor(points5):
        dst = points5.detach().to("cpu", torch.float64)
    else:
        dst = torch.as_tensor(np.asarray(points5, dtype=np.float64))
    if dst.shape != (5, 2) or not torch.isfinite(dst).all():
        raise InputError(f"points5 must be 5 finite (x, y) points, got shape {tuple(dst.shape)}")
    tmpl = (padding + torch.tensor(TEMPLATE5, dtype=torch.float64)) / (1.0 + 2.0 * padding) * size
    scale, rot, t = _similarity(tmpl, dst)
    if not float(scale) > 0:
        raise InputError("the 5 face points are degenerate (zero scale)")
    centre = scale * rot @ torch.full((2,), size / 2.0, dtype=torch.float64) + t
    lin = (size * scale - 1.0) / (size - 1) * rot  # dlib's rectangle spans size * s - 1 pixels
    offset = centre - lin @ torch.full((2,), (size - 1) / 2.0, dtype=torch.float64)
    return torch.cat([lin, offset[:, None]], dim=1)


_PYR = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _pyramid_down(img: torch.Tensor, quantize: bool) -> torch.Tensor:
    """dlib's pyramid_down<2>: separable [1 4 6 4 1]/16, no padding, every other pixel.

    Output pixel c is centred on input pixel 2c + 2; a side of n gives (n - 3) // 2.
    """
    c = img.shape[1]
    k = _PYR.to(img.dtype).to(img.device)
    x = F.conv2d(img, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), stride=(1, 2), groups=c)
    x = F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), stride=(2, 1), groups=c)
    return _quantize(x) if quantize else x


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] values down to 8 bits (dlib stores uint8 pixels and truncates)."""
    return torch.floor(x * 255.0 + 1e-4).clamp(0, 255) / 255.0


def _dlib_rect_down(l: float, t: float, r: float, b: float) -> tuple[float, float, float, float]:
    # pyramid_down<2>::rect_down maps both corners with p / 2 - (1.25, 0.75).
    return l / 2 - 1.25, t / 2 - 0.75, r / 2 - 1.25, b / 2 - 0.75


def _dlib_area(l: float, t: float, r: float, b: float) -> float:
    return max(r - l + 1.0, 0.0) * max(b - t + 1.0, 0.0)  # dlib rectangles count corner pixels


def _pyramid_plan(a: torch.Tensor, size: int, height: int, width: int) -> tuple[int, tuple[int, int, int, int]]:
    """dlib extract_image_chips' choice: pyramid depth, and the integer crop (l, t, r, b) it is built on."""
    lin = a[:, :2].numpy()
    centre = lin @ np.full(2, (size - 1) / 2.0) + a[:, 2].numpy()
    half = (lin[0, 0] ** 2 + lin[1, 0] ** 2) ** 0.5 * (size - 1) / 2.0  # half the rect span, image px
    rect = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    depth, grow = 0, 2.0
    down = _dlib_rect_down(*rect)
    while _dlib_area(*down) > size * size:
        down = _dlib_rect_down(*down)
        depth += 1
        grow = grow * 2 + 2  # dlib keeps a border of 2 px per level around the crop
    corners = np.array([[-1, -1], [1, -1], [-1, 1], [1, 1]], np.float64) * (size - 1) / 2.0
    rot = corners @ lin.T + centre
    box = (max(rot[:, 0].min() - grow, 0.0), max(rot[:, 1].min() - grow, 0.0),
           min(rot[:, 0].max() + grow, width - 1.0), min(rot[:, 1].max() + grow, height - 1.0))
    crop = tuple(int(math.floor(v + 0.5)) for v in box)
    return depth, crop  # type: ignore[return-value]


def _as_image_batch(image) -> tuple[torch.Tensor, bool]:
    """[H, W, 3] numpy / [3, H, W] / [B, 3, H, W] tensor -> float [B, 3, H, W], and whether batched."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"numpy images must be [H, W, 3], got {image.shape}")
        t = torch.tensor(image).permute(2, 0, 1)  # a copy: photos are read-only arrays
        t = t.float() / 255.0 if image.dtype == np.uint8 else t.float()
        return t[None], False
    if not torch.is_tensor(image):
        raise InputError(f"image must be a numpy array or a torch tensor, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[0] == 3:
        return (image if image.is_floating_point() else image.float())[None], False
    if image.ndim == 4 and image.shape[1] == 3:
        return (image if image.is_floating_point() else image.float()), True
    raise InputError(f"image tensors must be [3, H, W] or [B, 3, H, W], got {list(image.shape)}")


def face_chip(image, points5, *, size: int = CHIP_SIZE, padding: float = CHIP_PADDING,
              quantize: bool = False) -> torch.Tensor:
    """Cut dlib's aligned face chip out of an image, differentiably in the image.

    Follows dlib's ``extract_image_chips``: bilinear sampling (``grid_sample``,
    zeros outside the image) of the image or, when the chip shrinks the face
    by about 2x or more, of a level of dlib's [1 4 6 4 1] image pyramid, built
    on the same crop and addressed with dlib's own (slightly off-centre)
    ``p / 2 - (1.25, 0.75)`` level mapping. With ``quantize`` the pyramid levels
    and the chip are rounded down to 8 bits as dlib's uint8 images are; the
    result then matches dlib 20.0.1's ``get_face_chip`` to within one grey level
    on all but a few pixels.

    Args:
        image: [3, H, W] or [B, 3, H, W] float tensor in [0, 1] (sRGB), or a
            numpy [H, W, 3] uint8 (0..255) / float ([0, 1]) image.
        points5: [5, 2] (or [B, 5, 2] for a batch) image points (x, y), pixel
            centres at integers, in :data:`TEMPLATE5` order
            (see :func:`points5_from_landmarks`).
        size: chip side in pixels.
        padding: template padding.
        quantize: round down to 8 bits like dlib (not differentiable).

    Returns:
        [3, size, size] (or [B, 3, size, size]) float chip in the image's range.

    Raises:
        InputError: bad shapes or degenerate points.
    """
    imgs, batched = _as_image_batch(image)
    pts = points5 if torch.is_tensor(points5) else torch.as_tensor(np.asarray(points5, dtype=np.float64))
    if tuple(pts.shape[-2:]) != (5, 2) or pts.ndim not in (2, 3):
        raise InputError(f"points5 must be [5, 2] or [B, 5, 2], got {list(pts.shape)}")
    pts = pts.reshape(-1, 5, 2)
    if pts.shape[0] != imgs.shape[0]:
        raise InputError(f"{imgs.shape[0]} images but {pts.shape[0]} sets of 5 points")
    height, width = imgs.shape[2:]
    uu = torch.arange(size, dtype=torch.float64)
    grid_u = torch.stack(torch.meshgrid(uu, uu, indexing="xy"), dim=-1)  # [size, size, 2] (x, y)
    chips = []
    for b in range(imgs.shape[0]):
        a = chip_transform(pts[b], size=size, padding=padding)
        xy = grid_u @ a[:, :2].T + a[:, 2]  # [size, size, 2] image pixels
        img = imgs[b:b + 1]
        depth, (x0, y0, x1, y1) = _pyramid_plan(a, size, height, width)
        if depth > 0 and x1 - x0 > 8 and y1 - y0 > 8:
            img = img[:, :, y0:y1 + 1, x0:x1 + 1]
            xy = xy - torch.tensor([x0, y0], dtype=torch.float64)
            for _ in range(depth):
                if min(img.shape[2:]) <= 8:
                    break
                img = _pyramid_down(img, quantize)
                xy = xy / 2.0 - torch.tensor([1.25, 0.75], dtype=torch.float64)
        hh, ww = img.shape[2:]
        norm = torch.stack([2.0 * xy[..., 0] / max(ww - 1, 1) - 1.0, 2.0 * xy[..., 1] / max(hh - 1, 1) - 1.0], -1)
        grid = norm.to(img.dtype).to(img.device)[None]
        chips.append(F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True))
    out = torch.cat(chips, 0)
    out = _quantize(out) if quantize else out
    return out if batched else out[0]


def chip_from_landmarks(image, landmarks, *, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> torch.Tensor:
    """Aligned face chip from mediapipe landmarks: ``face_chip(image, points5_from_landmarks(landmarks))``.

    Args:
        image: photo pixels (a :class:`~avatarsdk.datatypes.Photo`'s ``image`` [H, W, 3]
            uint8, or a [3, H, W] float tensor in [0, 1], e.g. a render).
        landmarks: :class:`~avatarsdk.datatypes.Landmarks` (or [478, 2+] points) in
            that image's pixels.

    Returns:
        [3, size, size] float chip in [0, 1].
    """
    return face_chip(image, points5_from_landmarks(landmarks), size=size, padding=padding)


def embed_photo(photo, landmarks, encoder: IdentityEncoder | None = None) -> np.ndarray:
    """dlib descriptor of the face in a photo.

    The chip is cut with ``quantize=True`` (8-bit steps, as dlib's uint8 images).

    Args:
        photo: :class:`~avatarsdk.datatypes.Photo` (or its [H, W, 3] uint8 image).
        landmarks: its :class:`~avatarsdk.datatypes.Landmarks`.
        encoder: the encoder; None loads the registered one (cached per process).

    Returns:
        [128] float32 descriptor (not normalised; compare with :func:`identity_distance`).

    Raises:
        WeightsError: the weights are missing or wrong.
    """
    enc = _default_encoder() if encoder is None else encoder
    image = np.asarray(getattr(photo, "image", photo))
    with torch.no_grad():
        chip = face_chip(image, points5_from_landmarks(landmarks), quantize=True)
        e = enc(chip[None].to(enc.mean.device))
    return e[0].cpu().numpy().astype(np.float32)


def identity_distance(a, b):
    """Euclidean distance between descriptors along the last axis (dlib's metric; < 0.6: same person).

    Args:
        a, b: [..., D] numpy arrays or tensors (broadcastable).

    Returns:
        [...] distances (a float for 1-D numpy inputs; a tensor for tensors, differentiable).
    """
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.linalg.vector_norm(torch.as_tensor(a) - torch.as_tensor(b), dim=-1)
    d = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)
    return float(d) if np.ndim(d) == 0 else d


def identity_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The paper's identity term: 1 - cos(a, b) along the last axis, in [0, 2].

    Args:
        a, b: [..., D] descriptors (e.g. of a render's chip and the photo's chip).

    Returns:
        [...] loss, differentiable.
    """
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)

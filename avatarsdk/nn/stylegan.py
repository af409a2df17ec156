"""The paper's synthesis network G: a StyleGAN2 generator for 6-channel UV maps.

Written from scratch in plain PyTorch after Karras et al., "Analyzing and
Improving the Image Quality of StyleGAN" (config F, skip generator, residual
discriminator), with the paper's changes (Sec. 3.1 and Implementation Details):

* **no noise inputs**: the per-pixel noise injection layers are removed so that
  the output is a function of the latent alone (``G.synthesis(ws)`` is
  deterministic, which inversion and refinement rely on);
* **6 output channels** per texel: albedo r, g, b and x, y, z offsets from the
  mean head (see :func:`decode_maps` for units);
* **three discriminators** (albedo, position, joint), see :class:`Discriminators`.

Shapes (``R`` = resolution, ``L`` = ``cfg.num_ws`` = 2 log2(R) - 2, 14 at 256)::

    z   [B, z_dim]  --mapping-->  ws [B, L, w_dim]  --synthesis-->  maps [B, 6, R, R]

Latent index layout in W+ (as in StyleGAN2): ``ws[:, 0]`` modulates the 4x4
conv; block k >= 1 (resolution 4 * 2^k) uses ``ws[:, 2k-1]`` and ``ws[:, 2k]``
for its two convs; the toRGB of block k uses ``ws[:, 2k+1]``. Low indices
control coarse structure, high indices fine detail, which is what
:func:`mix_ws` exploits.

Layers use the equalized learning rate: weights are stored N(0, 1) and scaled
by He's constant at run time (times ``lr_multiplier`` for the mapping network).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from avatarsdk.errors import InputError

__all__ = [
    "Discriminator",
    "DiscriminatorConfig",
    "Discriminators",
    "Generator",
    "GeneratorConfig",
    "MappingNetwork",
    "SynthesisNetwork",
    "d_logistic_loss",
    "decode_maps",
    "encode_maps",
    "g_nonsaturating_loss",
    "lazy_regularization_adam",
    "minibatch_stddev",
    "mix_ws",
    "modulated_conv2d",
    "r1_loss",
    "r1_penalty",
    "sample_z",
]

_LRELU_SLOPE = 0.2
_LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment through leaky ReLU


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and n >= 4 and (n & (n - 1)) == 0


def _check_positive(name: str, value, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise InputError(f"{name} must be a positive {kind.__name__}, got {value!r}")


# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters that rebuild a :class:`Generator` (stored in checkpoints).

    The defaults are the paper's network (256x256, W+ = 14 x 512). Tests use
    e.g. ``GeneratorConfig(resolution=16, z_dim=32, w_dim=32, mapping_layers=2,
    channel_base=512, channel_max=32)``.

    Attributes:
        resolution: output side R in texels, a power of two >= 4.
        z_dim: input latent size.
        w_dim: intermediate latent (W) size.
        mapping_layers: fully connected layers in the mapping network.
        mapping_lr_multiplier: learning-rate multiplier of the mapping layers.
        channel_base: feature channels at resolution r are
            ``min(channel_base // r, channel_max)``.
        channel_max: the most feature channels of any layer.
        out_channels: output channels; 6 = albedo rgb + xyz offsets.
        offset_scale_m: metres per unit of the offset channels (3-5): the
            network works in normalised units, ``offsets_m = out * offset_scale_m``.
        w_avg_beta: decay of the running mean of W tracked in training, used
            for truncation and as the regressor's starting point.
    """

    resolution: int = 256
    z_dim: int = 512
    w_dim: int = 512
    mapping_layers: int = 8
    mapping_lr_multiplier: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    out_channels: int = 6
    offset_scale_m: float = 0.01
    w_avg_beta: float = 0.995

    def __post_init__(self) -> None:
        if not _is_pow2(self.resolution):
            raise InputError(f"resolution must be a power of two >= 4, got {self.resolution!r}")
        for name in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "out_channels"):
            _check_positive(name, getattr(self, name))
        for name in ("mapping_lr_multiplier", "offset_scale_m"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"{name} must be a positive number, got {value!r}")
        if isinstance(self.w_avg_beta, bool) or not isinstance(self.w_avg_beta, (int, float)) \
                or not 0.0 <= self.w_avg_beta < 1.0:
            raise InputError(f"w_avg_beta must be in [0, 1), got {self.w_avg_beta!r}")

    @property
    def num_ws(self) -> int:
        """Number of W+ latents L = 2 log2(R) - 2 (14 at 256)."""
        return 2 * int(math.log2(self.resolution)) - 2

    def channels(self, res: int) -> int:
        """Feature channels at resolution ``res``."""
        return max(1, min(self.channel_base // res, self.channel_max))


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Hyper-parameters of the discriminators (stored in checkpoints).

    Attributes:
        resolution: input side R, a power of two >= 4 (G's resolution).
        in_channels: input channels of a single :class:`Discriminator`; a
            :class:`Discriminators` trio needs 6 (it builds 3-, 3- and 6-channel ones).
        channel_base: feature channels at resolution r are
            ``min(channel_base // r, channel_max)``.
        channel_max: the most feature channels of any layer.
        mbstd_group_size: samples per minibatch-stddev group (the largest
            divisor of the batch size not above this is used).
        mbstd_channels: feature channels of the minibatch-stddev statistic.
    """

    resolution: int = 256
    in_channels: int = 6
    channel_base: int = 32768
    channel_max: int = 512
    mbstd_group_size: int = 4
    mbstd_channels: int = 1

    def __post_init__(self) -> None:
        if not _is_pow2(self.resolution):
            raise InputError(f"resolution must be a power of two >= 4, got {self.resolution!r}")
        for name in ("in_channels", "channel_base", "channel_max", "mbstd_group_size", "mbstd_channels"):
            _check_positive(name, getattr(self, name))

    @classmethod
    def for_generator(cls, g: GeneratorConfig, **overrides) -> DiscriminatorConfig:
        """Return the config matching G's resolution, channels and output channels."""
        kw = dict(resolution=g.resolution, in_channels=g.out_channels, channel_base=g.channel_base,
                  channel_max=g.channel_max)
        kw.update(overrides)
        return cls(**kw)

    def channels(self, res: int) -> int:
        """Feature channels at resolution ``res``."""
        return max(1, min(self.channel_base // res, self.channel_max))


# ---------------------------------------------------------------------------
# Equalized-learning-rate layers
# ---------------------------------------------------------------------------


def _randn(shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, _LRELU_SLOPE) * _LRELU_GAIN


class _FullyConnected(nn.Module):
    """Linear layer with equalized learning rate: y = act(x (W g)^T + b * lr_mul), g = lr_mul / sqrt(in)."""

    def __init__(
        self,
        in_features: int,  # input size
        out_features: int,  # output size
        gen: torch.Generator,  # initialisation RNG
        bias_init: float = 0.0,  # initial value of the effective bias
        lr_multiplier: float = 1.0,  # learning-rate multiplier
        activation: bool = False,  # leaky ReLU (with gain sqrt 2) or linear
    ):
        super().__init__()
        self.weight = nn.Parameter(_randn([out_features, in_features], gen) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)  # [B, out]
        return _lrelu(x) if self.activation else x


class _Conv2d(nn.Module):
    """Conv with equalized learning rate; ``down`` averages 2x2 before the conv."""

    def __init__(
        self,
        in_channels: int,  # input feature channels
        out_channels: int,  # output feature channels
        kernel_size: int,  # square kernel side (odd)
        gen: torch.Generator,  # initialisation RNG
        bias: bool = True,  # add a learned per-channel bias
        activation: bool = True,  # leaky ReLU (with gain sqrt 2) or linear
        down: bool = False,  # halve the resolution first (2x2 box filter)
    ):
        super().__init__()
        self.weight = nn.Parameter(_randn([out_channels, in_channels, kernel_size, kernel_size], gen))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2
        self.activation = activation
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = F.avg_pool2d(x, 2)  # [B, C, H/2, W/2]
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)
        return _lrelu(x) if self.activation else x


def modulated_conv2d(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool, padding: int
) -> torch.Tensor:
    """Modulated convolution, batch-size agnostic (no grouped conv, so ONNX keeps a dynamic batch).

    Equivalent to convolving each sample with ``w'_oik = s_i w_oik`` and, with
    ``demodulate``, dividing output channel o by ``sqrt(sum_ik w'_oik^2 + 1e-8)``;
    done as scale inputs -> shared conv -> scale outputs.

    Args:
        x: [B, I, H, W] features.
        weight: [O, I, k, k] conv weight.
        styles: [B, I] per-sample input-channel scales.
        demodulate: normalise each output channel to unit expected variance.
        padding: conv padding.

    Returns:
        [B, O, H, W].
    """
    x = x * styles[:, :, None, None]  # [B, I, H, W]
    x = F.conv2d(x, weight, padding=padding)  # [B, O, H, W]
    if demodulate:
        # sum_ik (s_i w_oik)^2 = sum_i s_i^2 (sum_k w_oik^2). The kernel norm is written as a
        # vector norm (ONNX ReduceL2, axes an attribute) so the exporter folds it to an [O, I] constant.
        wsq = torch.linalg.vector_norm(weight, dim=(2, 3)).square()  # [O, I]
        dcoefs = (styles.square() @ wsq.t() + 1e-8).rsqrt()  # [B, O]
        x = x * dcoefs[:, :, None, None]
    return x


class _SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + bias + leaky ReLU; optional 2x bilinear upsampling first. No noise input."""

    def __init__(
        self,
        in_channels: int,  # input feature channels
        out_channels: int,  # output feature channels
        w_dim: int,  # latent size
        gen: torch.Generator,  # initialisation RNG
        up: bool = False,  # double the resolution first
    ):
        super().__init__()
        self.affine = _FullyConnected(w_dim, in_channels, gen, bias_init=1.0)  # w -> styles
        self.weight = nn.Parameter(_randn([out_channels, in_channels, 3, 3], gen))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.up = up

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            # Bilinear x2 with half-pixel centres = the [1, 3, 3, 1] FIR upsampler away from borders.
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        styles = self.affine(w)  # [B, I]
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, padding=1)
        return _lrelu(x + self.bias[None, :, None, None])


class _ToRGB(nn.Module):
    """Modulated 1x1 conv to the output channels (no demodulation, linear)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, gen: torch.Generator):
        super().__init__()
        self.affine = _FullyConnected(w_dim, in_channels, gen, bias_init=1.0)
        self.weight = nn.Parameter(_randn([out_channels, in_channels, 1, 1], gen))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # [B, I]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, padding=0)
        return x + self.bias[None, :, None, None]


# ---------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------


class MappingNetwork(nn.Module):
    """z -> W+: pixel norm, ``mapping_layers`` equalized-lr FC layers with leaky ReLU, broadcast to L latents.

    Buffers:
        w_avg: [w_dim] running mean of w, updated in training mode as
            ``w_avg <- lerp(mean_batch(w), w_avg, w_avg_beta)``.
    """

    def __init__(self, cfg: GeneratorConfig, gen: torch.Generator):
        super().__init__()
        self.cfg = cfg
        dims = [cfg.z_dim] + [cfg.w_dim] * cfg.mapping_layers
        self.layers = nn.ModuleList(
            _FullyConnected(dims[i], dims[i + 1], gen, lr_multiplier=cfg.mapping_lr_multiplier, activation=True)
            for i in range(cfg.mapping_layers)
        )
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Map z to W+.

        Args:
            z: [B, z_dim] float32 latents, N(0, I).
            truncation_psi: ``w <- w_avg + psi (w - w_avg)``; 1 = no truncation,
                0 = the mean latent. A float or a 0-d tensor (traced as an input).

        Returns:
            ws: [B, L, w_dim] (the same w repeated L times).

        Raises:
            InputError: z is not [B, z_dim].
        """
        if z.ndim != 2 or z.shape[1] != self.cfg.z_dim:
            raise InputError(f"z: expected [B, {self.cfg.z_dim}], got {list(z.shape)}")
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # pixel norm, [B, z_dim]
        for layer in self.layers:
            x = layer(x)  # [B, w_dim]
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.cfg.w_avg_beta))
        if isinstance(truncation_psi, torch.Tensor) or truncation_psi != 1.0:
            x = self.w_avg + truncation_psi * (x - self.w_avg)  # [B, w_dim]
        return x[:, None, :].expand(-1, self.cfg.num_ws, -1)  # [B, L, w_dim]


class SynthesisNetwork(nn.Module):
    """W+ -> 6-channel UV map: learned 4x4 constant, modulated convs, skip-connected toRGB outputs, no noise."""

    def __init__(self, cfg: GeneratorConfig, gen: torch.Generator):
        super().__init__()
        self.cfg = cfg
        c4 = cfg.channels(4)
        self.const = nn.Parameter(_randn([c4, 4, 4], gen))
        self.conv4 = _SynthesisLayer(c4, c4, cfg.w_dim, gen)
        self.torgb4 = _ToRGB(c4, cfg.out_channels, cfg.w_dim, gen)
        self.convs0 = nn.ModuleList()
        self.convs1 = nn.ModuleList()
        self.torgbs = nn.ModuleList()
        res = 8
        while res <= cfg.resolution:
            cin, cout = cfg.channels(res // 2), cfg.channels(res)
            self.convs0.append(_SynthesisLayer(cin, cout, cfg.w_dim, gen, up=True))
            self.convs1.append(_SynthesisLayer(cout, cout, cfg.w_dim, gen))
            self.torgbs.append(_ToRGB(cout, cfg.out_channels, cfg.w_dim, gen))
            res *= 2

    def forward(self, ws: torch.Tensor) -> torch.Tensor:
        """Decode W+ latents to UV maps.

        Args:
            ws: [B, L, w_dim] float32 latents (L = ``cfg.num_ws``).

        Returns:
            [B, out_channels, R, R] float32 maps in network units (see :func:`decode_maps`).

        Raises:
            InputError: ws has the wrong shape.
        """
        cfg = self.cfg
        if ws.ndim != 3 or ws.shape[1] != cfg.num_ws or ws.shape[2] != cfg.w_dim:
            raise InputError(f"ws: expected [B, {cfg.num_ws}, {cfg.w_dim}], got {list(ws.shape)}")
        x = self.conv4(self.const[None], ws[:, 0])  # [B, C4, 4, 4] (styles broadcast the batch)
        img = self.torgb4(x, ws[:, 1])  # [B, out, 4, 4]
        for k, (conv0, conv1, torgb) in enumerate(zip(self.convs0, self.convs1, self.torgbs), start=1):
            x = conv0(x, ws[:, 2 * k - 1])  # [B, C, 2H, 2W]
            x = conv1(x, ws[:, 2 * k])
            img = F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False)
            img = img + torgb(x, ws[:, 2 * k + 1])  # [B, out, 2H, 2W]
        return img


class Generator(nn.Module):
    """The synthesis network G = synthesis o mapping (StyleGAN2 without noise inputs).

    ``G.mapping(z, psi)`` gives ws [B, L, w_dim]; ``G.synthesis(ws)`` gives the
    [B, 6, R, R] map; ``G(z, psi)`` does both.

    Args:
        cfg: the architecture.
        seed: seed of the weight initialisation (a private ``torch.Generator``;
            the global RNG is not touched).
    """

    def __init__(self, cfg: GeneratorConfig, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, GeneratorConfig):
            raise InputError(f"cfg must be a GeneratorConfig, got {type(cfg).__name__}")
        gen = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg, gen)
        self.synthesis = SynthesisNetwork(cfg, gen)

    @property
    def w_avg(self) -> torch.Tensor:
        """[w_dim] running mean of w."""
        return self.mapping.w_avg

    def mean_ws(self) -> torch.Tensor:
        """Return the mean latent broadcast to W+, [1, L, w_dim] (the refinement's fallback start)."""
        return self.mapping.w_avg[None, None, :].expand(1, self.cfg.num_ws, -1).clone()

    def forward(self, z: torch.Tensor, truncation_psi: float | torch.Tensor = 1.0) -> torch.Tensor:
        """Return maps [B, out_channels, R, R] for latents z [B, z_dim] (see :class:`MappingNetwork`)."""
        return self.synthesis(self.mapping(z, truncation_psi))


def sample_z(n: int, z_dim: int, seed: int | torch.Generator = 0, device: torch.device | str = "cpu") -> torch.Tensor:
    """Draw n latents z ~ N(0, I) from a private generator (or the one given).

    Returns:
        [n, z_dim] float32.
    """
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    return torch.randn(n, z_dim, generator=gen).to(device)


def mix_ws(ws1: torch.Tensor, ws2: torch.Tensor, cutoff: int) -> torch.Tensor:
    """Style mixing: coarse latents ``[:cutoff]`` from ws1, the rest from ws2.

    Args:
        ws1: [B, L, w_dim].
        ws2: [B, L, w_dim].
        cutoff: 0 <= cutoff <= L; 0 gives ws2, L gives ws1.

    Returns:
        [B, L, w_dim].

    Raises:
        InputError: shapes differ or cutoff is out of range.
    """
    if ws1.shape != ws2.shape or ws1.ndim != 3:
        raise InputError(f"ws1 and ws2 must both be [B, L, w_dim], got {list(ws1.shape)}, {list(ws2.shape)}")
    if isinstance(cutoff, bool) or not isinstance(cutoff, int) or not 0 <= cutoff <= ws1.shape[1]:
        raise InputError(f"cutoff must be an int in [0, {ws1.shape[1]}], got {cutoff!r}")
    return torch.cat([ws1[:, :cutoff], ws2[:, cutoff:]], dim=1)


def encode_maps(albedo: torch.Tensor, offsets_m: torch.Tensor, cfg: GeneratorConfig) -> torch.Tensor:
    """Pack training data into network units (the inverse of :func:`decode_maps`).

    Args:
        albedo: [B, 3, R, R] linear albedo in [0, 1].
        offsets_m: [B, 3, R, R] xyz offsets from the mean head, metres.
        cfg: gives ``offset_scale_m``.

    Returns:
        [B, 6, R, R]: channels 0-2 = 2 albedo - 1 (in [-1, 1]); 3-5 = offsets / offset_scale_m.
    """
    if albedo.shape != offsets_m.shape or albedo.ndim != 4 or albedo.shape[1] != 3:
        raise InputError(f"albedo and offsets must both be [B, 3, R, R], got {list(albedo.shape)}, "
                         f"{list(offsets_m.shape)}")
    return torch.cat([albedo * 2.0 - 1.0, offsets_m / cfg.offset_scale_m], dim=1)


def decode_maps(maps: torch.Tensor, cfg: GeneratorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Split G's output into albedo and metric offsets.

    Args:
        maps: [B, 6, R, R] generator output.
        cfg: gives ``offset_scale_m``.

    Returns:
        albedo: [B, 3, R, R] linear albedo, ``(maps[:, :3] + 1) / 2`` clamped to [0, 1].
        offsets_m: [B, 3, R, R] xyz offsets from the mean head in metres, ``maps[:, 3:] * offset_scale_m``.
    """
    if maps.ndim != 4 or maps.shape[1] != 6:
        raise InputError(f"maps: expected [B, 6, R, R], got {list(maps.shape)}")
    return ((maps[:, :3] + 1.0) * 0.5).clamp(0.0, 1.0), maps[:, 3:] * cfg.offset_scale_m


# ---------------------------------------------------------------------------
# Discriminators
# ---------------------------------------------------------------------------


class _DiscriminatorBlock(nn.Module):
    """Residual block: (conv3x3 -> down + conv3x3) + (down + conv1x1), scaled by sqrt(1/2)."""

    def __init__(self, in_channels: int, out_channels: int, gen: torch.Generator):
        super().__init__()
        self.conv0 = _Conv2d(in_channels, in_channels, 3, gen)
        self.conv1 = _Conv2d(in_channels, out_channels, 3, gen, down=True)
        self.skip = _Conv2d(in_channels, out_channels, 1, gen, bias=False, activation=False, down=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(x)  # [B, out, H/2, W/2]
        x = self.conv1(self.conv0(x))
        return (x + y) * math.sqrt(0.5)


def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int) -> torch.Tensor:
    """Append the stddev over sample groups (averaged over features and pixels) as extra channels.

    Args:
        x: [N, C, H, W] with C divisible by num_channels.

    Returns:
        [N, C + num_channels, H, W].
    """
    n, c, h, w = x.shape
    g = next(d for d in range(min(group_size, n), 0, -1) if n % d == 0)  # largest divisor of N <= group size
    f = num_channels
    y = x.reshape(g, n // g, f, c // f, h, w)  # [G, M, F, c, H, W]: sample i is in group member i // M
    y = y - y.mean(dim=0)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [M, F, c, H, W]
    y = y.mean(dim=[2, 3, 4])  # [M, F]
    y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with minibatch stddev and equalized learning rate.

    Args:
        cfg: the architecture (``cfg.in_channels`` input channels).
        seed: seed of the weight initialisation.
    """

    def __init__(self, cfg: DiscriminatorConfig, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, DiscriminatorConfig):
            raise InputError(f"cfg must be a DiscriminatorConfig, got {type(cfg).__name__}")
        if cfg.mbstd_channels > cfg.channels(4) or cfg.channels(4) % cfg.mbstd_channels:
            raise InputError(f"mbstd_channels={cfg.mbstd_channels} must divide the 4x4 channels {cfg.channels(4)}")
        gen = torch.Generator().manual_seed(seed)
        self.cfg = cfg
        self.fromrgb = _Conv2d(cfg.in_channels, cfg.channels(cfg.resolution), 1, gen)
        blocks = []
        res = cfg.resolution
        while res > 4:
            blocks.append(_DiscriminatorBlock(cfg.channels(res), cfg.channels(res // 2), gen))
            res //= 2
        self.blocks = nn.ModuleList(blocks)
        c4 = cfg.channels(4)
        self.conv = _Conv2d(c4 + cfg.mbstd_channels, c4, 3, gen)
        self.fc = _FullyConnected(c4 * 16, c4, gen, activation=True)
        self.out = _FullyConnected(c4, 1, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Score images.

        Args:
            x: [B, in_channels, R, R] maps in network units.

        Returns:
            [B] float32 logits (real > fake).

        Raises:
            InputError: x has the wrong shape.
        """
        cfg = self.cfg
        if x.ndim != 4 or tuple(x.shape[1:]) != (cfg.in_channels, cfg.resolution, cfg.resolution):
            raise InputError(f"x: expected [B, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}], "
                             f"got {list(x.shape)}")
        x = self.fromrgb(x)  # [B, C, R, R]
        for block in self.blocks:
            x = block(x)  # halves the resolution
        x = minibatch_stddev(x, cfg.mbstd_group_size, cfg.mbstd_channels)  # [B, C4 + F, 4, 4]
        x = self.conv(x)
        x = self.fc(x.flatten(1))  # [B, C4]
        return self.out(x)[:, 0]  # [B]


class Discriminators(nn.Module):
    """The paper's three discriminators: albedo (channels 0-2), position (3-5) and joint (all 6).

    Args:
        cfg: shared architecture; ``cfg.in_channels`` must be 6.
        seed: seed of the weight initialisation (each discriminator gets its own offset seed).
    """

    names = ("albedo", "position", "joint")

    def __init__(self, cfg: DiscriminatorConfig, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, DiscriminatorConfig):
            raise InputError(f"cfg must be a DiscriminatorConfig, got {type(cfg).__name__}")
        if cfg.in_channels != 6:
            raise InputError(f"Discriminators split a 6-channel map, got in_channels={cfg.in_channels}")
        self.cfg = cfg
        self.albedo = Discriminator(replace(cfg, in_channels=3), seed=seed)
        self.position = Discriminator(replace(cfg, in_channels=3), seed=seed + 1)
        self.joint = Discriminator(cfg, seed=seed + 2)

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score 6-channel maps with each discriminator.

        Args:
            maps: [B, 6, R, R] maps in network units.

        Returns:
            (albedo, position, joint) logits, each [B].
        """
        if maps.ndim != 4 or maps.shape[1] != 6:
            raise InputError(f"maps: expected [B, 6, R, R], got {list(maps.shape)}")
        return self.albedo(maps[:, :3]), self.position(maps[:, 3:]), self.joint(maps)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------
#
# Path-length regularisation (StyleGAN2's PPL term) is deliberately omitted: it
# needs an extra generator forward and a double backward through the synthesis
# network every few steps, which roughly doubles the cost of a G step on the
# CPU machines this project trains on, and the paper's use (inversion, then
# refinement from a regressed latent) does not rely on a smooth W -> image
# Jacobian. R1 (below) is the regulariser that keeps GAN training stable.


def _as_list(logits: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def g_nonsaturating_loss(fake_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Non-saturating generator loss ``mean softplus(-D(G(z)))``, summed over discriminators.

    Args:
        fake_logits: [B] logits, or a sequence of them (e.g. the three of :class:`Discriminators`).

    Returns:
        0-d loss.
    """
    return sum(F.softplus(-lg).mean() for lg in _as_list(fake_logits))


def d_logistic_loss(
    real_logits: torch.Tensor | Sequence[torch.Tensor], fake_logits: torch.Tensor | Sequence[torch.Tensor]
) -> torch.Tensor:
    """Logistic discriminator loss ``mean softplus(D(fake)) + mean softplus(-D(real))``, summed over discriminators.

    Args:
        real_logits: [B] logits on real maps (or a sequence, one per discriminator).
        fake_logits: [B] logits on generated maps, in the same order.

    Returns:
        0-d loss.
    """
    real, fake = _as_list(real_logits), _as_list(fake_logits)
    if len(real) != len(fake):
        raise InputError(f"got {len(real)} real and {len(fake)} fake logits")
    return sum(F.softplus(f).mean() + F.softplus(-r).mean() for r, f in zip(real, fake))


def r1_penalty(real: torch.Tensor, real_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """R1 gradient penalty ``mean_b ||d D(x_b) / d x_b||^2``, summed over discriminators.

    The graph is kept (``create_graph=True``) so the penalty can be back-propagated.

    Args:
        real: [B, C, R, R] real maps with ``requires_grad=True``, the input of the logits.
        real_logits: [B] logits computed from ``real`` (or a sequence of them).

    Returns:
        0-d penalty (>= 0).

    Raises:
        InputError: ``real`` does not require grad.
    """
    if not real.requires_grad:
        raise InputError("r1_penalty: `real` must require grad (use real.detach().requires_grad_(True))")
    total = real.new_zeros(())
    for lg in _as_list(real_logits):
        (grad,) = torch.autograd.grad(lg.sum(), real, create_graph=True)  # [B, C, R, R]
        total = total + grad.square().sum(dim=[1, 2, 3]).mean()
    return total


def r1_loss(discriminator: nn.Module, real: torch.Tensor, gamma: float, interval: int = 16) -> torch.Tensor:
    """Lazy R1 regularisation term, to be minimised once every ``interval`` D steps.

    Returns ``gamma / 2 * interval * r1_penalty`` (the factor ``interval``
    compensates for applying it every ``interval`` steps, as in StyleGAN2).
    Use :func:`lazy_regularization_adam` to adjust Adam's hyper-parameters.

    Args:
        discriminator: maps [B, C, R, R] -> logits [B] or a tuple of them.
        real: [B, C, R, R] real maps (detached here; gradients flow to D only).
        gamma: R1 weight (StyleGAN2 uses 10 at 256; scale ~ R^2).
        interval: steps between regularisation passes, >= 1 (1 = not lazy).

    Returns:
        0-d loss.
    """
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise InputError(f"interval must be an int >= 1, got {interval!r}")
    if not gamma >= 0:
        raise InputError(f"gamma must be >= 0, got {gamma!r}")
    real = real.detach().requires_grad_(True)
    return r1_penalty(real, discriminator(real)) * (0.5 * gamma * interval)


def lazy_regularization_adam(lr: float, betas: tuple[float, float], interval: int) -> tuple[float, tuple[float, float]]:
    """Adam hyper-parameters for a network regularised every ``interval`` steps.

    With c = interval / (interval + 1): lr * c and betas ** c (StyleGAN2 Appendix B),
    so that the regularised schedule matches the plain one on average.

    Returns:
        (lr, (beta1, beta2)).
    """
    c = interval / (interval + 1)
    return lr * c, (betas[0] ** c, betas[1] ** c)

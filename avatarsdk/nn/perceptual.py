"""Perceptual loss: ST-LPIPS (shift-tolerant LPIPS) with our own AlexNet / VGG16 feature stacks.

The paper uses LPIPS (Zhang et al. 2018) to compare renders with photos. The
``lpips`` package ships only its linear heads (its backbones are torchvision
downloads), so we use ST-LPIPS (Ghildyal & Liu, ECCV 2022) from the PyPI
package ``stlpips-pytorch==0.0.2`` (BSD-2), which ships complete checkpoints:
``alex_shift_tolerant.pth`` (backbone + LPIPS heads) and ``vgg_shift_tolerant.pth``.
The files are found and checksummed by :mod:`avatarsdk.pretrained` and loaded
into the modules here with ``weights_only=True`` and a strict key map.

LPIPS, as computed here for images x0, x1 in [0, 1]::

    x  = ((2 x - 1) - shift) / scale            # to [-1, 1], then ImageNet-ish scaling layer
    f_l = backbone stage l (x), l = 1..5         # relu outputs
    f^_l = f_l / (||f_l||_channels + 1e-10)      # unit length per pixel
    d(x0, x1) = sum_l mean_hw( w_l . (f^_l(x0) - f^_l(x1))^2 )   # w_l >= 0: 1x1 conv, no bias

The shift-tolerant backbones replace strided convs and pools by stride-1 ops
followed by an anti-aliasing "BlurPool" (Zhang 2019): reflect-pad by 2, a 3x3
[1 2 1]^T [1 2 1] / 16 depthwise filter, stride 2. ST-AlexNet::

    conv11x11/1 p2 (64) -> blur/2 -> relu                               = relu1
    maxpool3/1 -> blur/2 -> conv5x5 p2 (192) -> relu                     = relu2
    maxpool3/1 -> blur/2 -> conv3x3 p1 (384) -> relu                     = relu3
    conv3x3 p1 (256) -> relu                                              = relu4
    conv3x3 p1 (256) -> relu                                              = relu5

ST-VGG16 is VGG16's conv stack with every maxpool2/2 replaced by maxpool2/1 + blur/2.

Typical use::

    lpips = PerceptualLoss.load("alex")        # frozen, eval mode
    d = lpips(render, photo)                   # [B], images [B, 3, H, W] in [0, 1]
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avatarsdk.errors import InputError, WeightsError
from avatarsdk.nn.checkpoint import registered_state_dict

__all__ = ["NETS", "BlurPool", "PerceptualConfig", "PerceptualLoss", "perceptual_distance"]

# One op per tuple: ("conv", checkpoint prefix, in, out, kernel, padding) | ("blur", checkpoint prefix, channels)
# | ("maxpool", kernel) (stride 1) | ("relu",). One tuple of ops per LPIPS stage.
_ALEX = (
    (("conv", "net.slice1.0", 3, 64, 11, 2), ("blur", "net.slice1.1", 64), ("relu",)),
    (("maxpool", 3), ("blur", "net.slice2.4", 64), ("conv", "net.slice2.5", 64, 192, 5, 2), ("relu",)),
    (("maxpool", 3), ("blur", "net.slice3.8", 192), ("conv", "net.slice3.9", 192, 384, 3, 1), ("relu",)),
    (("conv", "net.slice4.11", 384, 256, 3, 1), ("relu",)),
    (("conv", "net.slice5.13", 256, 256, 3, 1), ("relu",)),
)


def _vgg_stage(first: int, cin: int, cout: int, n: int, pool: bool) -> tuple:
    ops: list[tuple] = []
    i = first
    if pool:
        ops += [("maxpool", 2), ("blur", f"@{i + 1}", cin)]
        i += 2
    for j in range(n):
        ops += [("conv", f"@{i}", cin if j == 0 else cout, cout, 3, 1), ("relu",)]
        i += 2
    return tuple(ops)


def _vgg() -> tuple:
    stages = (
        _vgg_stage(0, 3, 64, 2, False),
        _vgg_stage(4, 64, 128, 2, True),
        _vgg_stage(10, 128, 256, 3, True),
        _vgg_stage(18, 256, 512, 3, True),
        _vgg_stage(26, 512, 512, 3, True),
    )
    # "@i" -> "net.slice{stage}.{i}" (torchvision-style indices of the original nn.Sequential)
    return tuple(tuple(tuple(f"net.slice{s + 1}.{x[1:]}" if isinstance(x, str) and x.startswith("@") else x
                                   for x in op) for op in stage) for s, stage in enumerate(stages))


NETS: dict[str, tuple] = {"alex": _ALEX, "vgg": _vgg()}
"""Backbone layouts by name; weight file ``stlpips_<name>`` in :data:`avatarsdk.pretrained.REGISTRY`."""


@dataclass(frozen=True)
class PerceptualConfig:
    """What builds a :class:`PerceptualLoss`.

    Attributes:
        net: backbone, "alex" (default; the LPIPS paper's choice for a loss) or "vgg".
        eps: added to the feature norm before normalising (LPIPS: 1e-10).
    """

    net: str = "alex"
    eps: float = 1e-10

    def __post_init__(self) -> None:
        if self.net not in NETS:
            raise InputError(f"unknown perceptual net {self.net!r}; known: {', '.join(NETS)}")


class BlurPool(nn.Module):
    """Anti-aliased downsampling: reflect pad 2, depthwise 3x3 binomial filter, stride 2.

    Output side ``(n + 4 - 3) // 2 + 1 = (n + 1) // 2 + 1`` for an input side n (>= 3).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = (a[:, None] * a[None, :]) / 16.0
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1))  # [C, 1, 3, 3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=2, groups=x.shape[1])


def _build(layout: tuple) -> tuple[nn.ModuleList, dict[str, str], list[int]]:
    """Build the backbone stages; return them, checkpoint->module key map, and stage channels."""
    stages = nn.ModuleList()
    keymap: dict[str, str] = {}
    channels: list[int] = []
    for s, ops in enumerate(layout):
        mods: list[nn.Module] = []
        ch = channels[-1] if channels else 3
        for op in ops:
            kind = op[0]
            j = len(mods)
            if kind == "conv":
                _, prefix, cin, cout, k, pad = op
                mods.append(nn.Conv2d(cin, cout, k, stride=1, padding=pad))
                keymap[f"{prefix}.weight"] = f"stages.{s}.{j}.weight"
                keymap[f"{prefix}.bias"] = f"stages.{s}.{j}.bias"
                ch = cout
            elif kind == "blur":
                _, prefix, c = op
                mods.append(BlurPool(c))
                keymap[f"{prefix}.filt"] = f"stages.{s}.{j}.filt"
            elif kind == "maxpool":
                mods.append(nn.MaxPool2d(op[1], stride=1))
            elif kind == "relu":
                mods.append(nn.ReLU())
            else:  # pragma: no cover - layouts are constants
                raise ValueError(kind)
        stages.append(nn.Sequential(*mods))
        channels.append(ch)
    return stages, keymap, channels


class PerceptualLoss(nn.Module):
    """ST-LPIPS distance between images: [B, 3, H, W] x 2 in [0, 1] -> [B].

    Build it with :meth:`load`. Differentiable in both images; parameters frozen
    by :meth:`load`. Images should be at least 32 pixels on a side (AlexNet's
    11x11 first conv and three BlurPools); 256x256 is what LPIPS was calibrated on.

    Attributes:
        cfg: the :class:`PerceptualConfig`.
        channels: feature channels of the five stages.
    """

    def __init__(self, cfg: PerceptualConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or PerceptualConfig()
        self.stages, self._keymap, self.channels = _build(NETS[self.cfg.net])
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in self.channels)
        for i in range(len(self.channels)):
            self._keymap[f"lin{i}.model.1.weight"] = f"lins.{i}.weight"
        # LPIPS v0.1 scaling layer (checkpoint values replace these defaults).
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self._keymap["scaling_layer.shift"] = "shift"
        self._keymap["scaling_layer.scale"] = "scale"

    @classmethod
    def load(cls, net: str = "alex", path: str | os.PathLike | None = None, *,
             sha256: str | None = "registry") -> PerceptualLoss:
        """Load the ST-LPIPS checkpoint for ``net`` into our modules.

        Args:
            net: "alex" or "vgg".
            path: a .pth state dict; None for ``avatarsdk.pretrained.locate("stlpips_<net>")``.
            sha256: expected hex sha256 of ``path``; "registry" (default) uses the
                registry's; None skips the check (keys and shapes are still checked).

        Returns:
            The loss module in eval mode on the CPU, parameters frozen.

        Raises:
            InputError: unknown net.
            WeightsError: missing file, wrong checksum, unreadable, or keys/shapes
                that do not match the backbone.
        """
        model = cls(PerceptualConfig(net=net))
        state, path = registered_state_dict(f"stlpips_{net}", path, sha256)
        model.load_checkpoint_state(state, source=str(path))
        return model.eval().requires_grad_(False)

    def load_checkpoint_state(self, state: dict, source: str = "<state>") -> None:
        """Load an ST-LPIPS state dict (its own key names) strictly.

        Raises:
            WeightsError: missing, unexpected or mis-shaped entries.
        """
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise WeightsError(f"{source}: expected a dict of tensors")
        missing = sorted(set(self._keymap) - set(state))
        unexpected = sorted(set(state) - set(self._keymap))
        if missing or unexpected:
            raise WeightsError(f"{source}: not an ST-LPIPS {self.cfg.net} checkpoint "
                               f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        mapped = {self._keymap[k]: v for k, v in state.items()}
        try:
            self.load_state_dict(mapped, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"{source}: does not match the ST-LPIPS {self.cfg.net} backbone: {exc}") from exc
        if any(float(w.weight.detach().min()) < 0 for w in self.lins):
            raise WeightsError(f"{source}: negative LPIPS layer weights")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features of images in [0, 1].

        Args:
            x: [B, 3, H, W] float in [0, 1].

        Returns:
            The five stage outputs [B, C_l, H_l, W_l] (after relu).
        """
        h = ((2.0 * x - 1.0) - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        out = []
        for stage in self.stages:
            h = stage(h)
            out.append(h)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor, *, spatial: bool = False) -> torch.Tensor:
        """ST-LPIPS distance.

        Args:
            a, b: [B, 3, H, W] float RGB in [0, 1] (scaled to [-1, 1] inside, as
                LPIPS's ``normalize=True``); same shape. ``b`` may have batch 1
                to compare every ``a`` with one image.
            spatial: return the per-pixel map (each layer's map upsampled
                bilinearly to H x W and summed) instead of its mean.

        Returns:
            [B] distances (0 for identical images), or [B, 1, H, W] when ``spatial``.

        Raises:
            InputError: bad shapes or images smaller than 32 pixels.
        """
        for name, t in (("a", a), ("b", b)):
            if t.ndim != 4 or t.shape[1] != 3:
                raise InputError(f"{name} must be [B, 3, H, W], got {list(t.shape)}")
        if a.shape[2:] != b.shape[2:] or b.shape[0] not in (1, a.shape[0]):
            raise InputError(f"a {list(a.shape)} and b {list(b.shape)} must have the same size")
        if min(a.shape[2:]) < 32:
            raise InputError(f"images must be at least 32x32 pixels, got {list(a.shape[2:])}")
        n = a.shape[0]
        b = b.expand(n, -1, -1, -1) if b.shape[0] == 1 and n > 1 else b
        feats = self.features(torch.cat([a, b.to(a.dtype)], 0))
        total = 0.0
        for f, lin in zip(feats, self.lins):
            f = f / (torch.sqrt((f * f).sum(1, keepdim=True)) + self.cfg.eps)
            d = lin((f[:n] - f[n:]) ** 2)  # [B, 1, h, w]
            if spatial:
                total = total + F.interpolate(d, size=a.shape[2:], mode="bilinear", align_corners=False)
            else:
                total = total + d.mean(dim=(1, 2, 3))
        return total


@functools.lru_cache(maxsize=2)
def _cached(net: str) -> PerceptualLoss:
    return PerceptualLoss.load(net)


def perceptual_distance(a: torch.Tensor, b: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """ST-LPIPS distance with a per-process cached network (see :class:`PerceptualLoss`).

    Args:
        a, b: [B, 3, H, W] float in [0, 1].
        net: "alex" or "vgg".

    Returns:
        [B] distances.
    """
    model = _cached(net)
    if model.shift.device != a.device:
        model.to(a.device)
    return model(a, b.to(a.device))

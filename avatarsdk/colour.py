"""sRGB <-> linear light (IEC 61966-2-1), for torch tensors and numpy arrays alike."""

from __future__ import annotations

import numpy as np
import torch


def srgb_to_linear(c):
    """Decode sRGB values in [0, 1] to linear light (negative inputs clamp to 0)."""
    if isinstance(c, torch.Tensor):
        c = c.clamp_min(0)
        return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    c = np.maximum(np.asarray(c), 0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c):
    """Encode linear light to sRGB in [0, 1] (clamped)."""
    if isinstance(c, torch.Tensor):
        c = c.clamp(0, 1)
        return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)
    c = np.clip(np.asarray(c), 0, 1)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)

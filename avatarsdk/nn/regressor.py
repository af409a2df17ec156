"""The paper's identity regressor R: face-recognition embedding -> W+ latent of G.

Sec. 3.1 and Implementation Details: "four fully connected layers with Leaky
ReLU activations", trained with G frozen on pairs (identity embedding of a
photo, latent code recovered by GAN inversion). Here::

    e [B, in_dim] --(L2-normalise)--> FC-LReLU -> FC-LReLU -> FC-LReLU -> FC
      --> delta [B, L * w_dim] --reshape, + w_avg--> ws [B, L, w_dim]

R predicts the offset from a mean latent (``w_avg``, a buffer copied from G's
tracked mean w, or the mean of the inverted training codes), so an untrained or
uncertain R starts at the mean face. The last layer is initialised small
(``out_init_gain``) for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avatarsdk.errors import InputError
from avatarsdk.nn.stylegan import GeneratorConfig

__all__ = ["Regressor", "RegressorConfig"]


@dataclass(frozen=True)
class RegressorConfig:
    """Hyper-parameters that rebuild a :class:`Regressor` (stored in checkpoints).

    Attributes:
        in_dim: embedding size; 128 for the dlib ResNet embedding we use, 512 for FaceNet.
        num_ws: number of W+ latents L of the generator (14 at 256).
        w_dim: latent size of the generator.
        hidden_dim: width of the three hidden layers.
        num_layers: fully connected layers (the paper uses 4).
        normalize_input: L2-normalise the embedding first (face-recognition
            embeddings are compared by angle/distance; their scale carries no identity).
        out_init_gain: scale of the last layer's initial weights, so that
            an untrained R predicts close to ``w_avg``.
    """

    in_dim: int = 128
    num_ws: int = 14
    w_dim: int = 512
    hidden_dim: int = 512
    num_layers: int = 4
    normalize_input: bool = True
    out_init_gain: float = 0.1

    def __post_init__(self) -> None:
        for name in ("in_dim", "num_ws", "w_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.normalize_input, bool):
            raise InputError(f"normalize_input must be a bool, got {self.normalize_input!r}")
        if isinstance(self.out_init_gain, bool) or not isinstance(self.out_init_gain, (int, float)) \
                or not self.out_init_gain >= 0:
            raise InputError(f"out_init_gain must be a number >= 0, got {self.out_init_gain!r}")

    @classmethod
    def for_generator(cls, g: GeneratorConfig, **overrides) -> RegressorConfig:
        """Return a config whose output matches G's W+ shape ([L, w_dim]); ``overrides`` set other fields."""
        kw = dict(num_ws=g.num_ws, w_dim=g.w_dim)
        kw.update(overrides)
        return cls(**kw)


class Regressor(nn.Module):
    """Identity regressor R: embedding [B, in_dim] -> ws [B, L, w_dim].

    Buffers:
        w_avg: [L, w_dim] mean latent the prediction is an offset from (zeros
            until :meth:`set_w_avg` is called; saved in checkpoints).

    Args:
        cfg: the architecture.
        seed: seed of the weight initialisation (a private ``torch.Generator``).
    """

    def __init__(self, cfg: RegressorConfig, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, RegressorConfig):
            raise InputError(f"cfg must be a RegressorConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        dims = [cfg.in_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1) + [cfg.num_ws * cfg.w_dim]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(cfg.num_layers))
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                # Kaiming-uniform for leaky ReLU(0.2), like nn.Linear's default but from our generator.
                gain = (2.0 / (1.0 + 0.2**2)) ** 0.5
                bound = gain * (3.0 / dims[i]) ** 0.5
                layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen) * 2 * bound - bound)
                layer.bias.zero_()
            self.layers[-1].weight.mul_(cfg.out_init_gain)
        self.register_buffer("w_avg", torch.zeros(cfg.num_ws, cfg.w_dim))

    @torch.no_grad()
    def set_w_avg(self, w_avg: torch.Tensor) -> None:
        """Set the mean latent: [w_dim] (broadcast to every layer, e.g. ``G.w_avg``) or [L, w_dim]."""
        w_avg = torch.as_tensor(w_avg, dtype=self.w_avg.dtype)
        if tuple(w_avg.shape) not in ((self.cfg.w_dim,), tuple(self.w_avg.shape)):
            raise InputError(f"w_avg: expected [{self.cfg.w_dim}] or {list(self.w_avg.shape)}, "
                             f"got {list(w_avg.shape)}")
        self.w_avg.copy_(w_avg.expand_as(self.w_avg))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Regress W+ latents from identity embeddings.

        Args:
            embedding: [B, in_dim] float32 face-recognition embeddings.

        Returns:
            ws: [B, L, w_dim] float32, ``w_avg + R(embedding)``.

        Raises:
            InputError: embedding is not [B, in_dim].
        """
        cfg = self.cfg
        if embedding.ndim != 2 or embedding.shape[1] != cfg.in_dim:
            raise InputError(f"embedding: expected [B, {cfg.in_dim}], got {list(embedding.shape)}")
        x = F.normalize(embedding, dim=1) if cfg.normalize_input else embedding  # [B, in_dim]
        for layer in self.layers[:-1]:
            x = F.leaky_relu(layer(x), 0.2)  # [B, hidden]
        delta = self.layers[-1](x).reshape(-1, cfg.num_ws, cfg.w_dim)  # [B, L, w_dim]
        return self.w_avg + delta

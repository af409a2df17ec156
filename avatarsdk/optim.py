"""Adam for the fitting loops, without the ~1 s import ``torch.optim`` costs on first use.

Every ``torch.optim`` optimizer imports ``torch._dynamo`` (and with it sympy
and the compiler stack) the first time one is built: about 1 s of CPU, an
eighth of ``avatarsdk create``'s time budget, for a few hundred steps of plain
Adam. :class:`Adam` is that algorithm for dense CPU tensors, with the same
operations in the same order as ``torch.optim.Adam``'s default single-tensor
path (``foreach=False``, no amsgrad, no weight decay, ``maximize=False``), so
the parameters follow bit-identical trajectories (tested against
``torch.optim.Adam``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["Adam"]


class Adam:
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam(params, lr, betas, eps)`` computes it.

    Args:
        params: tensors, or param-group dicts ``{"params": [...], "lr": ...}``.
        lr: learning rate of groups that set none.
        betas: (beta1, beta2) decay of the first and second moment averages.
        eps: added to the denominator.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        items = list(params)
        groups = items if items and isinstance(items[0], dict) else [{"params": items}]
        self.param_groups = []
        for g in groups:
            group = {"lr": float(g.get("lr", lr)), "betas": tuple(g.get("betas", betas)), "eps": float(g.get("eps", eps)),
                     "params": list(g["params"])}
            if not 0.0 <= group["lr"] or not 0.0 <= group["eps"]:
                raise ValueError(f"invalid lr or eps: {group['lr']}, {group['eps']}")
            self.param_groups.append(group)
        self.state: dict[torch.Tensor, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's gradient, as ``torch.optim.Optimizer.zero_grad``."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().requires_grad_(False).zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse or p.is_complex():
                    raise ValueError("Adam here takes dense real tensors only")
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                             "exp_avg_sq": torch.zeros_like(p)}
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                # torch.optim.adam._single_tensor_adam, non-capturable branch, operation for operation.
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"].item()
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                step_size = lr / bias_correction1
                bias_correction2_sqrt = bias_correction2**0.5
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)

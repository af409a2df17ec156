"""avatarsdk.optim.Adam against torch.optim.Adam (the reference it replicates)."""

from __future__ import annotations

import pytest
import torch

from avatarsdk.optim import Adam


def _run(make, dtype, steps=60):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(7, generator=g, dtype=dtype).requires_grad_()
    c = torch.randn(2, generator=g, dtype=dtype).requires_grad_()
    opt = make([{"params": [a], "lr": 0.03}, {"params": [b, c], "lr": 0.002}])
    target = torch.randn(5, 3, generator=g, dtype=dtype)
    for it in range(steps):
        opt.zero_grad()
        loss = ((a - target) ** 2).sum() + (b.sin() ** 2).sum() * 0.1
        if it % 3:  # c gets no gradient on some steps: it must not move then
            loss = loss + (c**3).sum()
        loss.backward()
        opt.step()
        with torch.no_grad():
            b.clamp_(-1.0, 1.0)
    return a.detach(), b.detach(), c.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_adam_bit_for_bit(dtype):
    ours = _run(lambda groups: Adam(groups), dtype)
    ref = _run(lambda groups: torch.optim.Adam(groups), dtype)
    for x, y in zip(ours, ref):
        assert torch.equal(x, y)


def test_plain_parameter_list_and_options():
    def run(cls):
        p = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
        opt = cls([p], lr=0.1, betas=(0.8, 0.99), eps=1e-6)
        for _ in range(20):
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
        return p.detach()

    assert torch.equal(run(Adam), run(torch.optim.Adam))


def test_zero_grad_and_bad_input():
    p = torch.ones(3, requires_grad=True)
    opt = Adam([p], lr=0.1)
    (p * 2).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))
    opt.zero_grad()
    assert p.grad is None
    opt.step()  # no gradient: nothing moves
    assert torch.equal(p.detach(), torch.ones(3))
    with pytest.raises(ValueError):
        Adam([p], lr=-1.0)

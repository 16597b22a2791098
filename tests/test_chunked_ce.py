"""The chunked head + cross-entropy gives the plain F.cross_entropy(lm_head(x)) loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sprout.train.chunked_ce import linear_cross_entropy


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(50, 16, generator=g, dtype=torch.float64)).requires_grad_()
    y = torch.randint(0, 50, (3, 37), generator=g)
    y[0, :5] = -100  # ignored positions (prompt, padding)
    return x, w, y


@pytest.mark.parametrize("chunk", [1, 8, 1000])
def test_loss_and_gradients_match_plain_cross_entropy(chunk: int) -> None:
    x, w, y = _case()
    ref = F.cross_entropy((x @ w.t()).flatten(0, 1), y.flatten(), ignore_index=-100)
    gx_ref, gw_ref = torch.autograd.grad(3.0 * ref, (x, w))
    loss = linear_cross_entropy(x, w, y, chunk)
    gx, gw = torch.autograd.grad(3.0 * loss, (x, w))  # a non-unit upstream gradient is scaled through
    # fp64 inputs: the chunked softmax is fp32, so agreement is to fp32 precision
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-5, atol=1e-7)


def test_under_bf16_autocast_it_matches_the_autocast_head() -> None:
    x, w, y = _case(1)
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(x32, w32).flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        loss = linear_cross_entropy(x32, w32, y, 16)
    gref = torch.autograd.grad(ref, (x32, w32))
    g = torch.autograd.grad(loss, (x32, w32))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-3)
    for a, b in zip(g, gref):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)

"""Muon for the hidden weight matrices, AdamW for everything else, in one torch Optimizer.

Muon (MomentUm Orthogonalized by Newton-Schulz) keeps SGD momentum per matrix and replaces the update by the
nearest semi-orthogonal matrix: with the momentum M = U S V^T, the step is U V^T. Every direction of the
matrix then moves by the same amount, instead of the few dominant ones that raw gradients of transformer layers
concentrate on. U V^T is approximated without an SVD by a few Newton-Schulz iterations on X = M / ||M||_F:

    X <- a X + (b A + c A^2) X,   A = X X^T,   (a, b, c) = (3.4445, -4.7750, 2.0315)

an odd polynomial that pushes every singular value of X into roughly [0.7, 1.2] in 5 steps (exactness is not
needed; speed is). The step is scaled by sqrt(max(1, rows / cols)) so tall and wide matrices move alike.
Embeddings, norms, biases and the LM head are not "hidden matrices" (their rows are looked up or read out one
token at a time) and keep AdamW, as in the papers that introduced Muon. Groups marked `muon=True` take the
Muon rule; the rest the AdamW rule (decoupled weight decay, bias-corrected moments).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch

NS_COEFFS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def orthogonalize(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U V^T for m = U S V^T (2-D), by Newton-Schulz iterations in bf16 (as fast and accurate enough)."""
    a, b, c = NS_COEFFS
    x = m.bfloat16()
    tall = x.shape[0] > x.shape[1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.t()
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the polynomial converges
    for _ in range(steps):
        gram = x @ x.t()
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.t() if tall else x).to(m.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer (one state dict, one lr schedule, one GradScaler target) for both update rules."""

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        momentum: float = 0.95,
        ns_steps: int = 5,
        eps: float = 1e-8,
    ):
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            weight_decay=weight_decay,
            momentum=momentum,
            ns_steps=ns_steps,
            eps=eps,
            muon=False,
        )
        super().__init__(groups, defaults)
        for g in self.param_groups:
            if g["muon"] and any(p.ndim != 2 for p in g["params"]):
                raise ValueError("Muon groups hold 2-D matrices only")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                p.mul_(1.0 - g["lr"] * g["weight_decay"])  # decoupled decay, both rules
                (self._muon if g["muon"] else self._adamw)(p, g)
        return loss

    def _muon(self, p: torch.Tensor, g: dict) -> None:
        grad = cast(torch.Tensor, p.grad)  # step() skips parameters without one
        state = self.state[p]
        buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
        buf.mul_(g["momentum"]).add_(grad)
        update = grad.add(buf, alpha=g["momentum"])  # Nesterov: look one momentum step ahead
        scale = math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
        p.add_(orthogonalize(update, g["ns_steps"]), alpha=-g["lr"] * scale)

    def _adamw(self, p: torch.Tensor, g: dict) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        b1, b2 = g["betas"]
        state["step"] += 1
        t = float(state["step"])
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2**t)).sqrt_().add_(g["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=-g["lr"] / (1 - b1**t))

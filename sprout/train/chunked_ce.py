"""Cross-entropy of the LM head without the full logits tensor: head matmul + CE one chunk of positions at a time.

The plain loss builds logits [B*T, V] in the compute dtype, then an fp32 copy for the softmax, then the same again
for the gradient: at minimind3 size (seq 512, batch 8, vocab 6,400) that is ~100 MB per copy, and it grows with
batch x vocab. Here each chunk of `chunk` positions computes

    z = x_c W^T (fp32 softmax)        loss_c = sum_i [logsumexp(z_i) - z_i[y_i]]   over labelled positions
    dL/dz = softmax(z) - onehot(y)    dL/dx_c = dL/dz W      dL/dW += dL/dz^T x_c

in the forward pass and keeps only dL/dx and dL/dW (the size of x and W), so at most one chunk's logits exist at
any time. Backward then only scales the stored gradients by the incoming gradient / the number of labels.
Labels equal to -100 are ignored, as in F.cross_entropy. With no label at all the loss is 0 (plain CE: NaN).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, labels: torch.Tensor, chunk: int) -> torch.Tensor:
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = labels != -100
        n = valid.sum().clamp(min=1)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        with torch.autocast(x.device.type, enabled=False):  # the caller chose the dtype of x and w
            for s in range(0, x.shape[0], chunk):
                xc, yc, vc = x[s : s + chunk], labels[s : s + chunk], valid[s : s + chunk]
                z = (xc @ w.t()).float()
                lse = torch.logsumexp(z, dim=-1)
                y = yc.clamp(min=0).unsqueeze(1)
                total += ((lse - z.gather(1, y).squeeze(1)) * vc).sum()
                if not (need_x or need_w):
                    continue
                g = torch.exp_(z.sub_(lse.unsqueeze(1)))  # softmax, in place over the chunk's logits
                g.scatter_add_(1, y, -torch.ones_like(y, dtype=g.dtype))
                g.mul_(vc.unsqueeze(1))
                g = g.to(x.dtype)
                if grad_x is not None:
                    grad_x[s : s + chunk] = g @ w
                if grad_w is not None:
                    grad_w += (g.t() @ xc).float()
        ctx.w_dtype = w.dtype
        ctx.save_for_backward(grad_x, grad_w, n)
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x, grad_w, n = ctx.saved_tensors
        scale = grad_out / n
        gx = (grad_x * scale.to(grad_x.dtype)) if ctx.needs_input_grad[0] else None
        gw = (grad_w * scale).to(ctx.w_dtype) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Mean CE of `hidden @ weight.T` against `labels` (-100 = ignored), `chunk` positions at a time.

    hidden [..., H], weight [V, H] (the LM head), labels [...]. Under autocast the matmuls run in the autocast
    dtype, like nn.Linear would; the softmax is fp32 either way."""
    x = hidden.reshape(-1, hidden.shape[-1])
    w = weight
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, w = x.to(dtype), w.to(dtype)
    return _LinearCrossEntropy.apply(x, w, labels.reshape(-1), int(chunk))


def supports_chunked_ce(model: nn.Module) -> bool:
    """True for models whose forward is the plain trunk -> norm -> lm_head (no extra heads such as MTP)."""
    from ..models.dense import SproutForCausalLM

    return isinstance(model, SproutForCausalLM) and type(model).forward is SproutForCausalLM.forward

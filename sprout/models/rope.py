"""RoPE frequency scaling for running a model beyond the length it was trained on.

A model trained at length L has seen rotation angles pos * inv_freq_i for pos < L only. Scaling by
`factor` s changes the frequencies so that positions up to s * L fall in (or near) that range:

  linear  inv_freq_i / s for every i (position interpolation): all channels slow down.
  ntk     theta -> theta * s^(d/(d-2)) ("NTK-aware"): high frequencies barely move, the lowest
          frequency is divided by ~s.
  yarn    per-channel blend: channels that turn many times within L (high frequency, > beta_fast
          turns) keep their frequency, channels that turn less than beta_slow times are
          interpolated (/ s), a linear ramp in between; and cos/sin are multiplied by
          0.1 * ln(s) + 1 to keep attention logits as sharp as at training length.

The numbers follow transformers' `rope_type` "linear" / "yarn" definitions, so a scaled sprout
model computes what transformers computes for the same `rope_parameters`.

Scaling is an inference-time setting: `apply_rope_scaling(model, "yarn", 4)` after `load_model`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # dense.py imports this module (through layers.py)
    from .dense import SproutForCausalLM

KINDS = ("none", "linear", "ntk", "yarn")


def scaled_inv_freq(
    dim: int,
    theta: float,
    kind: str = "none",
    factor: float = 1.0,
    original_max_position: int = 2048,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """(inv_freq [dim/2], attention factor multiplying cos and sin)."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    base_inv = 1.0 / (theta**exponents)
    if kind in ("none", None) or factor == 1.0:
        return base_inv, 1.0
    if kind == "linear":
        return base_inv / factor, 1.0
    if kind == "ntk":
        return 1.0 / ((theta * factor ** (dim / (dim - 2))) ** exponents), 1.0
    if kind == "yarn":

        def channel(turns: float) -> float:
            # Index i of the channel that makes `turns` full rotations over original_max_position.
            return dim * math.log(original_max_position / (turns * 2 * math.pi)) / (2 * math.log(theta))

        lo = max(math.floor(channel(beta_fast)), 0)
        hi: float = min(math.ceil(channel(beta_slow)), dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
        keep = 1 - ramp  # 1 = keep the original (extrapolated) frequency, 0 = interpolate
        inv = (base_inv / factor) * (1 - keep) + base_inv * keep
        return inv, 0.1 * math.log(factor) + 1.0
    raise ValueError(f"RoPE scaling must be one of {', '.join(KINDS)}, got {kind!r}")


class RotaryEmbedding(nn.Module):
    """cos/sin [B, T, dim] for given positions ("rotate half" layout, as transformers), optionally scaled."""

    inv_freq: torch.Tensor  # a registered buffer

    def __init__(
        self, head_dim: int, theta: float, kind: str = "none", factor: float = 1.0, original_max_position: int = 2048
    ):
        super().__init__()
        inv_freq, self.attention_factor = scaled_inv_freq(head_dim, theta, kind, factor, original_max_position)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.head_dim, self.theta = head_dim, theta
        self.kind, self.factor, self.original_max_position = kind, factor, original_max_position

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq  # [B, T, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        a = self.attention_factor
        return (emb.cos() * a).to(dtype), (emb.sin() * a).to(dtype)


def apply_rope_scaling(
    model: SproutForCausalLM, kind: str, factor: float, original_max_position: int | None = None
) -> SproutForCausalLM:
    """Replace the model's rotary embedding by a scaled one (in place; returns the model).

    original_max_position: the length the model was trained at (defaults to config
    `original_max_position_embeddings`, else `max_position_embeddings`). kind "none" or factor 1 restores
    plain RoPE. For models with several rotary modules every one is replaced.
    """
    cfg = model.config
    orig = (
        original_max_position or getattr(cfg, "original_max_position_embeddings", None) or cfg.max_position_embeddings
    )
    found = False
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, RotaryEmbedding):
                new = RotaryEmbedding(child.head_dim, child.theta, kind, factor, orig).to(child.inv_freq.device)
                setattr(parent, name, new)
                found = True
    if not found:
        raise ValueError("this model has no rotary embedding to scale")
    return model

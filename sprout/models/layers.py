"""Building blocks shared by every model family: RMSNorm, RoPE, grouped-query attention, SwiGLU, RoutingStats.

Module and parameter names follow transformers' Qwen3/Llama code so that a state dict
saves to (and loads from) the standard Hugging Face layout with no renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .config import ModelConfig
from .rope import RotaryEmbedding  # noqa: F401  (re-exported)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 for stability (as transformers does)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# RotaryEmbedding lives in rope.py (with linear / NTK / YaRN scaling); re-exported here.


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos/sin: [B, T, D]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) v for q [B, H, T, D] and k, v [B, H_kv, S, D] (H_kv divides H: each
    key/value head serves H / H_kv consecutive query heads). mask: boolean [B|1, 1, T, S], True = may attend;
    None = plain causal.

    SDPA picks flash / memory-efficient kernels on CUDA and shares KV heads without copies (enable_gqa). On
    CPU a decoding step (one query per row against the whole cache) runs as two batched matmuls instead:
    torch's CPU flash kernel splits the work by blocks of queries, so a single query leaves it 1.1x (fp32) to
    13x (bf16) slower than the matmuls (batch 32, 720 cached positions, 2 cores)."""
    gqa = k.shape[1] != q.shape[1]
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if q.device.type != "cpu" or q.shape[2] != 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    B, H, _, D = q.shape
    Hk = k.shape[1]
    scores = (q.reshape(B, Hk, H // Hk, D) @ k.transpose(-1, -2)).float() * D**-0.5  # [B, H_kv, H/H_kv, S]
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)
    return (probs @ v).reshape(B, H, 1, v.shape[-1])


class Attention(nn.Module):
    """Grouped-query attention: n_kv key/value heads are shared by n_q/n_kv query heads each."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=bias)
        # QK-norm (Qwen3): RMSNorm over each head's vector keeps attention logits bounded.
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:  # both or neither (cfg.qk_norm)
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out = attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


@dataclass
class RoutingStats:
    """What a routed feed-forward layer reports for one forward pass, returned next to its output
    (an FFN returns either a tensor or (tensor, RoutingStats)); nothing is kept on the module."""

    load: torch.Tensor  # [E] assignments per expert in this pass (no gradient)
    balance_loss: torch.Tensor | None = None  # weighted load-balancing loss (training only)


class SwiGLU(nn.Module):
    """Feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

"""Qwen3-Next family: Gated DeltaNet linear attention in 3 of every 4 layers, gated full attention in the 4th,
MoE feed-forward (routed experts + one sigmoid-gated shared expert), zero-centred RMSNorm (x * (1 + w)).

Gated DeltaNet, per value head, with a state S [d_k, d_v] (q, k L2-normalised, q scaled by 1/sqrt(d_k)):
    S_t = a_t S_{t-1} + k_t u_t^T,   u_t = beta_t (v_t - a_t S_{t-1}^T k_t),   o_t = S_t^T q_t
    a_t = exp(g_t),  g_t = -exp(A_log) * softplus(alpha_t + dt_bias),  beta_t = sigmoid(b_t)
The recurrent form runs this loop (decoding, one token per step). The chunkwise form (training/prefill) solves
a chunk of C tokens at once: with gamma_i = prod_{j<=i} a_j inside the chunk and S_0 the incoming state,
    (I + A) U = beta * (V - gamma * K S_0),   A_ij = beta_i (gamma_i/gamma_j) k_i.k_j  for j < i
    O = gamma * Q S_0 + (tril(Q K^T) * gamma_i/gamma_j) U,   S_C = gamma_C S_0 + (K * gamma_C/gamma)^T U
so the only sequential work is one small triangular solve per chunk. A depthwise causal conv (kernel 4)
and SiLU precede the rule; its output passes a gated RMSNorm (norm(o) * silu(z)).

Gated attention: q_proj emits [query | gate] per head; the attention output is multiplied by sigmoid(gate).
RoPE rotates only the first `partial_rotary_factor` of each head.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .config import ModelConfig, base_hf_dict, config_kwargs_from_hf
from .dense import DecoderLayer, SproutForCausalLM, ffn_residual
from .layers import RoutingStats, attend, rotate_half
from .moe import qwen_moe_block


class ZeroCenteredRMSNorm(nn.Module):
    """x / rms(x) * (1 + w), w initialised to 0 (Qwen3-Next)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).type_as(x)


@dataclass
class Qwen3NextConfig(ModelConfig):
    model_type: str = "qwen3_next"
    tie_word_embeddings: bool = False
    partial_rotary_factor: float = 0.25
    full_attention_interval: int = 4
    layer_types: list[str] = field(default_factory=list)  # empty (or null in config.json) = every 4th full
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 32
    linear_value_head_dim: int = 32
    linear_num_key_heads: int = 4
    linear_num_value_heads: int = 8
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 256
    shared_expert_intermediate_size: int = 256
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.01
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    chunk_size: int = 64  # sprout: chunk length of the parallel Gated DeltaNet form

    def __post_init__(self) -> None:
        if self.model_type != "qwen3_next":
            raise ValueError(f"Qwen3NextConfig.model_type must be qwen3_next, got {self.model_type!r}")
        if not self.head_dim:  # unset: derived, as in ModelConfig
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not self.layer_types:
            self.layer_types = [
                "full_attention" if (i + 1) % self.full_attention_interval == 0 else "linear_attention"
                for i in range(self.num_hidden_layers)
            ]
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError("layer_types needs one entry per layer")
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ValueError("linear_num_value_heads must be a multiple of linear_num_key_heads")

    @property
    def qk_norm(self) -> bool:
        return True

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    def to_hf_dict(self) -> dict[str, Any]:
        d = base_hf_dict(self, "Qwen3NextForCausalLM")
        d["rope_parameters"]["partial_rotary_factor"] = self.partial_rotary_factor
        keys = (
            "head_dim",
            "partial_rotary_factor",
            "full_attention_interval",
            "layer_types",
            "linear_conv_kernel_dim",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_num_key_heads",
            "linear_num_value_heads",
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "norm_topk_prob",
            "router_aux_loss_coef",
            "decoder_sparse_step",
            "mlp_only_layers",
            "chunk_size",
        )
        d.update({k: getattr(self, k) for k in keys})
        d.update(attention_bias=False, output_router_logits=False)
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> Qwen3NextConfig:
        kw = config_kwargs_from_hf(cls, d)
        prf = (d.get("rope_parameters") or {}).get("partial_rotary_factor")
        if prf is not None:
            kw["partial_rotary_factor"] = prf
        return cls(**kw)


# ---- Gated delta rule --------------------------------------------------------------------------------


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def gated_delta_recurrent(q, k, v, g, beta, state=None):
    """q, k [B, H, T, dk] (normalised, q scaled), v [B, H, T, dv], g/beta [B, H, T]; fp32.
    Returns (o [B, H, T, dv], final state [B, H, dk, dv])."""
    B, H, T, dk = k.shape
    S = torch.zeros(B, H, dk, v.shape[-1], dtype=v.dtype, device=v.device) if state is None else state
    outs = []
    for t in range(T):
        S = S * g[:, :, t].exp()[..., None, None]
        u = beta[:, :, t, None] * (v[:, :, t] - torch.einsum("bhkv,bhk->bhv", S, k[:, :, t]))
        S = S + k[:, :, t, :, None] * u[:, :, None, :]
        outs.append(torch.einsum("bhkv,bhk->bhv", S, q[:, :, t]))
    return torch.stack(outs, 2), S


def gated_delta_chunkwise(q, k, v, g, beta, state=None, chunk: int = 64):
    """Same result as `gated_delta_recurrent`, a chunk of tokens at a time (see the module docstring)."""
    B, H, T, dk = k.shape
    dv = v.shape[-1]
    pad = (-T) % chunk
    if pad:  # zero keys/values/gates at the end change nothing before them
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    n = (T + pad) // chunk
    q, k, v = (x.reshape(B, H, n, chunk, x.shape[-1]) for x in (q, k, v))
    g, beta = g.reshape(B, H, n, chunk), beta.reshape(B, H, n, chunk)
    G = g.cumsum(-1)  # log gamma_i within each chunk
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # gamma_i / gamma_j, j <= i
    strict = causal & ~torch.eye(chunk, dtype=torch.bool, device=q.device)
    A = (beta[..., None] * decay * (k @ k.transpose(-1, -2))).masked_fill(~strict, 0.0)
    eye = torch.eye(chunk, dtype=q.dtype, device=q.device)
    rhs = torch.cat([beta[..., None] * v, beta[..., None] * G.exp()[..., None] * k], dim=-1)
    sol = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    U_v, W = sol[..., :dv], sol[..., dv:]  # U = U_v - W S_0
    attn = (q @ k.transpose(-1, -2)) * decay  # masked (decay is 0 above the diagonal)
    S = torch.zeros(B, H, dk, dv, dtype=v.dtype, device=v.device) if state is None else state
    outs = []
    for c in range(n):
        U = U_v[:, :, c] - W[:, :, c] @ S
        gam = G[:, :, c].exp()
        outs.append((q[:, :, c] * gam[..., None]) @ S + attn[:, :, c] @ U)
        Gc = G[:, :, c]
        to_end = (Gc[..., -1:] - Gc).exp()  # gamma_C / gamma_j, from log space (gamma itself may underflow)
        S = gam[..., -1:, None] * S + (k[:, :, c] * to_end[..., None]).transpose(-1, -2) @ U
    o = torch.cat(outs, 2)[:, :, :T]
    return o, S


class GatedDeltaNet(nn.Module):
    def __init__(self, cfg: Qwen3NextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx, self.cfg = layer_idx, cfg
        self.nk, self.nv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.dk, self.dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.key_dim, self.value_dim = self.nk * self.dk, self.nv * self.dv
        self.conv_dim = 2 * self.key_dim + self.value_dim
        self.kernel = cfg.linear_conv_kernel_dim
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.kernel, groups=self.conv_dim, bias=False, padding=self.kernel - 1
        )
        self.in_proj_qkvz = nn.Linear(cfg.hidden_size, 2 * self.key_dim + 2 * self.value_dim, bias=False)
        self.in_proj_ba = nn.Linear(cfg.hidden_size, 2 * self.nv, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(self.nv))
        self.A_log = nn.Parameter(torch.empty(self.nv).uniform_(0.01, 16).log())
        self.norm = GatedRMSNorm(self.dv, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(self.value_dim, cfg.hidden_size, bias=False)

    def _split(self, qkvz: torch.Tensor, ba: torch.Tensor):
        """The projections are grouped per key head: [q_h | k_h | v of its value heads | z of its value heads]."""
        B, T, _ = qkvz.shape
        r = self.nv // self.nk
        qkvz = qkvz.view(B, T, self.nk, 2 * self.dk + 2 * r * self.dv)
        q, k, v, z = qkvz.split([self.dk, self.dk, r * self.dv, r * self.dv], dim=-1)
        b, a = ba.view(B, T, self.nk, 2 * r).split([r, r], dim=-1)
        return (
            q.reshape(B, T, self.key_dim),
            k.reshape(B, T, self.key_dim),
            v.reshape(B, T, self.value_dim),
            z.reshape(B, T, self.nv, self.dv),
            b.reshape(B, T, self.nv),
            a.reshape(B, T, self.nv),
        )

    def forward(self, x, cos=None, sin=None, mask=None, cache: HybridCache | None = None, pad_mask=None):
        """pad_mask [B, T], 1 = real token. Padding comes before a row's first token (left-padded prefill); it
        enters neither the conv window (its input is zeroed, like the empty window of a fresh row) nor the state
        (its step is a = 1, beta = 0, so S passes through unchanged)."""
        if pad_mask is not None:
            x = x * pad_mask[:, :, None].to(x.dtype)
        B, T, _ = x.shape
        q, k, v, z, b, a = self._split(self.in_proj_qkvz(x), self.in_proj_ba(x))
        mixed = torch.cat([q, k, v], -1).transpose(1, 2)  # [B, C, T]
        w = self.conv1d.weight  # [C, 1, K]
        if cache is not None:
            full = torch.cat([cache.conv(self.layer_idx), mixed], -1)
            cache.set_conv(self.layer_idx, full[..., -(self.kernel - 1) :])
            mixed = F.conv1d(full, w, groups=self.conv_dim)[..., -T:]
        else:
            mixed = F.conv1d(mixed, w, groups=self.conv_dim, padding=self.kernel - 1)[..., :T]
        mixed = F.silu(mixed).transpose(1, 2)
        q, k, v = mixed.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        r = self.nv // self.nk
        q = q.reshape(B, T, self.nk, self.dk).repeat_interleave(r, dim=2)
        k = k.reshape(B, T, self.nk, self.dk).repeat_interleave(r, dim=2)
        v = v.reshape(B, T, self.nv, self.dv)
        q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
        q, k = _l2norm(q) / self.dk**0.5, _l2norm(k)
        beta = b.sigmoid().float().transpose(1, 2)
        g = (-self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias)).transpose(1, 2)
        if pad_mask is not None:
            real = pad_mask[:, None, :].to(g.dtype)  # [B, 1, T]
            g, beta = g * real, beta * real
        state = cache.recurrent(self.layer_idx) if cache is not None else None
        if cache is not None and T == 1:
            o, state = gated_delta_recurrent(q, k, v, g, beta, state)
        else:
            o, state = gated_delta_chunkwise(q, k, v, g, beta, state, self.cfg.chunk_size)
        if cache is not None:
            cache.set_recurrent(self.layer_idx, state)
        o = o.transpose(1, 2).to(x.dtype)  # [B, T, nv, dv]
        o = self.norm(o, z)
        return self.out_proj(o.reshape(B, T, -1))


class GatedRMSNorm(nn.Module):
    """RMSNorm(x) * w * silu(z) (weight initialised to 1)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        y = self.weight * y.to(x.dtype)
        return (y * F.silu(z.float())).to(x.dtype)


class GatedAttention(nn.Module):
    """GQA with QK-norm, partial RoPE and a sigmoid output gate per channel."""

    def __init__(self, cfg: Qwen3NextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h = cfg.hidden_size
        self.q_proj = nn.Linear(h, self.n_heads * self.hd * 2, bias=False)
        self.k_proj = nn.Linear(h, self.n_kv * self.hd, bias=False)
        self.v_proj = nn.Linear(h, self.n_kv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.hd, h, bias=False)
        self.q_norm = ZeroCenteredRMSNorm(self.hd, cfg.rms_norm_eps)
        self.k_norm = ZeroCenteredRMSNorm(self.hd, cfg.rms_norm_eps)

    @staticmethod
    def _rope(x, cos, sin):
        d = cos.shape[-1]
        rot, rest = x[..., :d], x[..., d:]
        rot = rot * cos.unsqueeze(1) + rotate_half(rot) * sin.unsqueeze(1)
        return torch.cat([rot, rest], -1)

    def forward(self, x, cos, sin, mask, cache=None, pad_mask=None):
        B, T, _ = x.shape
        q, gate = self.q_proj(x).view(B, T, self.n_heads, 2 * self.hd).chunk(2, dim=-1)
        q = self.q_norm(q).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv, self.hd)).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out = attend(q, k, v, mask)
        out = out.transpose(1, 2).reshape(B, T, -1) * torch.sigmoid(gate.reshape(B, T, -1))
        return self.o_proj(out)


class HybridCache(KVCache):
    """Keys/values for the full-attention layers (columns, as KVCache); for the linear ones two per-row state
    tensors: the conv window [B, C, K-1] (last inputs of the causal conv) and the delta-rule state
    [B, H, dk, dv]. The states have no columns, so merging rows of different lengths or trimming columns
    leaves them alone (see sprout.models.cache)."""

    def __init__(self, cfg: Qwen3NextConfig, batch: int, max_len: int, device, dtype):
        full = [i for i, t in enumerate(cfg.layer_types) if t == "full_attention"]
        linear = [i for i, t in enumerate(cfg.layer_types) if t != "full_attention"]
        conv_dim = (
            2 * cfg.linear_num_key_heads * cfg.linear_key_head_dim
            + cfg.linear_num_value_heads * cfg.linear_value_head_dim
        )
        nv, dk, dv = cfg.linear_num_value_heads, cfg.linear_key_head_dim, cfg.linear_value_head_dim
        states = {
            "conv": {
                i: torch.zeros(batch, conv_dim, cfg.linear_conv_kernel_dim - 1, device=device, dtype=dtype)
                for i in linear
            },
            # fp32, as the delta rule runs in fp32
            "recurrent": {i: torch.zeros(batch, nv, dk, dv, device=device, dtype=torch.float32) for i in linear},
        }
        super().__init__(
            cfg.num_hidden_layers,
            batch,
            cfg.num_key_value_heads,
            cfg.head_dim,
            max_len,
            device,
            dtype,
            layers=full,
            states=states,
        )

    def conv(self, layer: int) -> torch.Tensor:
        return self.states["conv"][layer]

    def set_conv(self, layer: int, window: torch.Tensor) -> None:
        self.states["conv"][layer] = window.contiguous()

    def recurrent(self, layer: int) -> torch.Tensor:
        return self.states["recurrent"][layer]

    def set_recurrent(self, layer: int, state: torch.Tensor) -> None:
        self.states["recurrent"][layer] = state


class HybridLayer(DecoderLayer):
    """Pre-norm block whose mixer is Gated DeltaNet (`linear_attn`) or gated attention (`self_attn`)."""

    def __init__(self, cfg: Qwen3NextConfig, i: int, ffn: nn.Module):
        nn.Module.__init__(self)
        self.layer_type = cfg.layer_types[i]
        self.input_layernorm = ZeroCenteredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if self.layer_type == "linear_attention":
            self.linear_attn = GatedDeltaNet(cfg, i)
        else:
            self.self_attn = GatedAttention(cfg, i)
        self.post_attention_layernorm = ZeroCenteredRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = ffn

    def forward(self, x, cos, sin, mask, cache=None, pad_mask=None) -> tuple[torch.Tensor, RoutingStats | None]:
        mixer = self.linear_attn if self.layer_type == "linear_attention" else self.self_attn
        x = x + mixer(self.input_layernorm(x), cos, sin, mask, cache, pad_mask)
        return ffn_residual(self.mlp, self.post_attention_layernorm(x), x)


class Qwen3NextForCausalLM(SproutForCausalLM):
    """doc_ids (packing) separate documents in the full-attention layers only: the linear layers' state runs on
    across a packed row, as in plain (unreset) pretraining on concatenated text. Padding (attention_mask) reaches
    the linear layers as the trunk's explicit `pad_mask` argument."""

    norm_cls = ZeroCenteredRMSNorm
    mask_isolates_tokens = False

    config: Qwen3NextConfig

    def make_layer(self, cfg: ModelConfig, i: int) -> nn.Module:
        from .layers import SwiGLU

        assert isinstance(cfg, Qwen3NextConfig)  # the family's own config, as __init__ receives it
        if i not in cfg.mlp_only_layers and cfg.num_experts > 0 and (i + 1) % cfg.decoder_sparse_step == 0:
            ffn: nn.Module = qwen_moe_block(cfg)
        else:
            ffn = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        return HybridLayer(cfg, i, ffn)

    def _post_init(self) -> None:
        # _init_weights drew random values into the zero-centred norms' weights; they start at 0 (scale 1).
        for m in self.modules():
            if isinstance(m, ZeroCenteredRMSNorm):
                nn.init.zeros_(m.weight)

    def new_cache(self, batch: int, max_len: int) -> HybridCache:
        p = self.lm_head.weight
        return HybridCache(self.config, batch, max_len, p.device, p.dtype)

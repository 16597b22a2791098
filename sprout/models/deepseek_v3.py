"""DeepSeek-V3 family: multi-head latent attention (MLA), DeepSeek MoE, multi-token prediction (MTP).

MLA (per layer):
    c_q  = RMSNorm(x W_qa)                      query compressed to q_lora_rank
    q    = c_q W_qb -> per head [q_nope | q_rope]     (q_rope gets RoPE)
    c_kv = RMSNorm((x W_kva)[:kv_lora_rank])    keys/values compressed to kv_lora_rank
    k_r  = RoPE((x W_kva)[kv_lora_rank:])       one decoupled rope key shared by all heads
    [k_nope | v] = c_kv W_kvb per head;  k = [k_nope | k_r]
The cache stores only (c_kv, k_r): kv_lora_rank + qk_rope_head_dim numbers per token and layer, instead of
2 * heads * head_dim. RoPE pairs are interleaved (x0, x1), (x2, x3), ... as in DeepSeek's weights
(`rope_interleave`).

The first `first_k_dense_replace` layers use a dense SwiGLU; the others DeepSeek MoE (sigmoid router,
shared experts, group-limited top-k, routed_scaling_factor, sequence-wise aux loss and/or bias balancing).

MTP: `num_nextn_predict_layers` extra blocks; block d combines the previous hidden state at position i
with the embedding of token i+d and predicts token i+d+1 through the shared head. In training the forward
returns these logits (`CausalLMOutput.mtp_logits`); the objective scores them against the same shifted labels
as the main head (so prompt tokens are never MTP targets) and adds `mtp_loss_weight` x their mean CE. MTP
weights are training-only: they are not written to the exported folder (transformers' DeepseekV3ForCausalLM
does not use them either).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .cache import Cache
from .config import ModelConfig, base_hf_dict, config_kwargs_from_hf
from .dense import CausalLMOutput, DecoderLayer, SproutForCausalLM, build_attention_mask, collect_routing
from .layers import RMSNorm, SwiGLU, attend
from .moe import MoEBlock


@dataclass
class DeepseekV3Config(ModelConfig):
    model_type: str = "deepseek_v3"
    tie_word_embeddings: bool = False
    # MLA
    q_lora_rank: int | None = 192
    kv_lora_rank: int = 128
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    rope_interleave: bool = True
    # MoE
    moe_intermediate_size: int = 256
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 1
    # training-only (sprout): balancing and multi-token prediction
    aux_loss_alpha: float = 0.0  # sequence-wise balance loss weight per MoE layer
    bias_update_rate: float = 0.001  # auxiliary-loss-free balancing step (0 = off)
    num_nextn_predict_layers: int = 1
    mtp_loss_weight: float = 0.3

    # Derived in __post_init__ (0 = unset, filled in there):
    num_key_value_heads: int = 0  # MLA: every head has its own k/v, so this equals num_attention_heads
    head_dim: int = 0  # what RoPE rotates: qk_rope_head_dim (transformers' convention)

    def __post_init__(self) -> None:
        if self.model_type != "deepseek_v3":
            raise ValueError(f"DeepseekV3Config.model_type must be deepseek_v3, got {self.model_type!r}")
        # Derived fields: filled in when left unset, an error when set to something else.
        for name, value in (("num_key_value_heads", self.num_attention_heads), ("head_dim", self.qk_rope_head_dim)):
            given = getattr(self, name)
            if given and given != value:  # 0 or None (null in config.json) = unset
                raise ValueError(
                    f"DeepseekV3Config: {name}={given} contradicts MLA, which needs {value} "
                    f"({'num_attention_heads' if name == 'num_key_value_heads' else 'qk_rope_head_dim'}); "
                    f"leave {name} unset"
                )
            setattr(self, name, value)

    @property
    def qk_norm(self) -> bool:
        return False

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def to_hf_dict(self) -> dict[str, Any]:
        d = base_hf_dict(self, "DeepseekV3ForCausalLM")
        keys = (
            "q_lora_rank",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "rope_interleave",
            "moe_intermediate_size",
            "n_routed_experts",
            "n_shared_experts",
            "num_experts_per_tok",
            "n_group",
            "topk_group",
            "routed_scaling_factor",
            "norm_topk_prob",
            "first_k_dense_replace",
            "aux_loss_alpha",
            "bias_update_rate",
            "num_nextn_predict_layers",
            "mtp_loss_weight",
        )
        d.update({k: getattr(self, k) for k in keys})
        d.update(
            head_dim=self.qk_rope_head_dim, qk_head_dim=self.qk_head_dim, attention_bias=False, num_mtp_layers=0
        )  # MTP heads are not exported
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> DeepseekV3Config:
        return cls(**config_kwargs_from_hf(cls, d))

    def num_parameters(self, active: bool = False) -> int:

        with torch.device("meta"):
            m = DeepseekV3ForCausalLM(self)
        total = 0
        for name, p in m.named_parameters():
            if name.startswith("mtp."):
                continue
            if active and ".experts." in name:
                total += p.numel() * self.num_experts_per_tok // self.n_routed_experts
            else:
                total += p.numel()
        return total


def rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on interleaved pairs (x0, x1), (x2, x3)...; the result lists the rotated even channels, then the odd
    ones (a fixed permutation applied to queries and keys alike, so dot products are unchanged)."""
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half].unsqueeze(1), sin[..., :half].unsqueeze(1)
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def rope_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return x * cos.unsqueeze(1) + torch.cat((-b, a), dim=-1) * sin.unsqueeze(1)


class LatentCache(Cache):
    """MLA cache: the compressed KV latent and the shared rope key per layer ([B, S, r] and [B, S, d_rope])."""

    time_dim = {"c": 1, "kr": 1}

    def __init__(
        self,
        num_layers: int,
        batch: int,
        kv_lora_rank: int,
        rope_dim: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
    ):
        super().__init__(
            {
                "c": {
                    i: torch.zeros(batch, max_len, kv_lora_rank, device=device, dtype=dtype) for i in range(num_layers)
                },
                "kr": {i: torch.zeros(batch, max_len, rope_dim, device=device, dtype=dtype) for i in range(num_layers)},
            },
            {},
        )

    def update(self, layer: int, c: torch.Tensor, kr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's latents [B, T, r] and rope keys [B, T, d_rope]; return all so far."""
        return self.write("c", layer, c), self.write("kr", layer, kr)


class MLAttention(nn.Module):
    def __init__(self, cfg: DeepseekV3Config, layer_idx: int):
        super().__init__()
        self.layer_idx, self.cfg = layer_idx, cfg
        h, n = cfg.hidden_size, cfg.num_attention_heads
        self.n_heads, self.dn, self.dr, self.dv = n, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(h, cfg.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, n * (self.dn + self.dr), bias=False)
        else:
            self.q_proj = nn.Linear(h, n * (self.dn + self.dr), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, cfg.kv_lora_rank + self.dr, bias=False)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, n * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(n * self.dv, h, bias=False)
        self.rope = rope_interleaved if cfg.rope_interleave else rope_half

    def forward(self, x, cos, sin, mask, cache: LatentCache | None = None):
        B, T, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if self.cfg.q_lora_rank else self.q_proj(x)
        q = q.view(B, T, self.n_heads, self.dn + self.dr).transpose(1, 2)
        q_nope, q_rope = q.split([self.dn, self.dr], dim=-1)
        c, k_rope = self.kv_a_proj_with_mqa(x).split([self.cfg.kv_lora_rank, self.dr], dim=-1)
        c = self.kv_a_layernorm(c)
        q_rope = self.rope(q_rope, cos, sin)
        k_rope = self.rope(k_rope.unsqueeze(1), cos, sin).squeeze(1)  # [B, T, dr]
        if cache is not None:
            c, k_rope = cache.update(self.layer_idx, c, k_rope)
        S = c.shape[1]
        kv = self.kv_b_proj(c).view(B, S, self.n_heads, self.dn + self.dv).transpose(1, 2)
        k_nope, v = kv.split([self.dn, self.dv], dim=-1)
        k = torch.cat([k_nope, k_rope.unsqueeze(1).expand(B, self.n_heads, S, self.dr)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        out = attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MTPLayer(nn.Module):
    """One multi-token-prediction depth: project [RMSNorm(h); RMSNorm(emb(next token))] and run one block."""

    def __init__(self, cfg: DeepseekV3Config, idx: int):
        super().__init__()
        h = cfg.hidden_size
        self.enorm, self.hnorm = RMSNorm(h, cfg.rms_norm_eps), RMSNorm(h, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = DecoderLayer(
            cfg,
            cfg.num_hidden_layers + idx,
            attn=MLAttention(cfg, cfg.num_hidden_layers + idx),
            ffn=SwiGLU(h, cfg.intermediate_size),
        )
        self.norm = RMSNorm(h, cfg.rms_norm_eps)


class DeepseekV3ForCausalLM(SproutForCausalLM):
    training_only_prefixes = ("mtp.",)
    config: DeepseekV3Config

    def make_layer(self, cfg: ModelConfig, i: int) -> nn.Module:
        assert isinstance(cfg, DeepseekV3Config)  # the family's own config, as __init__ receives it
        if i < cfg.first_k_dense_replace:
            ffn: nn.Module = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        else:
            ffn = MoEBlock(
                cfg.hidden_size,
                cfg.n_routed_experts,
                cfg.num_experts_per_tok,
                cfg.moe_intermediate_size,
                score="sigmoid",
                norm_topk=cfg.norm_topk_prob,
                n_group=cfg.n_group,
                topk_group=cfg.topk_group,
                routed_scaling_factor=cfg.routed_scaling_factor,
                aux_loss_coef=cfg.aux_loss_alpha,
                seq_aux=True,
                bias_update_rate=cfg.bias_update_rate,
                use_bias=True,
                shared_intermediate=cfg.moe_intermediate_size * cfg.n_shared_experts,
            )
        return DecoderLayer(cfg, i, attn=MLAttention(cfg, i), ffn=ffn)

    def __init__(self, cfg: DeepseekV3Config):
        super().__init__(cfg)
        self.mtp = nn.ModuleList(MTPLayer(cfg, d) for d in range(cfg.num_nextn_predict_layers))
        for module in self.mtp.modules():
            self._init_weights(module)

    def new_cache(self, batch: int, max_len: int) -> LatentCache:
        p, c = self.lm_head.weight, self.config
        return LatentCache(c.num_hidden_layers, batch, c.kv_lora_rank, c.qk_rope_head_dim, max_len, p.device, p.dtype)

    def forward(
        self, input_ids, position_ids=None, doc_ids=None, attention_mask=None, cache=None, last_only=False
    ) -> CausalLMOutput:
        h, routing = self.trunk(input_ids, position_ids, doc_ids, attention_mask, cache)
        x = self.model.norm(h)
        logits = self.lm_head(x[:, -1:] if last_only else x)
        aux, load = collect_routing(routing)
        mtp: list[torch.Tensor] = []
        # MTP reads token i+d as the future of position i, so it needs a row in order: none under a 4-D mask
        in_order = attention_mask is None or attention_mask.dim() == 2
        if self.training and torch.is_grad_enabled() and cache is None and self.config.mtp_loss_weight and in_order:
            mtp = self._mtp_logits(h, input_ids, position_ids, doc_ids, attention_mask)
        return CausalLMOutput(
            logits=logits, aux_losses=aux, mtp_logits=mtp, mtp_loss_weight=self.config.mtp_loss_weight, expert_load=load
        )

    def _mtp_logits(self, h, ids, position_ids, doc_ids, attention_mask) -> list[torch.Tensor]:
        """Depth d: logits [B, T-d, V]; position i sees the hidden state of depth d-1 at i and token i+d, and
        predicts token i+d+1. Attention stays within documents and real tokens."""
        B, T = ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=ids.device).expand(B, T)
        out = []
        for d, layer in enumerate(self.mtp, start=1):
            assert isinstance(layer, MTPLayer)  # nn.ModuleList yields plain Modules
            L = T - d
            if L < 1:
                break
            e = self.model.embed_tokens(ids[:, d:])  # token i+d for position i
            h = layer.eh_proj(torch.cat([layer.hnorm(h[:, :L]), layer.enorm(e)], dim=-1))
            cos, sin = self.model.rotary_emb(position_ids[:, :L], h.dtype)
            docs = doc_ids[:, :L] if doc_ids is not None else None
            am = attention_mask[:, :L] if attention_mask is not None else None
            h, _ = layer.block(h, cos, sin, build_attention_mask(L, 0, h.device, docs, am))
            out.append(self.lm_head(layer.norm(h)))
        return out

"""The dense decoder (Qwen3 with QK-norm, Llama without): embeddings -> N x (attention + FFN) -> norm -> head.

    h = x + Attention(RMSNorm(x))        # pre-norm residual blocks
    y = h + FFN(RMSNorm(h))

The feed-forward slot is built by `make_ffn`, so a mixture-of-experts layer can drop in: an FFN returns its
output, or (output, RoutingStats) when it routes tokens; the model collects the stats into its output
(named auxiliary losses, expert load per layer). Nothing passes through module attributes.
Other families (sprout.models.moe, deepseek_v3, qwen3_next) subclass `SproutForCausalLM` and
override `make_layer` / `make_ffn` / `make_norm`; the forward pass, caching and I/O stay shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .cache import Cache, KVCache
from .config import ModelConfig
from .layers import Attention, RMSNorm, RotaryEmbedding, RoutingStats, SwiGLU


@dataclass
class CausalLMOutput:
    """Everything one forward pass produces. Training objectives turn it into a loss; decoding reads `logits`."""

    logits: torch.Tensor  # [B, T, V]
    # Extra training losses, already weighted, by name ("moe_balance"); empty outside training or for dense models.
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    # Multi-token prediction heads (DeepSeek): mtp_logits[d-1] is [B, T-d, V]; position i predicts token i+d+1,
    # i.e. the target is labels[:, i+d] with the same shifted labels as the main head. Training only.
    mtp_logits: list[torch.Tensor] = field(default_factory=list)
    mtp_loss_weight: float = 0.0  # how much the objective weighs the mean MTP loss
    expert_load: dict[int, torch.Tensor] = field(default_factory=dict)  # MoE layer -> [E] assignments per expert

    @property
    def aux_loss(self) -> torch.Tensor | None:
        """The sum of `aux_losses`, or None when there are none."""
        total = None
        for v in self.aux_losses.values():
            total = v if total is None else total + v
        return total


def collect_routing(stats: dict[int, RoutingStats]) -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
    """Per-layer routing stats -> (aux_losses with the summed balance loss, expert load per layer)."""
    losses = [s.balance_loss for s in stats.values() if s.balance_loss is not None]
    aux = {"moe_balance": torch.stack(losses).sum()} if losses else {}
    return aux, {i: s.load for i, s in stats.items()}


def make_ffn(cfg: ModelConfig, layer_idx: int) -> nn.Module:
    return SwiGLU(cfg.hidden_size, cfg.intermediate_size)


class DecoderLayer(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        layer_idx: int,
        attn: nn.Module | None = None,
        ffn: nn.Module | None = None,
        norm: type[nn.Module] = RMSNorm,
    ):
        super().__init__()
        self.input_layernorm = norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = attn if attn is not None else Attention(cfg, layer_idx)
        self.post_attention_layernorm = norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = ffn if ffn is not None else make_ffn(cfg, layer_idx)

    def forward(self, x, cos, sin, mask, cache=None, pad_mask=None) -> tuple[torch.Tensor, RoutingStats | None]:
        """pad_mask [B, T] (1 = real token) is for recurrent mixers; attention hides padding through `mask`."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return ffn_residual(self.mlp, self.post_attention_layernorm(x), x)


def ffn_residual(mlp: nn.Module, h: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats | None]:
    """x + mlp(h), and the routing stats when the FFN is a routed one."""
    y = mlp(h)
    if isinstance(y, tuple):
        y, stats = y
        return x + y, stats
    return x + y, None


class DecoderModel(nn.Module):
    """The trunk; named `model` inside the LM so weight names read `model.layers.0...` as in transformers."""

    def __init__(self, cfg: ModelConfig, make_layer=None, norm: type[nn.Module] = RMSNorm):
        super().__init__()
        make_layer = make_layer or DecoderLayer
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(make_layer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = norm(cfg.hidden_size, cfg.rms_norm_eps)
        # Families with partial/decoupled RoPE (MLA, Qwen3-Next) rotate only `rotary_dim` channels.
        self.rotary_emb = RotaryEmbedding(getattr(cfg, "rotary_dim", cfg.head_dim), cfg.rope_theta)


def build_attention_mask(
    T: int,
    past: int,
    device: torch.device,
    doc_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Boolean mask [B|1, 1, T, past+T]: True where a query may attend to a key.

    Causal always; with `doc_ids` ([B, T], packing) a token sees only its own document;
    with `attention_mask` ([B, past+T], 1 = real token) padding keys are hidden. A 4-D `attention_mask`
    ([B, 1, T, past+T], True = may attend) is a whole mask, used as given: layouts the two cases cannot
    express, such as RL's replies laid side by side after their one shared prompt (sprout/rl/rollout.py).
    Returns None for the plain causal case so SDPA can use its fused causal kernel.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.bool()
    if doc_ids is None and attention_mask is None and past == 0:
        return None
    q_pos = torch.arange(past, past + T, device=device)
    k_pos = torch.arange(past + T, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # [1, 1, T, S]
    if doc_ids is not None:
        if past:
            raise ValueError("doc_ids (packed training) cannot be combined with a KV cache")
        mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    if attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]
        # A padding query would otherwise see no key at all, and softmax over nothing is NaN.
        mask = mask | (k_pos[None, :] == q_pos[:, None])[None, None]
    return mask


class SproutForCausalLM(nn.Module):
    config: ModelConfig  # each family narrows this to its own config class
    lora_config: dict[str, Any]  # set by sprout.train.lora.apply_lora; absent on a model without adapters
    norm_cls: type[nn.Module] = RMSNorm  # Qwen3-Next uses zero-centred (1 + w) norms
    gradient_checkpointing: bool = False  # training option (TrainConfig.grad_checkpoint)
    # Every token mixer obeys the attention mask, so a 4-D mask can isolate tokens of one row from each
    # other (Qwen3-Next's linear layers carry a state along the row whatever the mask says).
    mask_isolates_tokens: bool = True

    def make_layer(self, cfg: ModelConfig, layer_idx: int) -> nn.Module:
        """One decoder block: (x, cos, sin, mask, cache, pad_mask) -> (x, RoutingStats | None), FFN held as `.mlp`."""
        return DecoderLayer(cfg, layer_idx, norm=self.norm_cls)

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg, self.make_layer, self.norm_cls)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)
        # Scale residual output projections by 1/sqrt(2L) so the residual stream's variance
        # does not grow with depth at initialisation (GPT-2's trick).
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "out_proj.weight")):
                nn.init.normal_(p, std=cfg.initializer_range / math.sqrt(2 * cfg.num_hidden_layers))
        self._post_init()

    def _post_init(self) -> None:
        """Family-specific initialisation after the generic one (e.g. zero-centred norms)."""

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if isinstance(module, nn.Linear) and module.bias is not None:  # nn.Embedding has no bias
                nn.init.zeros_(module.bias)

    def new_cache(self, batch: int, max_len: int) -> Cache:
        """An empty cache for `batch` rows with room for `max_len` positions (it grows when needed)."""
        p = self.lm_head.weight
        c = self.config
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, max_len, p.device, p.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        last_only: bool = False,
    ) -> CausalLMOutput:
        """input_ids [B, T]. position_ids default to past..past+T-1. doc_ids: packed documents.
        attention_mask [B, past+T]: 1 for real tokens (left padding in batched generation), or a whole
        boolean mask [B, 1, T, past+T] (see build_attention_mask).
        last_only: compute logits for the last position only (decoding saves the big matmul)."""
        x, routing = self.trunk(input_ids, position_ids, doc_ids, attention_mask, cache)
        x = self.model.norm(x)
        if last_only:
            x = x[:, -1:]
        aux, load = collect_routing(routing)
        return CausalLMOutput(logits=self.lm_head(x), aux_losses=aux, expert_load=load)

    def trunk(
        self, input_ids, position_ids=None, doc_ids=None, attention_mask=None, cache=None
    ) -> tuple[torch.Tensor, dict[int, RoutingStats]]:
        """Embeddings and decoder layers: the last hidden state (before the final norm) and the routing stats
        of every MoE layer, by layer index."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)
        mask = build_attention_mask(T, past, x.device, doc_ids, attention_mask)
        pad_mask = attention_mask[:, -T:] if attention_mask is not None and attention_mask.dim() == 2 else None
        routing: dict[int, RoutingStats] = {}
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        for i, layer in enumerate(self.model.layers):
            if recompute:  # keep only each layer's input; its activations are recomputed during backward
                x, stats = torch.utils.checkpoint.checkpoint(
                    layer, x, cos, sin, mask, None, pad_mask, use_reentrant=False
                )
            else:
                x, stats = layer(x, cos, sin, mask, cache, pad_mask)
            if stats is not None:
                routing[i] = stats
        if cache is not None:
            cache.advance(T)
        return x, routing

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
        """Mean next-token cross-entropy; labels are already shifted, -100 = ignored."""
        out = self.forward(input_ids, **kw)
        return F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

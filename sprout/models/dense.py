"""The dense decoder (Qwen3 with QK-norm, Llama without): embeddings -> N x (attention + FFN) -> norm -> head.

    h = x + Attention(RMSNorm(x))        # pre-norm residual blocks
    y = h + FFN(RMSNorm(h))

The feed-forward slot is built by `make_ffn`, so a mixture-of-experts layer can drop in: an FFN
module may set `self.aux_loss` during forward (e.g. load balancing) and the model adds it up.
Other families (sprout.models.moe, deepseek_v3, qwen3_next) subclass `SproutForCausalLM` and
override `make_layer` / `make_ffn` / `make_norm`; the forward pass, caching and I/O stay shared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .cache import KVCache
from .layers import Attention, RMSNorm, RotaryEmbedding, SwiGLU


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [B, T, V]
    aux_loss: torch.Tensor | None = None  # extra training loss from FFN layers (MoE balancing), if any


def make_ffn(cfg: ModelConfig, layer_idx: int) -> nn.Module:
    return SwiGLU(cfg.hidden_size, cfg.intermediate_size)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, attn: nn.Module | None = None, ffn: nn.Module | None = None,
                 norm: type[nn.Module] = RMSNorm):
        super().__init__()
        self.input_layernorm = norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = attn if attn is not None else Attention(cfg, layer_idx)
        self.post_attention_layernorm = norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = ffn if ffn is not None else make_ffn(cfg, layer_idx)

    def forward(self, x, cos, sin, mask, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


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
    with `attention_mask` ([B, past+T], 1 = real token) padding keys are hidden.
    Returns None for the plain causal case so SDPA can use its fused causal kernel.
    """
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
    norm_cls: type[nn.Module] = RMSNorm  # Qwen3-Next uses zero-centred (1 + w) norms

    def make_layer(self, cfg: ModelConfig, layer_idx: int) -> nn.Module:
        """One decoder block; it must accept (x, cos, sin, mask, cache) and hold its FFN as `.mlp`."""
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

    def metrics(self) -> dict[str, float]:
        """Numbers from the last forward pass worth logging (MoE expert load); none for dense models."""
        return {}

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        p = self.lm_head.weight
        c = self.config
        return KVCache(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim, max_len, p.device, p.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        doc_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> CausalLMOutput:
        """input_ids [B, T]. position_ids default to past..past+T-1. doc_ids: packed documents.
        attention_mask [B, past+T]: 1 for real tokens (left padding in batched generation).
        last_only: compute logits for the last position only (decoding saves the big matmul)."""
        x, aux = self.trunk(input_ids, position_ids, doc_ids, attention_mask, cache)
        x = self.model.norm(x)
        if last_only:
            x = x[:, -1:]
        return CausalLMOutput(logits=self.lm_head(x), aux_loss=aux)

    def trunk(self, input_ids, position_ids=None, doc_ids=None, attention_mask=None, cache=None):
        """Embeddings and decoder layers: the last hidden state (before the final norm) and the summed aux loss."""
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(position_ids, x.dtype)
        mask = build_attention_mask(T, past, x.device, doc_ids, attention_mask)
        aux: torch.Tensor | None = None
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache)
            layer_aux = getattr(layer.mlp, "aux_loss", None)
            if layer_aux is not None:
                aux = layer_aux if aux is None else aux + layer_aux
        if cache is not None:
            cache.advance(T)
        return x, aux

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
        """Mean next-token cross-entropy; labels are already shifted, -100 = ignored."""
        out = self.forward(input_ids, **kw)
        return F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)

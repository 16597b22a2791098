"""Named model presets of every family: `--preset NAME` for a fresh model, `model_preset(NAME)` in code.

Dense sizes follow MiniMind's (intermediate_size = 8/3 * hidden rounded up to 64); the family presets are
sized to land where Mini-LLM's README puts them, plus `cpu-*` (minutes on 2 CPU cores) and `tiny*` (tests).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import ModelConfig
from .deepseek_v3 import DeepseekV3Config
from .moe import MoEConfig
from .qwen3_next import Qwen3NextConfig

PRESETS: dict[str, ModelConfig] = {
    "minimind2-small": ModelConfig(
        model_type="llama",
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
    ),
    "minimind2": ModelConfig(
        model_type="llama",
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=2,
    ),
    "minimind3": ModelConfig(
        model_type="qwen3",
        hidden_size=768,
        intermediate_size=2432,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
    ),
    # Sized so that tokenizer + pretrain + SFT + eval fit in ~20 minutes on 2 CPU cores.
    "cpu": ModelConfig(
        model_type="qwen3",
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    ),
    # For unit tests only: a few thousand parameters.
    "tiny": ModelConfig(
        model_type="qwen3",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    ),
    # MiniMind2-MoE: 640 hidden, 8 layers, 1 shared + 4 routed experts, top-2 (~145M params with a 6400 vocab).
    # A shared expert is the qwen2_moe layout (one shared expert behind a sigmoid gate).
    "minimind2-moe": MoEConfig(
        model_type="qwen2_moe",
        hidden_size=640,
        intermediate_size=1728,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=1728,
        shared_expert_intermediate_size=1728,
        tie_word_embeddings=True,
    ),
    # MiniMind3 with 16 fine-grained experts (each 1/4 of the dense FFN), top-4: ~198M total, ~64M active.
    "minimind3-moe": MoEConfig(
        model_type="qwen3_moe",
        hidden_size=768,
        intermediate_size=2432,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        num_experts=16,
        num_experts_per_tok=4,
        moe_intermediate_size=608,
        tie_word_embeddings=True,
    ),
    # Small enough to pretrain for a few minutes on 2 CPU cores.
    "cpu-moe": MoEConfig(
        model_type="qwen3_moe",
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=256,
        max_position_embeddings=4096,
    ),
    # Unit tests.
    "tiny-moe": MoEConfig(
        model_type="qwen3_moe",
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        max_position_embeddings=512,
    ),
    # Mini-LLM's mini_deepseekv3 (its README gives the family and the 100-200M target, vocab 32004, expert-load,
    # sequence-wise aux loss and MTP logging; the sizes below are chosen to land there): MLA with q/kv
    # compression, 1 dense layer then DeepSeek MoE (1 shared + 8 routed, top-2 of 2 groups), one MTP depth.
    "mini-deepseekv3": DeepseekV3Config(
        vocab_size=32004,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        q_lora_rank=384,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        moe_intermediate_size=512,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        max_position_embeddings=4096,
        aux_loss_alpha=0.0001,
        bias_update_rate=0.001,
        num_nextn_predict_layers=1,
        mtp_loss_weight=0.3,
    ),
    "cpu-deepseekv3": DeepseekV3Config(
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        q_lora_rank=128,
        kv_lora_rank=64,
        qk_nope_head_dim=32,
        qk_rope_head_dim=16,
        v_head_dim=32,
        moe_intermediate_size=256,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        max_position_embeddings=4096,
    ),
    "tiny-deepseekv3": DeepseekV3Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=8,
        v_head_dim=16,
        moe_intermediate_size=32,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        first_k_dense_replace=1,
        max_position_embeddings=512,
    ),
    # Mini-LLM's mini_qwen3_next (the README's "Linear Model"; 100-200M target, vocab 32004): 3:1 Gated DeltaNet :
    # gated attention, partial RoPE (25%), MoE with a gated shared expert. Sizes chosen to land in that range.
    "mini-qwen3-next": Qwen3NextConfig(
        vocab_size=32004,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=96,
        linear_num_key_heads=8,
        linear_num_value_heads=16,
        linear_key_head_dim=64,
        linear_value_head_dim=64,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=448,
        shared_expert_intermediate_size=448,
        max_position_embeddings=4096,
    ),
    "cpu-qwen3-next": Qwen3NextConfig(
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=64,
        linear_value_head_dim=64,
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=256,
        shared_expert_intermediate_size=256,
        max_position_embeddings=4096,
    ),
    "tiny-qwen3-next": Qwen3NextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        max_position_embeddings=512,
        chunk_size=8,
    ),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    """A copy of preset `name` with some fields changed (e.g. vocab_size to fit a tokenizer)."""
    if name not in PRESETS:
        raise SystemExit(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)

"""Model configuration shared by every family, and the one Hugging Face config.json conversion they all use.

Field names follow transformers' configs, so `to_hf_dict` / `from_hf_dict` are mostly a copy. Each family
(moe.py, deepseek_v3.py, qwen3_next.py) subclasses `ModelConfig`, adds its fields, and builds its config.json
from `base_hf_dict` and reads one with `config_kwargs_from_hf`. A config that contradicts itself raises
ValueError; nothing is silently overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class ModelConfig:
    """Architecture of a decoder-only transformer; field names follow transformers' configs."""

    model_type: str = "qwen3"  # "qwen3" (QK-norm) or "llama" (no QK-norm)
    vocab_size: int = 6400
    hidden_size: int = 512
    intermediate_size: int = 1408
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    # 0 = derive hidden_size // num_attention_heads in __post_init__ (so it is always a real int afterwards)
    head_dim: int = 0
    rope_theta: float = 1e6
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    initializer_range: float = 0.02
    # Special-token ids match the tokenizer sprout trains (<|endoftext|>=0, <|im_start|>=1, <|im_end|>=2).
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if not self.head_dim:  # unset (0, or null in a config.json)
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.model_type not in ("qwen3", "llama"):
            raise ValueError(f"model_type must be 'qwen3' or 'llama', got {self.model_type!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @property
    def qk_norm(self) -> bool:
        """Qwen3 normalises each query/key head with RMSNorm before RoPE; Llama does not."""
        return self.model_type == "qwen3"

    # ---- Hugging Face config.json ----------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        arch = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[self.model_type]
        d = base_hf_dict(self, arch)
        d.update(head_dim=self.head_dim, attention_bias=self.attention_bias)
        if self.model_type == "llama":
            d["mlp_bias"] = False
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if d.get("model_type") not in ("qwen3", "llama"):
            raise ValueError(
                f"sprout's dense model reads model_type 'qwen3' or 'llama', this folder is {d.get('model_type')!r}"
            )
        return cls(**config_kwargs_from_hf(cls, d))

    def num_parameters(self) -> int:
        h, L, hd = self.hidden_size, self.num_hidden_layers, self.head_dim
        attn = h * hd * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        mlp = 3 * h * self.intermediate_size
        norms = 2 * h + (2 * hd if self.qk_norm else 0)
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return L * (attn + mlp + norms) + emb + h


HF_BASE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def base_hf_dict(cfg: ModelConfig, arch: str) -> dict[str, Any]:
    d: dict[str, Any] = {"architectures": [arch], "model_type": cfg.model_type, "hidden_act": "silu"}
    d.update({k: getattr(cfg, k) for k in HF_BASE_KEYS})
    d.update(
        {
            "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
            "use_cache": True,
        }
    )
    return d


def config_kwargs_from_hf(cls, d: dict[str, Any]) -> dict[str, Any]:
    """The dataclass fields of `cls` found in an HF config dict (RoPE theta and token ids normalised)."""
    if d.get("hidden_act", "silu") != "silu":
        raise ValueError(f"only hidden_act='silu' is supported, got {d['hidden_act']!r}")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ValueError(
            f"RoPE scaling {rope.get('rope_type')!r} in config.json is not supported; "
            "use sprout.models.rope.apply_rope_scaling after loading"
        )
    names = {f.name for f in fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    kw["rope_theta"] = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(kw.get(k), list):
            kw[k] = kw[k][0]
        if kw.get(k) is None:
            kw.pop(k, None)
    return kw

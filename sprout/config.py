"""Typed configuration: model architectures (with named presets) and training recipes.

A recipe is a YAML file whose keys are `TrainConfig` fields; command-line flags and
`key=value` overrides are applied on top of it, so every stage is configured the same way.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

RECIPE_DIR = Path(__file__).parent / "recipes"


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
    head_dim: int | None = None  # defaults to hidden_size // num_attention_heads
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
        if self.head_dim is None:
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
        d: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            # transformers >= 5 reads RoPE settings from rope_parameters.
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "attention_dropout": 0.0,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
            "use_cache": True,
        }
        if self.model_type == "llama":
            d["mlp_bias"] = False
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        if d.get("model_type") not in ("qwen3", "llama"):
            raise ValueError(
                f"sprout's dense model reads model_type 'qwen3' or 'llama', this folder is {d.get('model_type')!r}"
            )
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"only hidden_act='silu' is supported, got {d['hidden_act']!r}")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if rope.get("rope_type", "default") not in ("default", None):
            raise ValueError(f"RoPE scaling {rope.get('rope_type')!r} is not supported by the dense model yet")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["rope_theta"] = float(theta)
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if isinstance(kw.get(k), list):
                kw[k] = kw[k][0]
            if kw.get(k) is None:
                kw.pop(k, None)
        return cls(**kw)

    def num_parameters(self) -> int:
        h, L, hd = self.hidden_size, self.num_hidden_layers, self.head_dim
        attn = h * hd * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        mlp = 3 * h * self.intermediate_size
        norms = 2 * h + (2 * hd if self.qk_norm else 0)
        emb = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return L * (attn + mlp + norms) + emb + h


# MiniMind-compatible sizes. intermediate_size follows MiniMind's rule: 8/3 * hidden rounded up to 64.
PRESETS: dict[str, ModelConfig] = {
    "minimind2-small": ModelConfig(
        model_type="llama", hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=2,
    ),
    "minimind2": ModelConfig(
        model_type="llama", hidden_size=768, intermediate_size=2048, num_hidden_layers=16,
        num_attention_heads=8, num_key_value_heads=2,
    ),
    "minimind3": ModelConfig(
        model_type="qwen3", hidden_size=768, intermediate_size=2432, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4,
    ),
    # Sized so that tokenizer + pretrain + SFT + eval fit in ~20 minutes on 2 CPU cores.
    "cpu": ModelConfig(
        model_type="qwen3", hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    ),
    # For unit tests only: a few thousand parameters.
    "tiny": ModelConfig(
        model_type="qwen3", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    ),
}


def model_preset(name: str, **overrides: Any) -> ModelConfig:
    from . import models  # noqa: F401  registers the presets of the other model families (MoE, ...)

    if name not in PRESETS:
        raise SystemExit(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


@dataclass
class TrainConfig:
    """Everything one training run needs. Recipes (YAML) and CLI overrides fill these fields."""

    stage: str = "pretrain"  # objective name: pretrain, sft, ...
    data: str | None = None  # file or folder; None = built-in data for the stage
    model: str | None = None  # start from this model folder; None = fresh init of `preset`
    preset: str = "cpu"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None  # tokenizer folder; defaults to --model's
    out: str = "runs/default"
    # sequence and batch
    seq_len: int = 512
    batch_size: int = 16
    grad_accum: int = 1
    # optimiser and schedule
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    warmup: float = 0.05  # fraction of the budget (<1) or a number of steps (>=1)
    schedule: str = "cosine"  # cosine | wsd | constant
    decay_fraction: float = 0.2  # wsd: final fraction of the budget spent decaying
    # budgets: the run stops at whichever is reached first; the schedule follows that budget
    epochs: float | None = None
    max_steps: int | None = None
    max_tokens: int | None = None
    max_minutes: float | None = None
    # evaluation, logging, checkpoints
    val_fraction: float = 0.02
    eval_every: int = 200
    eval_batches: int = 20
    log_every: int = 10
    save_every: int = 500
    trackers: list[str] = field(default_factory=list)  # tensorboard, wandb, swanlab
    # hardware
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 on CUDA if supported, else fp32
    compile: bool = False
    num_threads: int | None = None
    seed: int = 42
    resume: bool = False
    # data handling
    skip_invalid: bool = False
    pack: bool = True  # SFT: pack conversations (attention kept inside each) or pad one per row
    num_workers: int = 0
    # stage-specific options read by the objective (LoRA rank, DPO beta, KD teacher, ...); see docs/<stage>.md
    objective_args: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return Path(self.out)


def _coerce(value: str) -> Any:
    """Parse a command-line override value: Python number syntax first (YAML 1.1 would read
    `3e-4` as a string), then YAML rules (bools, lists, dicts, null)."""
    for number in (int, float):
        try:
            return number(value)
        except ValueError:
            pass
    return yaml.safe_load(value)


def load_recipe(name_or_path: str | None, stage: str | None = None) -> dict[str, Any]:
    """A YAML file path, or a built-in recipe name: `NAME-STAGE.yaml` (e.g. cpu-pretrain) or `NAME.yaml`."""
    if not name_or_path:
        return {}
    candidates = [Path(name_or_path)]
    if stage:
        candidates.append(RECIPE_DIR / f"{name_or_path}-{stage}.yaml")
    candidates.append(RECIPE_DIR / f"{name_or_path}.yaml")
    p = next((c for c in candidates if c.is_file()), None)
    if p is None:
        available = sorted(x.stem for x in RECIPE_DIR.glob("*.yaml"))
        raise SystemExit(f"recipe {name_or_path!r} not found; built-in recipes: {', '.join(available)}")
    with open(p, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def apply_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a nested dict (dots reach into dict-valued fields)."""
    out = json.loads(json.dumps(base))
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"override {item!r} must look like key=value (e.g. lr=3e-4)")
        key, value = item.split("=", 1)
        node = out
        parts = key.replace("-", "_").split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _coerce(value)
    return out


def build_train_config(recipe: str | None, stage: str, flags: dict[str, Any], overrides: list[str]) -> TrainConfig:
    """recipe YAML < explicit flags (--data, --out, ...) < key=value overrides."""
    d = load_recipe(recipe, stage)
    d["stage"] = stage
    d.update({k: v for k, v in flags.items() if v is not None})
    d = apply_overrides(d, overrides)
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(d) - known
    if unknown:
        raise SystemExit(f"unknown training option(s): {', '.join(sorted(unknown))}")
    if "betas" in d:
        d["betas"] = tuple(d["betas"])
    for f in fields(TrainConfig):
        # YAML 1.1 reads `lr: 3e-4` as a string; accept it for numeric fields, reject other junk.
        value = d.get(f.name)
        if isinstance(value, str) and f.type.split(" |")[0] in ("float", "int"):
            try:
                d[f.name] = _coerce(value)
            except ValueError:
                pass
            if isinstance(d[f.name], str):
                raise SystemExit(f"{f.name} must be a number, got {value!r}")
    return TrainConfig(**d)

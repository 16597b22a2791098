"""Training configuration: `TrainConfig`, YAML recipes and KEY=VALUE overrides.

Model architectures and their named presets live in sprout.models (config.py, presets.py).

A recipe is a YAML file whose keys are `TrainConfig` fields; command-line flags and
`key=value` overrides are applied on top of it, so every stage is configured the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

RECIPE_DIR = Path(__file__).parent / "recipes"


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
    auto_batch_size: bool = False  # on CUDA out of memory, halve batch_size (doubling grad_accum) until it fits
    # optimiser and schedule
    optimizer: str = "adamw"  # adamw | muon (Muon on hidden matrices, AdamW on the rest; docs/training.md)
    lr: float = 5e-4
    muon_lr: float = 0.02  # Muon's lr for the matrices (the schedule scales it like lr)
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
    keep_checkpoints: int = 2  # the newest N checkpoints are kept, plus the one with the best val_loss
    max_bad_steps: int = 3  # consecutive non-finite loss/gradient steps skipped before the run stops
    trackers: list[str] = field(default_factory=list)  # tensorboard, wandb, swanlab
    # hardware
    device: str = "auto"
    dtype: str = "auto"  # auto: bf16 on CUDA if supported, else fp32
    compile: bool = False
    ce_chunk: int = 0  # >0: LM head + cross-entropy this many positions at a time (no full logits); 0 = plain
    grad_checkpoint: bool = False  # recompute each decoder layer in backward instead of keeping its activations
    num_threads: int | None = None
    # under torchrun: ddp (replicated weights) | fsdp (FSDP2, sharded) | deepspeed (ZeRO, docs/training.md)
    distributed: str = "ddp"
    zero_stage: int = 2  # distributed=deepspeed: 2 shards gradients + optimizer state, 3 also the weights
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

"""Low-rank adapters (LoRA) for sprout models, saved in the layout PEFT reads.

A wrapped linear layer computes

    y = W x + (alpha / r) * B (A dropout(x))        A: [r, in], B: [out, r]

with W frozen. A starts random and B at zero, so the adapted model starts equal to the base.
Only A and B train; merging folds `(alpha / r) * B @ A` into W and the wrapper disappears.

On disk an adapter folder holds `adapter_config.json` and `adapter_model.safetensors` whose keys
are `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight` — the names
`peft.PeftModel.from_pretrained(base, folder)` expects for a causal LM, since sprout's module
paths equal transformers' (model.layers.N.self_attn.q_proj, ...).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..models import SproutForCausalLM

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update. Keeps the base as `base_layer`."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        self.base_layer = base
        self.r, self.alpha = int(r), float(alpha)
        self.scaling = self.alpha / self.r
        p = base.weight
        self.lora_A = nn.Linear(base.in_features, self.r, bias=False, device=p.device, dtype=p.dtype)
        self.lora_B = nn.Linear(self.r, base.out_features, bias=False, device=p.device, dtype=p.dtype)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        for q in base.parameters():
            q.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:  # code that reads `.weight` (dtype/device probes) still works
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight (a new module; self is unchanged)."""
        b = self.base_layer
        out = nn.Linear(
            b.in_features, b.out_features, bias=b.bias is not None, device=b.weight.device, dtype=b.weight.dtype
        )
        with torch.no_grad():
            out.weight.copy_(b.weight + self.delta_weight().to(b.weight.dtype))
            if b.bias is not None:
                out.bias.copy_(b.bias)
        return out


def _matches(name: str, targets: Iterable[str]) -> bool:
    """PEFT's rule for a list of target names: the module's last path component equals one of them
    (a dotted target must match the end of the path)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(
    model: SproutForCausalLM,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Iterable[str] = DEFAULT_TARGETS,
) -> list[str]:
    """Freeze every parameter of `model`, wrap each targeted nn.Linear in a LoRALinear (in place).
    Returns the wrapped module paths. lm_head and embeddings are never targeted by default."""
    targets = list(target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if not names:
        raise ValueError(f"no nn.Linear module matches target_modules {targets}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    model.lora_config = {
        "r": int(r),
        "lora_alpha": float(alpha),
        "lora_dropout": float(dropout),
        "target_modules": sorted(set(targets)),
    }
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights under PEFT's key names."""
    out = {}
    for name, m in lora_modules(model).items():
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().to("cpu", torch.float32).contiguous()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().to("cpu", torch.float32).contiguous()
    return out


def save_adapter(model: SproutForCausalLM, folder: str | Path, base_model: str | None = None) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (PEFT layout, plain LoRA: no DoRA, no bias)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lc = getattr(model, "lora_config", None)
    if lc is None:
        raise ValueError("the model carries no LoRA adapters (apply_lora first)")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model) if base_model else None,
        "r": lc["r"],
        "lora_alpha": lc["lora_alpha"],
        "lora_dropout": lc["lora_dropout"],
        "target_modules": lc["target_modules"],
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_file(adapter_state_dict(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise SystemExit(f"{folder} is not a LoRA adapter folder: {path} is missing")
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise SystemExit(f"{path}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    if cfg.get("use_dora") or cfg.get("bias", "none") != "none" or cfg.get("use_rslora"):
        raise SystemExit(f"{path}: DoRA, rsLoRA and LoRA biases are not supported")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise SystemExit(f"{path}: per-module rank/alpha patterns are not supported")
    return cfg


def load_adapter(model: SproutForCausalLM, folder: str | Path) -> SproutForCausalLM:
    """Wrap `model` with the adapter in `folder` (unmerged) and load its weights."""
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    targets = cfg["target_modules"]
    if isinstance(targets, str):  # PEFT also allows a regex; we accept the plain-name form only
        targets = [targets]
    apply_lora(model, cfg["r"], cfg["lora_alpha"], 0.0, targets)
    model.lora_config["lora_dropout"] = float(cfg.get("lora_dropout", 0.0))
    state = load_file(str(folder / WEIGHTS_FILE))
    mods = lora_modules(model)
    seen = set()
    for key, value in state.items():
        k = key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key
        k = k.replace(".default.", ".")  # tolerate files written with the adapter name inside
        path, _, leaf = k.rpartition(".lora_")
        part = "lora_" + leaf.split(".")[0]
        if path not in mods or part not in ("lora_A", "lora_B"):
            raise SystemExit(f"{folder}: adapter weight {key!r} matches no LoRA module of this model")
        target = getattr(mods[path], part).weight
        if target.shape != value.shape:
            raise SystemExit(f"{folder}: {key} has shape {tuple(value.shape)}, the model needs {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(value.to(target.dtype))
        seen.add((path, part))
    missing = [f"{p}.{x}" for p in mods for x in ("lora_A", "lora_B") if (p, x) not in seen]
    if missing:
        raise SystemExit(f"{folder}: adapter file lacks {missing[:4]}")
    return model


def merge_lora(model: SproutForCausalLM) -> SproutForCausalLM:
    """Fold every adapter into its base weight and remove the wrappers (in place); returns model."""
    for name, m in lora_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.merged())
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model

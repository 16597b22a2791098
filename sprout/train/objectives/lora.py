"""`sprout train lora`: SFT through low-rank adapters on a frozen base model.

objective_args: r (8), alpha (16), dropout (0.05), target_modules (every attention and MLP
projection), dataset ("identity" or "domain" built-in set when no data= is given), name / maker
(identity set), adapter (continue training an existing adapter folder).
The run folder becomes a PEFT adapter folder (adapter_config.json + adapter_model.safetensors).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from ...models import SproutForCausalLM
from ..lora import DEFAULT_TARGETS, apply_lora, load_adapter, lora_parameters, save_adapter
from . import register
from .base import sprout_model
from .lm import SFTObjective


@register
class LoRAObjective(SFTObjective):
    name = "lora"
    loss_label = "cross-entropy on assistant tokens, nats/token (adapter only trained)"
    healthy = (
        "A small set is learned fast: the loss falls by several nats within a few hundred steps and "
        "validation loss follows; only the adapter's parameters change."
    )
    data_kind = "sft"

    @property
    def args(self) -> dict[str, Any]:
        return self.cfg.objective_args or {}

    def build_model(self, tokenizer: Any) -> SproutForCausalLM:
        if not self.cfg.model:
            raise SystemExit("lora trains adapters on an existing model: give model=BASE_MODEL_DIR")
        model = super().build_lm(tokenizer)
        if self.args.get("adapter"):
            load_adapter(model, self.args["adapter"])
            for _, p in lora_parameters(model):
                p.requires_grad_(True)
        else:
            apply_lora(
                model,
                r=int(self.args.get("r", 8)),
                alpha=float(self.args.get("alpha", 16)),
                dropout=float(self.args.get("dropout", 0.05)),
                target_modules=self.args.get("target_modules", DEFAULT_TARGETS),
            )
        return model

    def trainable_parameters(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(lora_parameters(model))

    def data_source(self) -> str:
        dataset = self.args.get("dataset", "identity")
        kw = {k: self.args[k] for k in ("name", "maker") if k in self.args and dataset == "identity"}
        return self.builtin_or_data(dataset, **kw)

    def cache_dir(self) -> Path:
        return (
            Path(self.cfg.out)
            / "tokenized"
            / f"lora-{self.args.get('dataset', 'identity') if not self.cfg.data else 'data'}"
        )

    def save(self, model: nn.Module, tokenizer: Any, out: Path) -> None:
        base = str(Path(self.cfg.model).resolve()) if self.cfg.model else None  # build_model requires cfg.model
        save_adapter(sprout_model(model), out, base_model=base)
        if tokenizer is not None:
            tokenizer.save(out)

"""`sprout train reward`: a Bradley–Terry reward model from preference pairs.

A scalar head on the starting model's trunk scores a whole conversation; for a pair
    L = -log sigmoid(s(chosen) - s(rejected))
so s is a logit of "this reply is preferred". Data: DPO-format pairs (data=FILE, or the built-in
insuranceqa pairs: gold answer vs one of the question's own same-domain negatives; held-out pairs
from the valid split). The output is a standard sequence-classification folder
(Qwen3ForSequenceClassification, num_labels 1) that transformers loads, and that the RL stages take
as objective_args.reward_model. Metric: accuracy = fraction of pairs with s(chosen) > s(rejected).
objective_args: limit (train pairs), val_limit (400).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...rl.reward_model import RewardModel
from . import register
from .base import Objective
from .dpo import PairDataset, pad_pairs, read_pairs


@register
class RewardObjective(Objective):
    name = "reward"

    @property
    def args(self) -> dict[str, Any]:
        return self.cfg.objective_args or {}

    def build_model(self, tokenizer: Any) -> nn.Module:
        if not self.cfg.model:
            raise SystemExit("reward starts from a trained model's trunk: give model=DIR")
        return RewardModel(self.build_lm(tokenizer))

    def _pairs(self, source: str, tokenizer: Any, limit: int | None) -> PairDataset:
        return PairDataset(read_pairs(source, tokenizer, self.cfg.seq_len, limit, self.cfg.skip_invalid))

    def datasets(self, tokenizer: Any) -> tuple[Dataset, Dataset | None]:
        limit = self.args.get("limit")
        train = self._pairs(self.builtin_or_data("dpo"), tokenizer, int(limit) if limit else None)
        val_src = Path(self.cfg.out) / "data" / "builtin-dpo-heldout.jsonl"
        if not val_src.exists():
            from ...data.builtin_sets import write_post_builtin

            write_post_builtin("dpo-heldout", val_src)
        return train, self._pairs(str(val_src), tokenizer, int(self.args.get("val_limit", 400)))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_pairs(items)

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        s = model(batch["input_ids"], batch["attention_mask"])
        chosen, rejected = s.chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()
        return loss, {
            "accuracy": (chosen > rejected).float().mean().detach(),
            "margin": (chosen - rejected).mean().detach(),
        }

    def save(self, model: nn.Module, tokenizer: Any, out: Path) -> None:
        if not isinstance(model, RewardModel):
            raise TypeError(f"expected the RewardModel that build_model made, got {type(model).__name__}")
        model.save(out)
        if tokenizer is not None:
            tokenizer.save(out)

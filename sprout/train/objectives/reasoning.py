"""`sprout train reasoning` and `sprout train tools`: SFT on the built-in reasoning / tool-use sets.

Both are plain SFT (the chat template puts `reasoning_content` inside <think>…</think> and tool
calls inside <tool_call>…</tool_call>) with one option: objective_args.tag_weight (default 1, off)
multiplies the loss on the format tag tokens (<think>, </think>, <tool_call>, </tool_call>, or
objective_args.tag_tokens) so a small model keeps the format. The loss is then
sum(w * ce) / sum(w) over labelled positions; the logged `ce` stays the unweighted mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .lm import SFTObjective, model_inputs

TAGS = ("<think>", "</think>", "<tool_call>", "</tool_call>")


def tag_weighted_ce(
    logits: torch.Tensor, labels: torch.Tensor, tag_ids: torch.Tensor, weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss, plain mean CE) over labels != -100."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, reduction="none")
    lab = labels.flatten()
    valid = (lab != -100).float()
    w = valid * torch.where(torch.isin(lab, tag_ids), weight, 1.0)
    plain = (ce * valid).sum() / valid.sum().clamp(min=1)
    return (ce * w).sum() / w.sum().clamp(min=1e-9), plain


class _TaggedSFT(SFTObjective):
    builtin = ""

    @property
    def args(self) -> dict[str, Any]:
        return self.cfg.objective_args or {}

    def load_tokenizer(self) -> Any:
        tok = super().load_tokenizer()
        names = self.args.get("tag_tokens", TAGS)
        missing = [t for t in names if not tok.has_token(t)]
        if missing:  # the data writes these tags; as several BPE pieces the model could not learn them as one
            raise SystemExit(
                f"the tokenizer of {self.cfg.tokenizer or self.cfg.model} has no {', '.join(missing)} "
                f"token, which the {self.name} stage's data is written with; use a tokenizer that has "
                "them (sprout's own, Qwen3's) or pretrain with one"
            )
        self.tag_ids = torch.tensor([tok.token_id(t) for t in names])
        return tok

    def data_source(self) -> str:
        kw = {
            k: self.args[k] for k in ("n", "think_fraction", "all_tools_fraction", "direct_fraction") if k in self.args
        }
        return self.builtin_or_data(self.builtin, **kw)

    def cache_dir(self) -> Path:
        return Path(self.cfg.out) / "tokenized" / self.builtin

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        weight = float(self.args.get("tag_weight", 1.0))
        if weight == 1.0:
            return super().loss(model, batch)
        out = model(batch["input_ids"], **model_inputs(batch))
        loss, ce = tag_weighted_ce(out.logits, batch["labels"], self.tag_ids.to(batch["labels"].device), weight)
        extra, metrics = self.model_losses(out, batch["labels"], batch.get("doc_ids"))
        metrics["ce"] = ce.detach()
        return (loss if extra is None else loss + extra), metrics


@register
class ReasoningObjective(_TaggedSFT):
    name = "reasoning"
    loss_label = "cross-entropy on assistant tokens, <think> tags weighted by tag_weight"
    healthy = (
        "The loss falls fast (the template of a <think> block is learned in the first few dozen steps), "
        "then slowly; `ce` is the unweighted loss. Check the format with `sprout eval skills reasoning`."
    )
    plot_metrics = ("ce",)
    builtin = "reasoning"


@register
class ToolsObjective(_TaggedSFT):
    name = "tools"
    loss_label = "cross-entropy on assistant tokens (tool calls and answers), tags weighted by tag_weight"
    healthy = (
        "The loss falls from about 4 to below 1: the call protocol (JSON call, read the result, answer) is "
        "learned in the first ~150 steps, copying the right digits takes the rest. Check with "
        "`sprout eval skills tools`."
    )
    plot_metrics = ("ce",)
    builtin = "tools"

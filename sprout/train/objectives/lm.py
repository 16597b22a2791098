"""Next-token prediction objectives: pretraining on raw text and SFT on conversations.

Both minimise the same cross-entropy; they differ only in data. Pretraining packs documents back
to back and predicts every token. SFT renders conversations with the chat template and predicts
only what the assistant says (labels are -100 elsewhere), packing several conversations per row
with `doc_ids` so attention never crosses from one conversation into another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...models.dense import CausalLMOutput, SproutForCausalLM, collect_routing
from ..chunked_ce import linear_cross_entropy, supports_chunked_ce
from . import register
from .base import Objective


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The optional forward arguments a batch carries (packing positions/documents, padding mask)."""
    return {k: batch[k] for k in ("position_ids", "doc_ids", "attention_mask") if k in batch}


class CausalLMObjective(Objective):
    """Shared loss: mean CE over labelled positions, plus `model_losses` (MTP on the same labels, MoE balance)."""

    lm_loss = True
    plot_metrics: tuple[str, ...] = ("ce", "aux_loss")

    data_kind = ""  # record kind for sprout.data readers and built-in data

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        labels = batch["labels"]
        if self.cfg.ce_chunk > 0 and supports_chunked_ce(model):
            out, ce = self._chunked_loss(model, batch)
        else:
            out = model(batch["input_ids"], **model_inputs(batch))
            # fp32 softmax: in bf16 the log-probabilities of a 6k+ vocabulary lose too much precision.
            ce = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        extra, metrics = self.model_losses(out, labels, batch.get("doc_ids"))
        metrics["ce"] = ce.detach()
        return (ce if extra is None else ce + extra), metrics

    def _chunked_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[CausalLMOutput, torch.Tensor]:
        """The same CE as above with the head applied `ce_chunk` positions at a time (sprout/train/chunked_ce.py):
        the full [B, T, V] logits never exist. The output carries the routing results, not logits."""
        lm = cast(SproutForCausalLM, model)  # supports_chunked_ce checked it
        h, routing = lm.trunk(batch["input_ids"], **model_inputs(batch))
        x = lm.model.norm(h)
        ce = linear_cross_entropy(x, lm.lm_head.weight, batch["labels"], self.cfg.ce_chunk)
        aux, load = collect_routing(routing)
        return CausalLMOutput(logits=x.new_empty(0), aux_losses=aux, expert_load=load), ce

    def data_source(self) -> str:
        """cfg.data, or the built-in corpus for this stage."""
        return self.builtin_or_data(self.data_kind)

    def cache_dir(self) -> Path:
        """Pre-tokenized shards live beside the run; the data module re-uses them when the key matches."""
        return Path(self.cfg.out) / "tokenized" / self.data_kind


@register
class PretrainObjective(CausalLMObjective):
    name = "pretrain"
    loss_label = "cross-entropy, nats/token (+ MoE balance loss)"
    healthy = (
        "The loss starts near ln(vocab_size) (8.76 for 6,400 tokens), falls steeply over the first few "
        "percent of tokens, then slowly; validation loss stays within a few tenths of the training loss and "
        "grad_norm settles below grad_clip after warmup."
    )
    data_kind = "pretrain"

    def datasets(self, tokenizer: Any) -> tuple[Dataset, Dataset | None]:
        from ...data.datasets import PretrainDataset
        from ...data.tokenized import describe_meta, tokenize_pretrain

        cache = self.cache_dir()
        meta = tokenize_pretrain(
            self.data_source(),
            tokenizer,
            cache,
            val_fraction=self.cfg.val_fraction,
            seed=self.cfg.seed,
            skip_invalid=self.cfg.skip_invalid,
        )
        print(describe_meta(meta))
        val = None  # val_fraction=0: no validation
        if self.cfg.val_fraction > 0 and meta["val"]["tokens"] <= self.cfg.seq_len:
            print(
                f"validation off: the {meta['val']['tokens']} held-out tokens do not fill one window of "
                f"{self.cfg.seq_len}+1; raise val_fraction (now {self.cfg.val_fraction}) for a validation loss"
            )
        elif self.cfg.val_fraction > 0:
            val = PretrainDataset(cache / "val.bin", self.cfg.seq_len)
        return PretrainDataset(cache / "train.bin", self.cfg.seq_len), val


@register
class SFTObjective(CausalLMObjective):
    name = "sft"
    loss_label = "cross-entropy on assistant tokens, nats/token"
    healthy = (
        "The loss starts near the base model's loss on chat text and falls over the first pass; validation "
        "loss follows it. Validation loss rising while training loss falls means too many epochs."
    )
    data_kind = "sft"

    def datasets(self, tokenizer: Any) -> tuple[Dataset, Dataset | None]:
        from ...data.datasets import SFTDataset
        from ...data.tokenized import describe_meta, tokenize_sft

        cache = self.cache_dir()
        meta = tokenize_sft(
            self.data_source(),
            tokenizer,
            cache,
            self.cfg.seq_len,
            val_fraction=self.cfg.val_fraction,
            seed=self.cfg.seed,
            skip_invalid=self.cfg.skip_invalid,
        )
        print(describe_meta(meta))
        # val_fraction=0, or a split too small to hold a conversation: no validation.
        val = SFTDataset(cache / "val", self.cfg.seq_len, pack=self.cfg.pack) if meta["val"]["conversations"] else None
        return SFTDataset(cache / "train", self.cfg.seq_len, pack=self.cfg.pack), val

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        # Rows are padded after the last conversation; padding is not data. Packed rows give padding the
        # doc id after the row's last conversation; unpacked rows mark it with attention_mask.
        if "attention_mask" in batch:
            return int(batch["attention_mask"].sum())
        doc = batch["doc_ids"]
        last = torch.where(batch["labels"] != -100, doc, -1).amax(-1, keepdim=True)
        return int((doc <= last).sum())

"""Held-out loss and perplexity over a tokenized dataset (the same items the trainer sees)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def dataset_loss(model: nn.Module, dataset, batch_size: int = 8, max_items: int | None = None) -> dict:
    """Token-weighted mean cross-entropy over every labelled token (labels != -100).

    Token weighting (not a mean of batch means) makes the figure independent of batch size and
    of how conversations were packed into rows."""
    device = next(model.parameters()).device
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        total += float(F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"))
        count += int((labels != -100).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50)), "tokens": count}

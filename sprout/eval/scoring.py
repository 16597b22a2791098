"""Log-likelihood scoring: the primitive behind perplexity and multiple-choice evaluation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models import SproutForCausalLM


@torch.no_grad()
def continuation_logprobs(
    model: SproutForCausalLM, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16
) -> list[tuple[float, int]]:
    """For each (context, continuation) token pair return (sum of log p(continuation | context), its length).

    Sequences are right-padded: with causal attention, padding after a sequence cannot change
    the logits of the tokens before it, so no attention mask is needed.
    """
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
    # Sort by length so each batch pads little; restore the order at the end.
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), model.config.pad_token_id, dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
        ids = ids.to(device)
        logp = F.log_softmax(model(ids).logits.float(), dim=-1)
        for r, i in enumerate(idx):
            ctx, cont = pairs[i]
            if not cont:
                continue
            # token at position p is predicted by the logits at p-1
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1, device=device)
            tgt = torch.tensor(cont, device=device)
            results[i] = (float(logp[r, pos, tgt].sum()), len(cont))
    return results


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (better than ±1.96·sqrt(p(1-p)/n) near 0 or 1)."""
    if total == 0:
        return (0.0, 1.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))

"""Length extrapolation: perplexity at 1x, 2x, 4x the training length, with and without RoPE scaling.

A model trained on windows of `train_len` tokens has never seen larger position angles. Plain
RoPE usually breaks past that length; position interpolation (linear), NTK-aware base scaling and
YaRN (per-frequency interpolation plus attention temperature) stretch the positions back into the
trained range. The scaling factor is set to length / train_len for each row.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data.readers import read_records
from ..models import SproutForCausalLM, apply_rope_scaling

KINDS = ("none", "linear", "ntk", "yarn")


@torch.no_grad()
def context_length_table(
    model: SproutForCausalLM,
    tokenizer,
    path: str,
    train_len: int,
    multiples=(1, 2, 4),
    max_windows: int = 32,
    batch_size: int = 4,
) -> list[dict]:
    """Rows {"length", "none", "linear", "ntk", "yarn"} of perplexity over non-overlapping windows of the
    file's token stream (documents joined by <|endoftext|>). The same windows are used for every method."""
    stream: list[int] = []
    need = max(multiples) * train_len * max_windows + 1
    for rec in read_records(path, "pretrain"):
        stream += tokenizer.encode(rec["text"]) + [tokenizer.doc_sep_id]
        if len(stream) >= need:
            break
    device = next(model.parameters()).device
    rows = []
    for m in multiples:
        length = m * train_len
        n = min(max_windows, (len(stream) - 1) // (length + 1))
        if n == 0:
            raise SystemExit(f"{path} has too few tokens for windows of {length}")
        windows = torch.tensor(stream[: n * (length + 1)], device=device).view(n, length + 1)
        row: dict = {"length": length, "windows": n}
        for kind in KINDS:
            apply_rope_scaling(model, kind, float(m), original_max_position=train_len)
            nll, count = 0.0, 0
            for s in range(0, n, batch_size):
                x = windows[s : s + batch_size]
                logits = model(x[:, :-1]).logits.float()
                nll += float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum"))
                count += x[:, 1:].numel()
            row[kind] = math.exp(nll / count)
        rows.append(row)
    apply_rope_scaling(model, "none", 1.0)
    return rows


def table_markdown(rows: list[dict], train_len: int) -> str:
    lines = [
        f"Perplexity by evaluation length (trained at {train_len} tokens; factor = length / {train_len})",
        "",
        "| length | " + " | ".join(KINDS) + " |",
        "|---" * (len(KINDS) + 1) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['length']} ({r['length'] // train_len}×) | " + " | ".join(f"{r[k]:.1f}" for k in KINDS) + " |"
        )
    return "\n".join(lines)

"""`sprout train dpo`: direct preference optimisation on (chosen, rejected) conversation pairs.

With r(y) = beta * (log pi(y|x) - log pi_ref(y|x)) summed over the response tokens:
    sigmoid (DPO):  L = -log sigmoid(r(y_w) - r(y_l))
    ipo:            L = (d - 1 / (2 beta))^2,  d = per-token-mean log-ratio difference (as TRL normalises it)

Reference log-probabilities are computed once, before training, in one pass over the data with the
starting model (or objective_args.ref_model) and stored with the tokenized dataset, so no second
model sits in memory. objective_args.reference="frozen" keeps a frozen copy and scores every batch
instead. objective_args.rpo_alpha adds alpha times the chosen answers' mean token cross-entropy (RPO, as
TRL's rpo_alpha). objective_args: beta (0.1), loss ("sigmoid" | "ipo"), reference ("precompute" | "frozen"),
rpo_alpha (0), ref_model (folder; default the starting model), val_data (held-out pairs; default built-in
dpo-heldout), val_limit (400), limit (train pairs, default all).
Metrics: rewards_chosen, rewards_rejected, margin, accuracy (fraction with r(y_w) > r(y_l)).
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...models import SproutForCausalLM, load_model
from ..logging import format_duration
from . import register
from .base import Objective, move_batch

LOSSES = ("sigmoid", "ipo")


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
    rpo_alpha: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean preference loss over the batch and its metrics; inputs are summed response log-probs [B].
    `rpo_alpha` > 0 adds that times the chosen answers' mean token cross-entropy (RPO; TRL's loss_type
    ["sigmoid", "sft"] with weights [1, alpha]), so the margin cannot grow by lowering both answers."""
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    if loss_type == "sigmoid":
        per = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("ipo needs the response token counts")
        d = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        per = (d - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}; choose one of {', '.join(LOSSES)}")
    loss = per.mean()
    metrics: dict[str, torch.Tensor] = {}
    if rpo_alpha:
        if chosen_tokens is None:
            raise ValueError("rpo_alpha needs the chosen answers' token counts")
        nll = -chosen_logps.sum() / chosen_tokens.sum().clamp(min=1)
        loss = loss + rpo_alpha * nll
        metrics["nll_chosen"] = nll.detach()
    rc, rr = (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()
    metrics |= {
        "rewards_chosen": rc.mean(),
        "rewards_rejected": rr.mean(),
        "margin": (rc - rr).mean(),
        "accuracy": (rc > rr).float().mean(),
    }
    return loss, metrics


def sequence_logps(
    model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log p(label) over labelled positions per row, and the number of those positions."""
    kw = {"attention_mask": attention_mask} if attention_mask is not None else {}
    return response_logps(model(input_ids, **kw).logits, labels)


def response_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`sequence_logps` from logits [B, T, V] already computed."""
    logits = logits.float()
    mask = labels != -100
    safe = labels.clamp(min=0)
    logp = torch.log_softmax(logits, -1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1), mask.sum(-1)


def _last_turn_labels(ids: list[int], mask: list[bool]) -> list[int]:
    """Shifted labels on the last assistant turn only (earlier turns are shared prompt)."""
    end = len(mask)
    while end > 0 and not mask[end - 1]:
        end -= 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    labels = [-100] * len(ids)
    for t in range(max(start, 1), end):
        labels[t - 1] = ids[t]
    return labels


class PairDataset(Dataset):
    """Tokenized pairs: lists of token lists, plus reference log-probs once computed."""

    def __init__(self, data: dict[str, Any]):
        self.d = data

    def __len__(self) -> int:
        return len(self.d["chosen"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: torch.tensor(self.d[k][i]) for k in ("chosen", "chosen_labels", "rejected", "rejected_labels")}
        if "ref_chosen" in self.d:
            item["ref_chosen"] = self.d["ref_chosen"][i]
            item["ref_rejected"] = self.d["ref_rejected"][i]
        return item


def tokenize_pairs(records, tokenizer, seq_len: int) -> dict[str, Any]:
    from ...tokenizer import normalize_record

    out: dict[str, list] = {"chosen": [], "chosen_labels": [], "rejected": [], "rejected_labels": []}
    for rec in records:
        enc = {}
        for side in ("chosen", "rejected"):
            msgs, tools = normalize_record({"conversations": rec[side], "tools": rec.get("tools")})
            ids, mask = tokenizer.encode_chat(msgs, tools)
            ids, mask = ids[:seq_len], mask[:seq_len]
            labels = _last_turn_labels(ids, mask)
            if all(x == -100 for x in labels):
                break
            enc[side] = (ids, labels)
        else:
            for side in ("chosen", "rejected"):
                out[side].append(enc[side][0])
                out[f"{side}_labels"].append(enc[side][1])
    return out


def read_pairs(source: str, tokenizer: Any, seq_len: int, limit: int | None, skip_invalid: bool) -> dict[str, Any]:
    """Read up to `limit` preference records from `source` and tokenize them (`tokenize_pairs`); none usable is
    an error. Shared by DPO and the reward model."""
    from ...data.readers import read_records

    records = []
    for rec in read_records(source, "dpo", skip_invalid=skip_invalid):
        records.append(rec)
        if limit and len(records) >= limit:
            break
    data = tokenize_pairs(records, tokenizer, seq_len)
    if not data["chosen"]:
        raise SystemExit(f"{source}: no usable preference pairs")
    return data


def pad_pairs(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """[chosen rows; rejected rows] right-padded to the longest: input_ids, labels, attention_mask."""
    seqs = [it["chosen"] for it in items] + [it["rejected"] for it in items]
    labs = [it["chosen_labels"] for it in items] + [it["rejected_labels"] for it in items]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for r, (s, lab) in enumerate(zip(seqs, labs)):
        ids[r, : len(s)], labels[r, : len(lab)], att[r, : len(s)] = s, lab, 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": att}
    if "ref_chosen" in items[0]:
        batch["ref_chosen"] = torch.tensor([float(it["ref_chosen"]) for it in items])
        batch["ref_rejected"] = torch.tensor([float(it["ref_rejected"]) for it in items])
    return batch


@register
class DPOObjective(Objective):
    name = "dpo"
    loss_label = "DPO loss, -log sigmoid(beta * reward margin); 0.693 at the start"
    healthy = (
        "The loss starts at ln 2 = 0.693 (policy = reference), the reward margin grows and accuracy "
        "(chosen reward above rejected) rises well above 0.5; chosen log-probabilities should not collapse."
    )
    plot_metrics = (
        "margin",
        "accuracy",
        "nll_chosen",
        "rewards_chosen",
        "rewards_rejected",
        "logps_chosen",
        "logps_rejected",
    )
    policy: nn.Module  # the model being trained: set by setup(), which the engine calls before datasets()

    @property
    def args(self) -> dict[str, Any]:
        return self.cfg.objective_args or {}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.beta = float(self.args.get("beta", 0.1))
        self.loss_type = self.args.get("loss", "sigmoid")
        self.reference = self.args.get("reference", "precompute")
        self.rpo_alpha = float(self.args.get("rpo_alpha", 0.0))
        if self.loss_type not in LOSSES:
            raise SystemExit(f"objective_args.loss must be one of {', '.join(LOSSES)}, got {self.loss_type!r}")
        if self.reference not in ("precompute", "frozen"):
            raise SystemExit(f"objective_args.reference must be precompute or frozen, got {self.reference!r}")
        self.ref_model: nn.Module | None = None
        self.device = torch.device("cpu")
        self.loss_label, self.healthy = self._describe_loss()

    def _describe_loss(self) -> tuple[str, str]:
        """The logged loss and its healthy start for this loss type and RPO weight (the class attributes describe
        plain sigmoid DPO). With RPO the logged loss also holds the chosen answers' cross-entropy (`nll_chosen`)."""
        if self.loss_type == "ipo":
            start = 1 / (2 * self.beta) ** 2
            label = f"IPO loss, (per-token reward margin - 1/(2 beta))^2; {start:g} at the start"
            first = f"The IPO term starts at 1/(4 beta^2) = {start:g} (policy = reference)"
        else:
            label, first = self.loss_label, "The DPO term starts at ln 2 = 0.693 (policy = reference)"
        grows = "the reward margin grows and accuracy (chosen reward above rejected) rises well above 0.5"
        if not self.rpo_alpha:
            return label, f"{first}, {grows}; chosen log-probabilities should not collapse."
        label += f" + {self.rpo_alpha:g} x the chosen answers' cross-entropy (RPO)"
        healthy = (
            f"{first}; the logged loss adds {self.rpo_alpha:g} x the chosen answers' cross-entropy "
            f"(nll_chosen, near the SFT model's loss on them), so it starts above that. {grows.capitalize()}; "
            "nll_chosen may rise a little, but a climb of a whole nat would mean the margin grows by lowering both "
            "answers."
        )
        return label, healthy

    def build_model(self, tokenizer: Any) -> SproutForCausalLM:
        if not self.cfg.model:
            raise SystemExit("dpo starts from a trained (SFT) model: give model=DIR")
        return super().build_lm(tokenizer)

    def _reference_source(self) -> str:
        """The reference model's folder: objective_args.ref_model, else the SFT model the policy starts from."""
        source = self.args.get("ref_model") or self.cfg.model
        if not source:
            raise SystemExit("dpo starts from a trained (SFT) model: give model=DIR")
        return str(source)

    def _reference(self) -> nn.Module:
        if self.args.get("ref_model"):
            return load_model(self.args["ref_model"], device=self.device).eval().requires_grad_(False)
        return copy.deepcopy(self.policy).eval().requires_grad_(False)

    def setup(self, model: nn.Module, device: torch.device) -> None:
        self.policy, self.device = model, device
        if self.reference == "frozen":
            self.ref_model = self._reference()

    # ---- data --------------------------------------------------------------------------
    def _load_split(self, source: str, tokenizer: Any, split: str, limit: int | None) -> PairDataset:
        from ...data.tokenized import tokenizer_fingerprint

        p = Path(source)
        key = json.dumps(
            [
                str(p.resolve()),
                p.stat().st_mtime_ns if p.is_file() else 0,
                self.cfg.seq_len,
                limit,
                tokenizer_fingerprint(tokenizer),
                self.reference,
                str(Path(self._reference_source()).resolve()),
            ]
        )
        key = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache = Path(self.cfg.out) / "tokenized" / "dpo" / f"{split}-{key}.pt"
        if cache.exists():  # tokens and reference log-probs, computed once
            return PairDataset(torch.load(cache, weights_only=True))
        data = read_pairs(source, tokenizer, self.cfg.seq_len, limit, self.cfg.skip_invalid)
        if self.reference == "precompute":
            self._precompute(data)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(data, cache)
        return PairDataset(data)

    @torch.no_grad()
    def _precompute(self, data: dict[str, Any]) -> None:
        """One pass of the reference model over every pair; results stored with the dataset."""
        ref = self._reference() if self.args.get("ref_model") else self.policy
        was_training = ref.training
        ref.eval()
        ds = PairDataset(data)
        chosen, rejected = [], []
        bs = max(1, self.cfg.batch_size)
        # One forward pass per pair before the first step: minutes on a CPU for a few thousand pairs, so say so.
        print(f"dpo: reference log-probs of {len(ds):,} pairs (cached with the tokens for later runs)", flush=True)
        t0, shown = time.perf_counter(), 0.0
        for s in range(0, len(ds), bs):
            batch = move_batch(pad_pairs([ds[i] for i in range(s, min(s + bs, len(ds)))]), self.device)
            logps, _ = sequence_logps(ref, batch["input_ids"], batch["labels"], batch["attention_mask"])
            c, r = logps.float().cpu().chunk(2)
            chosen += c.tolist()
            rejected += r.tolist()
            done = len(chosen) / len(ds)
            if done - shown >= 0.2 or done == 1.0:
                shown, spent = done, time.perf_counter() - t0
                print(f"  {done:.0%}  eta {format_duration(spent / done * (1 - done))}", flush=True)
        ref.train(was_training)
        data["ref_chosen"], data["ref_rejected"] = chosen, rejected

    def datasets(self, tokenizer: Any) -> tuple[Dataset, Dataset | None]:
        limit = self.args.get("limit")
        train = self._load_split(self.builtin_or_data("dpo"), tokenizer, "train", limit)
        val_src = self.args.get("val_data")
        if val_src is None:
            from ...data.builtin_sets import write_post_builtin

            val_src = Path(self.cfg.out) / "data" / "builtin-dpo-heldout.jsonl"
            if not val_src.exists():
                write_post_builtin("dpo-heldout", val_src)
        val = (
            self._load_split(str(val_src), tokenizer, "val", int(self.args.get("val_limit", 400))) if val_src else None
        )
        return train, val

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return pad_pairs(items)

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    # ---- loss ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        out = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        logps, n = response_logps(out.logits, batch["labels"])
        chosen, rejected = logps.chunk(2)
        nc, nr = n.chunk(2)
        if "ref_chosen" in batch:
            ref_c, ref_r = batch["ref_chosen"].float(), batch["ref_rejected"].float()
        else:
            with torch.no_grad():
                ref = self.ref_model if self.ref_model is not None else self._reference()
                ref_logps, _ = sequence_logps(ref, batch["input_ids"], batch["labels"], batch["attention_mask"])
            ref_c, ref_r = ref_logps.float().chunk(2)
        loss, metrics = dpo_loss(chosen, rejected, ref_c, ref_r, self.beta, self.loss_type, nc, nr, self.rpo_alpha)
        metrics["logps_chosen"] = chosen.detach().mean()
        metrics["logps_rejected"] = rejected.detach().mean()
        # MoE balancing applies as in any stage; MTP heads have no preference target, so labels=None skips them.
        extra, more = self.model_losses(out, None)
        metrics.update(more)
        return (loss if extra is None else loss + extra), metrics

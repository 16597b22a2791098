"""AdamW with two parameter groups, and the learning-rate schedule as a function of budget progress.

Weight decay pulls weights toward zero. That is a useful prior on the big projection matrices
(it keeps their norm, and so the activations, in check), but harmful on:
  - norm gains (RMSNorm weights): decaying them toward 0 shrinks every activation;
  - biases: they are offsets, not capacity;
  - embeddings (and the tied head, which *is* the embedding): rows of rare tokens get few
    gradient updates, so decay would erase them between visits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


def param_groups(
    model: nn.Module, weight_decay: float, trainable: Iterable[tuple[str, nn.Parameter]] | None = None
) -> list[dict]:
    """Split trainable parameters into [decay, no_decay] groups; each group lists its `param_names`.

    Decay goes to the weight matrix of every nn.Linear unless that matrix is shared with an
    nn.Embedding (a tied LM head). Everything else (norms, biases, embeddings, loose
    parameters such as LoRA factors stored as nn.Parameter) gets no decay.
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_ids = {
        id(m.weight) for m in model.modules() if isinstance(m, nn.Linear) and id(m.weight) not in embedding_ids
    }
    named = trainable if trainable is not None else model.named_parameters()
    decay: dict[str, list] = {"params": [], "param_names": []}
    no_decay: dict[str, list] = {"params": [], "param_names": []}
    seen: set[int] = set()
    for name, p in named:
        if not p.requires_grad or id(p) in seen:  # tied tensors appear once
            continue
        seen.add(id(p))
        group = decay if id(p) in linear_ids else no_decay
        group["params"].append(p)
        group["param_names"].append(name)
    return [
        {**decay, "weight_decay": weight_decay},
        {**no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    device: torch.device,
    trainable: Iterable[tuple[str, nn.Parameter]] | None = None,
    kind: str = "adamw",
    muon_lr: float = 0.02,
) -> torch.optim.Optimizer:
    """AdamW (fused where torch has the kernel), or Muon on the hidden matrices with AdamW on the rest.
    Every group carries `lr_ratio`: the engine sets each group's lr to schedule lr x lr_ratio."""
    groups = [g for g in param_groups(model, weight_decay, trainable) if g["params"]]
    if not groups:
        raise SystemExit("no trainable parameters: the objective froze the whole model")
    if kind == "muon":
        from .muon import MuonAdamW

        return MuonAdamW(_muon_groups(groups, lr, muon_lr), lr=lr, betas=betas, weight_decay=weight_decay)
    if kind != "adamw":
        raise SystemExit(f"optimizer must be adamw or muon; got {kind!r}")
    for g in groups:
        g["lr_ratio"] = 1.0
    # The fused kernel updates all tensors in one launch; it exists for CUDA and CPU in recent torch.
    fused = device.type in ("cuda", "cpu")
    beta1, beta2 = betas  # a YAML recipe gives a list
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, fused=fused)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, foreach=True)


def _muon_groups(groups: list[dict], lr: float, muon_lr: float) -> list[dict]:
    """The decay group (hidden nn.Linear matrices) splits into Muon (2-D, not the LM head) and AdamW parts."""
    out = []
    for g in groups:
        is_muon = [
            p.ndim == 2 and g["weight_decay"] > 0 and not n.startswith("lm_head")
            for n, p in zip(g["param_names"], g["params"])
        ]
        for flag in (True, False):
            params = [p for p, m in zip(g["params"], is_muon) if m == flag]
            names = [n for n, m in zip(g["param_names"], is_muon) if m == flag]
            if params:
                out.append(
                    {
                        **g,
                        "params": params,
                        "param_names": names,
                        "muon": flag,
                        "lr_ratio": (muon_lr / lr if lr > 0 else 0.0) if flag else 1.0,
                    }
                )
    return out


@dataclass(frozen=True)
class Schedule:
    """LR multiplier as a function of budget progress p in [0, 1] (see docs/training.md).

    warmup_frac: linear warmup over the first fraction of the budget.
    warmup_steps: used instead when warmup is given in steps and the total number of steps
        cannot be known in advance (a time budget); the warmup factor then multiplies the decay.
    """

    kind: str = "cosine"  # cosine | wsd | constant
    warmup_frac: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in ("cosine", "wsd", "constant"):
            raise SystemExit(f"schedule must be cosine, wsd or constant; got {self.kind!r}")

    def factor(self, progress: float, step: int = 0) -> float:
        p = min(max(progress, 0.0), 1.0)
        w, m = self.warmup_frac, self.min_lr_ratio
        if p < w:
            return p / w
        step_warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "constant":
            return step_warm
        if self.kind == "cosine":
            t = (p - w) / (1.0 - w) if w < 1.0 else 1.0
            return step_warm * (m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * t)))
        # wsd: hold the peak, then decay linearly to min_lr over the final decay_fraction.
        start = max(w, 1.0 - self.decay_fraction)
        if p < start:
            return step_warm
        t = (p - start) / (1.0 - start) if start < 1.0 else 1.0
        return step_warm * (1.0 - (1.0 - m) * t)


def make_schedule(
    kind: str, warmup: float, min_lr_ratio: float, decay_fraction: float, est_total_steps: float | None
) -> Schedule:
    """`warmup` < 1 is a fraction of the budget; >= 1 is a number of steps, converted to a fraction
    when the total number of steps can be estimated (step, token and epoch budgets)."""
    if warmup < 1:
        return Schedule(kind, float(warmup), 0, min_lr_ratio, decay_fraction)
    if est_total_steps:
        return Schedule(kind, min(1.0, warmup / est_total_steps), 0, min_lr_ratio, decay_fraction)
    return Schedule(kind, 0.0, int(warmup), min_lr_ratio, decay_fraction)

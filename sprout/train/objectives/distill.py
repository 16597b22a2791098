"""`sprout train distill`: white-box knowledge distillation on assistant tokens.

    L = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

averaged over the positions that carry a label (assistant tokens of the SFT data). The teacher
(objective_args.teacher, a model folder) is frozen; teacher and student share the tokenizer but may
differ in size: start the student from model=DIR or a fresh preset with model_overrides.
objective_args: teacher (required), temperature (2.0), alpha (0.5), dataset (built-in SFT set name
from sprout.data.builtin_sets, e.g. "domain"; default the normal built-in SFT data).
Logged metrics: ce (the student's plain cross-entropy, comparable to an SFT run's loss) and kd.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models import load_model
from . import register
from .base import sprout_model
from .lm import SFTObjective, model_inputs


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distillation loss over positions with labels != -100; logits [..., V], labels [...]."""
    mask = labels != -100
    s = student_logits[mask].float()
    t = teacher_logits[mask].float()
    T = float(temperature)
    log_ps = F.log_softmax(s / T, -1)
    log_pt = F.log_softmax(t / T, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * T * T
    ce = F.cross_entropy(s, labels[mask])
    return alpha * kl + (1 - alpha) * ce, {"ce": ce.detach(), "kd": kl.detach()}


@register
class DistillObjective(SFTObjective):
    name = "distill"
    loss_label = "alpha * KL(teacher || student) + (1 - alpha) * cross-entropy"
    healthy = (
        "Both `kd` (the KL to the teacher) and `ce` fall; `ce` is comparable with an SFT run's loss on the "
        "same data and should end below it."
    )
    plot_metrics = ("kd", "ce")

    @property
    def args(self) -> dict[str, Any]:
        return self.cfg.objective_args or {}

    def setup(self, model: nn.Module, device: torch.device) -> None:
        teacher = self.args.get("teacher")
        if not teacher:
            raise SystemExit("distill needs a teacher: objective_args.teacher=MODEL_DIR")
        self.teacher = load_model(teacher, device=device).eval().requires_grad_(False)
        student = sprout_model(model)
        tv, sv = self.teacher.config.vocab_size, student.config.vocab_size
        if tv != sv:
            raise SystemExit(
                f"teacher vocabulary ({tv}) differs from the student's ({sv}); they must share a tokenizer"
            )

    def data_source(self) -> str:
        if self.args.get("dataset") and not self.cfg.data:
            return self.builtin_or_data(self.args["dataset"])
        return super().data_source()

    def cache_dir(self) -> Path:
        return Path(self.cfg.out) / "tokenized" / f"distill-{self.args.get('dataset', 'sft')}"

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        inputs = model_inputs(batch)
        out = model(batch["input_ids"], **inputs)
        with torch.no_grad():
            t_logits = self.teacher(batch["input_ids"], **inputs).logits
        loss, metrics = kd_loss(
            out.logits,
            t_logits,
            batch["labels"],
            float(self.args.get("temperature", 2.0)),
            float(self.args.get("alpha", 0.5)),
        )
        extra, more = self.model_losses(out, batch["labels"], batch.get("doc_ids"))
        metrics.update(more)
        return (loss if extra is None else loss + extra), metrics

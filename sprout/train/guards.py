"""Numerical guards for the training loop: skip a step whose loss or gradient is not finite, stop
with advice when that keeps happening, and turn CUDA out-of-memory into advice.

A single NaN/inf step is usually one bad batch (or an fp16 overflow) and costs nothing to skip:
the optimizer never sees it, so the weights stay finite. Several in a row mean the run itself has
diverged; going on would only burn compute, so the guard stops with what usually fixes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError


def oom_advice(batch_size: int | None = None, seq_len: int | None = None, grad_accum: int | None = None) -> str:
    """What to change when the GPU runs out of memory: the same tokens per step in smaller pieces."""
    if batch_size and seq_len and grad_accum:
        half = max(1, batch_size // 2)
        return (
            f"CUDA out of memory at batch_size={batch_size}, seq_len={seq_len}, grad_accum={grad_accum}; "
            f"try batch_size={half} grad_accum={grad_accum * batch_size // half} (same tokens per step), "
            "a shorter seq_len, or dtype=bf16; resume with --resume"
        )
    return (
        "CUDA out of memory; lower batch_size (raise grad_accum to keep the tokens per step), "
        "shorten seq_len, or use dtype=bf16"
    )


class StepGuard:
    """Counts skipped steps; raises a UserError after `max_in_a_row` consecutive ones."""

    def __init__(self, max_in_a_row: int, checkpoints: Path) -> None:
        self.max_in_a_row = max_in_a_row
        self.checkpoints = checkpoints
        self.in_a_row = 0
        self.skipped = 0  # over the whole run (this process), reported in the metrics log

    def accept(self, loss_finite: bool, grad_norm: float | None, step: int) -> tuple[bool, str | None]:
        """Whether optimizer step `step` may be taken, and a line to print when it may not.

        `grad_norm` is None when it was not measured (the loss was already bad, or fp16's scaler
        skips inf gradients itself)."""
        grad_ok = grad_norm is None or math.isfinite(grad_norm)
        if loss_finite and grad_ok:
            self.in_a_row = 0
            return True, None
        self.in_a_row += 1
        self.skipped += 1
        what = "loss" if not loss_finite else "gradient norm"
        if self.in_a_row >= self.max_in_a_row:
            raise UserError(
                f"{self.in_a_row} optimizer steps in a row had a non-finite {what} (last at step {step}); "
                f"the run has diverged",
                advice=f"try a lower lr, a longer warmup, dtype=fp32 or bf16 instead of fp16, or check the data; "
                f"the last good checkpoint is in {self.checkpoints} (--resume continues from it)",
            )
        return False, (
            f"step {step}: non-finite {what}, skipping these batches "
            f"({self.in_a_row}/{self.max_in_a_row} in a row, {self.skipped} skipped in all)"
        )


def fit_batch_size(try_batch: Callable[[int], None], batch_size: int, grad_accum: int, seq_len: int) -> tuple[int, int]:
    """The largest micro-batch (halving from `batch_size`) for which `try_batch(b)` (one forward and
    backward) does not run out of CUDA memory; grad_accum doubles with each halving, so the tokens per
    optimizer step stay the same (for a power-of-two batch_size; otherwise within a factor of 2)."""
    while True:
        try:
            try_batch(batch_size)
            return batch_size, grad_accum
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise UserError(oom_advice(1, seq_len, grad_accum)) from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            batch_size, grad_accum = batch_size // 2, grad_accum * 2

"""The Objective interface: what a training stage supplies to the single training loop.

The engine owns everything generic (device, precision, accumulation, clipping, schedule,
evaluation, logging, checkpoints, resume, distributed). An objective owns what makes a stage
different. Override only what differs; the defaults fit a causal LM trained on dict batches.

    tok   = obj.load_tokenizer()
    model = obj.build_model(tok)                 # new or loaded (LoRA: wrap here)
    train, val = obj.datasets(tok)               # map-style, items = dicts of tensors
    params = obj.trainable_parameters(model)     # what the optimizer updates
    loop:  loss, metrics = obj.loss(model, batch)
    end:   obj.save(model, tok, out)             # HF folder (LoRA: adapter folder)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from ...config import TrainConfig
from ...models import build_model, load_model, model_preset, save_model


class Objective:
    """Base class; subclasses set `name` and implement `datasets` and `loss`."""

    name: str = ""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    # ---- setup ----------------------------------------------------------------------
    def load_tokenizer(self) -> Any:
        """The tokenizer: cfg.tokenizer, else the one saved with cfg.model, else sprout's default."""
        from ...tokenizer import Tokenizer, default_tokenizer_dir

        return Tokenizer.load(self.cfg.tokenizer or self.cfg.model or default_tokenizer_dir())

    def build_model(self, tokenizer: Any) -> nn.Module:
        """Load cfg.model, or build a fresh `cfg.preset` whose vocabulary fits the tokenizer.

        Returned on CPU in fp32; the engine moves it. Objectives that need extra models
        (a DPO reference, a distillation teacher) load them here or in `setup`.
        """
        if self.cfg.model:
            model = load_model(self.cfg.model)
        else:
            overrides = dict(self.cfg.model_overrides)
            if tokenizer is not None:
                overrides.setdefault("vocab_size", tokenizer.vocab_size)
            model = build_model(model_preset(self.cfg.preset, **overrides))
        vocab = getattr(model.config, "vocab_size", None)
        if tokenizer is not None and vocab is not None and vocab < tokenizer.vocab_size:
            raise SystemExit(
                f"the model's vocabulary ({vocab}) is smaller than the tokenizer's ({tokenizer.vocab_size}); "
                "use the tokenizer the model was trained with (tokenizer=DIR)"
            )
        return model

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once the model is on its device (e.g. move a frozen reference model there too)."""

    def builtin_or_data(self, name: str, **kw: Any) -> str:
        """cfg.data if given, else built-in set `name` written once as jsonl under cfg.out/data: `pretrain` and
        `sft` from sprout.data.builtin, the post-training sets (identity, dpo, tools, ...) from builtin_sets."""
        if self.cfg.data:
            return self.cfg.data
        path = Path(self.cfg.out) / "data" / f"builtin-{name}.jsonl"
        if not path.exists():
            if name in ("pretrain", "sft"):
                from ...data.builtin import write_builtin

                write_builtin(name, path, **kw)
            else:
                from ...data.builtin_sets import write_post_builtin

                write_post_builtin(name, path, **kw)
        return str(path)

    def trainable_parameters(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the optimizer updates; default: all that require grad.
        A LoRA objective freezes the base here and yields only the adapter factors."""
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def datasets(self, tokenizer: Any) -> tuple[Dataset, Dataset | None]:
        """(train, val) map-style datasets; val may be None (no evaluation)."""
        raise NotImplementedError

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Items -> batch. Default stacks equal-shape tensors; override for dynamic padding."""
        return default_collate(items)

    # ---- per step ---------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss to minimise and extra metrics (plain floats) for the log."""
        raise NotImplementedError

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens this batch contributes to the token budget and tokens/s. Default: every position."""
        return int(batch["input_ids"].numel())

    # ---- state and output --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Extra objective state saved in checkpoints (must be torch.load(weights_only=True)-safe)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def on_optimizer_step(self, model: nn.Module) -> None:
        """Called by the engine after each optimizer step that was taken (not after skipped ones), on every rank:
        the place for per-step updates outside the gradient (e.g. MoE routing-bias balancing)."""

    def save(self, model: nn.Module, tokenizer: Any, out: Path) -> None:
        """Write the final artefact: a standard Hugging Face folder with the tokenizer beside it."""
        save_model(model, out)
        if tokenizer is not None:
            tokenizer.save(out)


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Send the tensors of a batch to the device (non_blocking pairs with pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

"""The Objective interface: what a training stage supplies to the single training loop.

The engine owns everything generic (device, precision, accumulation, clipping, schedule,
evaluation, logging, checkpoints, resume, distributed). An objective owns what makes a stage
different. Override only what differs; the defaults fit a causal LM trained on dict batches.

    tok   = obj.load_tokenizer()
    model = obj.build_model(tok)                 # new or loaded (LoRA: wrap here)
    train, val = obj.datasets(tok)               # map-style, items = dicts of tensors
    params = obj.trainable_parameters(model)     # what the optimizer updates
    loop:  loss, metrics = obj.loss(model, batch)  # main loss + obj.model_losses(model's output, labels)
           obj.on_optimizer_step(model)          # after each optimizer step: MoE router-bias update
    end:   obj.save(model, tok, out)             # HF folder (LoRA: adapter folder)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from ...config import TrainConfig
from ...models import SproutForCausalLM, build_model, load_model, model_preset, save_model
from ...models.dense import CausalLMOutput
from ...models.moe import moe_metrics, update_router_biases


class Objective:
    """Base class; subclasses set `name` and implement `datasets` and `loss`."""

    name: str = ""
    # How the stage describes itself to `sprout report` (written to OUT/objective.json by the engine):
    loss_label: str = "loss"  # what the logged `loss` is, for the plot axis and the report
    lm_loss: bool = False  # the loss is a next-token cross-entropy that must fall (DPO / RL losses need not)
    healthy: str = ""  # what a healthy run looks like, in a sentence or two
    plot_metrics: tuple[str, ...] = ()  # logged metrics that tell how this stage goes, plotted first

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        # MoE expert load summed over the training micro-batches since the last optimizer step (layer -> [E]).
        self._step_load: dict[int, torch.Tensor] = {}

    # ---- setup ----------------------------------------------------------------------
    def load_tokenizer(self) -> Any:
        """The tokenizer: cfg.tokenizer, else the one saved with cfg.model, else sprout's default."""
        from ...tokenizer import Tokenizer, default_tokenizer_dir

        return Tokenizer.load(self.cfg.tokenizer or self.cfg.model or default_tokenizer_dir())

    def build_model(self, tokenizer: Any) -> nn.Module:
        """What the engine trains: the causal LM of `build_lm`, or a module built around it (a reward model,
        PPO's policy plus value head)."""
        return self.build_lm(tokenizer)

    def build_lm(self, tokenizer: Any) -> SproutForCausalLM:
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

    def model_losses(
        self, out: CausalLMOutput, labels: torch.Tensor | None, doc_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        """What every objective adds to its own loss from the model's output, and the metrics for the log:

        * the MTP loss (DeepSeek), scored with the same shifted `labels` as the main loss, so positions the
          objective does not train on (prompt, system, padding: -100) are never MTP targets either; pass
          labels=None to skip it (e.g. preference losses);
        * the named auxiliary losses (MoE balancing), already weighted by the model.
        A training forward's expert load is also added to this step's total for `on_optimizer_step`."""
        total: torch.Tensor | None = None
        metrics: dict[str, Any] = {}
        if out.mtp_logits and labels is not None:
            mtp = mtp_loss(out.mtp_logits, labels, doc_ids)
            metrics["mtp_loss"] = mtp.detach()
            total = out.mtp_loss_weight * mtp
        aux = out.aux_loss
        if aux is not None:
            metrics["aux_loss"] = aux.detach()
            total = aux if total is None else total + aux
        if out.expert_load:
            if torch.is_grad_enabled():  # a training pass (evaluation runs under no_grad)
                for i, load in out.expert_load.items():
                    self._step_load[i] = self._step_load[i] + load if i in self._step_load else load.float()
            metrics.update(moe_metrics(out.expert_load))
        return total, metrics

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
        the place for per-step updates outside the gradient. Here: MoE routing-bias balancing from the expert
        load of all this step's micro-batches (summed over ranks inside), so grad_accum does not change its
        rate and every rank applies the same update. Subclasses that override this call super()."""
        if self._step_load:
            update_router_biases(model, self._step_load)
            self._step_load = {}

    def describe(self) -> dict[str, Any]:
        """The self-description above as plain data (JSON-ready)."""
        return {
            "stage": self.name,
            "loss_label": self.loss_label,
            "lm_loss": self.lm_loss,
            "healthy": self.healthy,
            "plot_metrics": list(self.plot_metrics),
        }

    def save(self, model: nn.Module, tokenizer: Any, out: Path) -> None:
        """Write the final artefact: a standard Hugging Face folder with the tokenizer beside it."""
        save_model(sprout_model(model), out, tokenizer.generation_ids() if tokenizer is not None else None)
        if tokenizer is not None:
            tokenizer.save(out)


def sprout_model(model: nn.Module) -> SproutForCausalLM:
    """The model the engine hands a hook, as the sprout model it is (hooks are typed nn.Module for the engine)."""
    if not isinstance(model, SproutForCausalLM):
        raise TypeError(f"expected a sprout model (SproutForCausalLM), got {type(model).__name__}")
    return model


def mtp_loss(mtp_logits: list[torch.Tensor], labels: torch.Tensor, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over depths d of the CE of mtp_logits[d-1] ([B, T-d, V], position i predicts token i+d+1) against
    labels[:, i+d] (labels[t] is the target of position t, -100 = none). With doc_ids a target in another packed
    document than position i is ignored. A depth with no target contributes 0 (not NaN), so every rank's graph
    holds the same parameters under DDP."""
    losses = []
    for d, logits in enumerate(mtp_logits, start=1):
        target = labels[:, d:]
        if doc_ids is not None:
            target = target.masked_fill(doc_ids[:, d:] != doc_ids[:, :-d], -100)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100, reduction="sum")
        losses.append(ce / (target != -100).sum().clamp(min=1))
    return torch.stack(losses).mean()


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Send the tensors of a batch to the device (non_blocking pairs with pinned memory on CUDA)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

"""DeepSpeed ZeRO (`distributed=deepspeed`, `zero_stage=2|3`): the engine's loss module, backward and optimizer
step run through DeepSpeed's own engine; this file builds its config from TrainConfig and does what the training
engine needs around it (gradient-accumulation boundary, sharded checkpoints, consolidated weights for saving).

ZeRO-2 partitions the gradients and the optimizer state (fp32 master weights and AdamW moments) across ranks and
keeps a full copy of the weights on each; ZeRO-3 also partitions the weights and gathers each module's just
before its forward and backward.

The optimizer is sprout's own AdamW (optim.py) handed to `deepspeed.initialize`: DeepSpeed keeps its parameter
groups (the decay / no-decay split and each group's `lr_ratio`) and steps it on its flat fp32 partitions, and
sprout's schedule (engine.set_lr) writes each step's lr into those same group dicts. DeepSpeed's own optimizer from the
config would re-split the groups and need its lr schedule expressed as a DeepSpeed scheduler.

Checkpoints: DeepSpeed writes its sharded state (every rank its partition) into CHECKPOINT/deepspeed/, which
moves into the step folder with the rest before `latest` names it; rank 0 consolidates the fp32 master weights
from those files with DeepSpeed's zero_to_fp32 into an unsharded copy of the model, which is written as
model.safetensors and is what the final model folder is saved from. A run resumes onto the same number of
processes and the same zero_stage (DeepSpeed's partitions are per rank).
"""

from __future__ import annotations

import copy
import importlib
import os
import shutil
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn

from ..config import TrainConfig
from .checkpoint import STATE_FILE, step_dir_name

TAG = "zero"  # DeepSpeed's name for the one checkpoint inside each step folder
FOLDER = "deepspeed"  # that checkpoint's folder inside the step folder
_PREFIX = "model."  # DeepSpeed wraps the engine's loss module, whose `model` is the language model


def ds_config(cfg: TrainConfig, precision: str) -> dict[str, Any]:
    """DeepSpeed's config: the same micro-batch, accumulation, clipping and precision as the other modes."""
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 else 0.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        # bf16/fp16: DeepSpeed's mixed precision (16-bit weights and gradients, fp32 master weights in the
        # sharded optimizer). A step whose gradient norm is not finite is skipped by DeepSpeed itself.
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 2**31 - 1,  # sprout logs; DeepSpeed's own progress lines would interleave
    }


class DeepSpeedZero:
    """DeepSpeed's engine around the loss module, plus what checkpoints and the final save need from it."""

    def __init__(self, cfg: TrainConfig, loss_module: nn.Module, optimizer: torch.optim.Optimizer, precision: str):
        import deepspeed

        main = dist.get_rank() == 0
        # Rank 0 keeps an unsharded CPU copy to load consolidated weights into (ZeRO-3 empties the parameters).
        model = cast(nn.Module, loss_module.model)
        self.full_copy: nn.Module | None = copy.deepcopy(model).cpu() if main else None
        self.consolidated_step = -1  # the step whose weights full_copy holds
        self.stage = cfg.zero_stage
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=loss_module, optimizer=optimizer, config=ds_config(cfg, precision), dist_init_required=False
        )

    @property
    def forward_needs_every_rank(self) -> bool:
        """ZeRO-3: a forward pass gathers weight shards from all ranks, so evaluation runs on every rank."""
        return self.stage == 3

    def set_boundary(self, last_micro: bool) -> None:
        """The last micro-batch of grad_accum is DeepSpeed's accumulation boundary (ZeRO-2/3 reduce-scatter every
        micro-batch's gradients into the partitions; at the boundary they are complete for the step)."""
        self.engine.set_gradient_accumulation_boundary(last_micro)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the engine already divided by grad_accum

    def step(self) -> torch.Tensor:
        """Clip to gradient_clipping and step (DeepSpeed skips a step whose norm is not finite); zero the
        gradients. Returns the gradient norm before clipping (inf for a skipped step)."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()  # None only when a config turns the norm off; this one does not
        return torch.tensor(float(cast(float, norm)))

    # ---- checkpoints --------------------------------------------------------------------------------------
    def save_shards(self, root: Path, step: int) -> Path:
        """Collective: every rank writes its partition into a staging folder that the checkpoint writer moves
        into the step folder (so `latest` never names a step whose shards are incomplete)."""
        staging = root / f".ds-{step_dir_name(step)}"
        if dist.get_rank() == 0:
            shutil.rmtree(staging, ignore_errors=True)  # left over by a crash during an earlier save
            staging.mkdir(parents=True)
        dist.barrier()
        self.engine.save_checkpoint(str(staging), tag=TAG)
        dist.barrier()
        return staging

    def consolidated(self, shards: Path, step: int) -> nn.Module | None:
        """Rank 0: the unsharded model with the fp32 master weights of `step` read back from its `shards` (once per
        step); None elsewhere."""
        if self.full_copy is None or self.consolidated_step == step:
            return self.full_copy
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(shards), tag=TAG)
        weights = {k.removeprefix(_PREFIX): v for k, v in state.items() if k.startswith(_PREFIX)}
        missing, unexpected = self.full_copy.load_state_dict(weights, strict=False)
        params = {n for n, _ in self.full_copy.named_parameters(remove_duplicate=False)}
        if unexpected or params & set(missing):
            raise RuntimeError(f"DeepSpeed checkpoint {shards} does not fit the model: {missing} {unexpected}")
        self.consolidated_step = step
        return self.full_copy

    def load(self, path: Path) -> dict[str, Any]:
        """Every rank restores its partition of weights and optimizer state; returns the trainer state."""
        shards = path / FOLDER
        if not (shards / TAG).is_dir():
            raise SystemExit(
                f"checkpoint {path} was not written with distributed=deepspeed (no {FOLDER}/ folder); "
                f"resume it the way it was written"
            )
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        written = (int(state["world"]), int(state["config"].get("zero_stage", 2)))
        if written != (dist.get_world_size(), self.stage):
            raise SystemExit(
                f"checkpoint {path} holds ZeRO-{written[1]} partitions of {written[0]} processes; resume it on "
                f"{written[0]} processes with zero_stage={written[1]}"
            )
        self.engine.load_checkpoint(str(shards), tag=TAG, load_lr_scheduler_states=False)
        return state


def check_deepspeed(device: torch.device) -> None:
    """Stop with advice when DeepSpeed does not import. Its accelerator follows the training device unless
    DS_ACCELERATOR says otherwise (DeepSpeed would pick CUDA on a GPU machine even for device=cpu)."""
    os.environ.setdefault("DS_ACCELERATOR", device.type)
    try:
        importlib.import_module("deepspeed")
    except ImportError as e:
        raise SystemExit(
            f"distributed=deepspeed needs DeepSpeed ({e}); install it with pip install 'sprout[deepspeed]'"
        ) from None

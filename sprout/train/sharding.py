"""FSDP2 (`distributed=fsdp`): parameters, gradients and optimizer state sharded across ranks with torch's
`fully_shard`; what the engine needs around it (gradient-sync switch, gathering for checkpoints, restoring).

Each decoder layer is its own FSDP group (its weights are all-gathered just before its forward and backward and
freed after), the root group holds embeddings, final norm and the LM head (tied or not). Gradients are
reduce-scattered, so every rank keeps 1/N of the AdamW moments. The results equal DDP's and one process's up to
summation order (tests/test_distributed.py).

Checkpoints keep the format of unsharded runs for the weights (model.safetensors: rank 0 loads the gathered
full state into an unsharded copy of the model, which is also what gets saved as the final model folder); the
optimizer state is the full state keyed by parameter name (torch.distributed.checkpoint's "full state dict"),
so an FSDP run resumes onto any number of FSDP processes, but not onto DDP or one process.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from .checkpoint import MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, refuse_deepspeed

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)  # the full state, on rank 0 only
_LOAD = StateDictOptions(full_state_dict=True)  # every rank passes the full state and keeps its shard


class SavedOptimizer:
    """Stands in for the optimizer when the checkpoint writer asks for `state_dict()`."""

    def __init__(self, state: dict[str, Any]):
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


class FSDPSharding:
    def __init__(self, model: nn.Module, main: bool):
        # Rank 0 keeps an unsharded CPU copy to gather into for saving (the model is small next to a GPU).
        self.full_copy = copy.deepcopy(model).cpu() if main else None
        for layer in cast(Any, model).model.layers:
            fully_shard(layer)
        fully_shard(model)

    @staticmethod
    def set_gradient_sync(model: nn.Module, sync: bool) -> None:
        """Off for all but the last micro-batch of grad_accum: gradients accumulate unsharded locally."""
        cast(Any, model).set_requires_gradient_sync(sync)  # fully_shard added the method

    def gathered(
        self, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[nn.Module | None, SavedOptimizer | None]:
        """Collective: the whole model (an unsharded module) and optimizer state on rank 0; (None, None) elsewhere."""
        msd = get_model_state_dict(model, options=_GATHER)
        osd = get_optimizer_state_dict(model, optimizer, options=_GATHER)
        if self.full_copy is None:
            return None, None
        self.full_copy.load_state_dict(msd)
        return self.full_copy, SavedOptimizer(osd)

    @staticmethod
    def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Every rank reads the checkpoint and keeps its shard of weights and optimizer state."""
        for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
            if not (path / name).exists():
                raise SystemExit(f"checkpoint {path} is incomplete: {name} is missing")
        weights = load_file(str(path / MODEL_FILE))
        # safetensors stored a tied tensor under one of its names: give it back its other names
        by_id: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            by_id.setdefault(id(p), []).append(name)
        for names in by_id.values():
            present = next((n for n in names if n in weights), None)
            if present is None:
                raise SystemExit(f"checkpoint {path} does not fit this model: {names[0]} is missing")
            for n in names:
                weights.setdefault(n, weights[present])
        set_model_state_dict(model, cast(dict[str, Any], weights), options=_LOAD)
        osd = torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        refuse_deepspeed(path, osd)
        if "param_groups" in osd and osd["state"] and isinstance(next(iter(osd["state"])), int):
            raise SystemExit(f"checkpoint {path} was written without distributed=fsdp; resume it the same way")
        set_optimizer_state_dict(model, optimizer, osd, options=_LOAD)
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor (a collective: every rank calls it) or a plain tensor, as a plain tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t

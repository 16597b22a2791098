"""Training objectives, registered by stage name (`sprout train <stage>` picks one).

A new stage subclasses `Objective`, decorates itself with `@register` and gets a line in
sprout/train/stages.py (name -> module, so the CLI lists stages without importing torch); the engine
needs nothing else. See base.py for the interface.
"""

from __future__ import annotations

import importlib

from ..stages import STAGES
from .base import Objective, move_batch

OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make `cls` available as `stage: <cls.name>`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str) -> type[Objective]:
    """The Objective class registered as `name`, importing its module (sprout/train/stages.py) on first use."""
    if name not in OBJECTIVES and name in STAGES:
        importlib.import_module(f"{__name__}.{STAGES[name][0]}")
    if name not in OBJECTIVES:
        available = sorted(set(OBJECTIVES) | set(STAGES))
        raise SystemExit(f"unknown training stage {name!r}; available: {', '.join(available)}")
    return OBJECTIVES[name]


def build_objective(cfg) -> Objective:
    """The objective for `cfg.stage`, configured by `cfg` (a TrainConfig)."""
    return get_objective(cfg.stage)(cfg)


__all__ = ["OBJECTIVES", "Objective", "build_objective", "get_objective", "move_batch", "register"]

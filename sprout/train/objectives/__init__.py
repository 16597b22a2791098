"""Training objectives, registered by stage name (`sprout train <stage>` picks one).

A new stage subclasses `Objective` and decorates itself with `@register`; the engine needs
nothing else. See base.py for the interface.
"""
from __future__ import annotations

from .base import Objective, move_batch

OBJECTIVES: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make `cls` available as `stage: <cls.name>`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name` to be registered")
    OBJECTIVES[cls.name] = cls
    return cls


def get_objective(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise SystemExit(f"unknown training stage {name!r}; available: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def build_objective(cfg) -> Objective:
    """The objective for `cfg.stage`, configured by `cfg` (a TrainConfig)."""
    return get_objective(cfg.stage)(cfg)


# Built-in stages register themselves on import.
from . import lm  # noqa: E402,F401
from . import distill, dpo, lora, reasoning  # noqa: E402,F401  (post-training stages)

__all__ = ["OBJECTIVES", "Objective", "build_objective", "get_objective", "move_batch", "register"]

"""Training: one engine (`train`) and pluggable objectives, one per stage."""
from .engine import train
from .objectives import OBJECTIVES, Objective, build_objective, get_objective, register

__all__ = ["OBJECTIVES", "Objective", "build_objective", "get_objective", "register", "train"]

"""Model families. `build_model`, `load_model` and `save_model` work for every model_type in `hub.REGISTRY`;
configs live in config.py (and each family's file), named presets in presets.py."""

from .config import ModelConfig
from .dense import CausalLMOutput, SproutForCausalLM
from .hub import REGISTRY, build_model, load_model, read_config, save_model
from .presets import PRESETS, model_preset
from .rope import apply_rope_scaling

__all__ = [
    "CausalLMOutput",
    "ModelConfig",
    "PRESETS",
    "REGISTRY",
    "SproutForCausalLM",
    "apply_rope_scaling",
    "build_model",
    "load_model",
    "model_preset",
    "read_config",
    "save_model",
]

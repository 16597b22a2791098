"""Model families. `build_model`, `load_model` and `save_model` work for every registered model_type."""
from .dense import CausalLMOutput, SproutForCausalLM
from .hub import build_model, load_model, read_config, save_model

__all__ = ["CausalLMOutput", "SproutForCausalLM", "build_model", "load_model", "read_config", "save_model"]

"""Model families. `build_model`, `load_model` and `save_model` work for every registered model_type."""
from .dense import CausalLMOutput, SproutForCausalLM
from .hub import build_model, load_model, read_config, save_model
from . import families  # noqa: E402,F401  registers the MoE / DeepSeek-V3 / Qwen3-Next model_types and presets
from .rope import apply_rope_scaling  # noqa: E402

__all__ = ["CausalLMOutput", "SproutForCausalLM", "build_model", "load_model", "read_config", "save_model",
           "apply_rope_scaling"]

"""Load a model folder plus its tokenizer for inference on the best available device."""

from __future__ import annotations

import torch

from ..models import SproutForCausalLM, apply_rope_scaling, load_model
from ..tokenizer import Tokenizer
from ..train.device import select_device


def parse_rope_scaling(spec: str) -> tuple[str, float, int | None]:
    """'yarn:4' or 'yarn:4:512' -> ('yarn', 4.0, 512). Kinds: none, linear, ntk, yarn."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] not in ("none", "linear", "ntk", "yarn"):
        raise SystemExit(
            f"--rope-scaling must look like KIND:FACTOR[:TRAINED_LEN] with KIND in none, linear, ntk, "
            f"yarn (e.g. yarn:4:512); got {spec!r}"
        )
    return parts[0], float(parts[1]), int(parts[2]) if len(parts) == 3 else None


def load_for_inference(
    model_dir: str, device: str = "auto", rope_scaling: str | None = None
) -> tuple[SproutForCausalLM, Tokenizer]:
    dev = select_device(device)
    # bf16 weights on CUDA halve memory and time; CPU and MPS stay in fp32 for exactness.
    dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = load_model(model_dir, device=dev, dtype=dtype).eval()
    if rope_scaling:
        kind, factor, trained_len = parse_rope_scaling(rope_scaling)
        apply_rope_scaling(model, kind, factor, trained_len)
    return model, Tokenizer.load(model_dir)

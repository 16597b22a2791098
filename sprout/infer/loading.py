"""Load a model folder plus its tokenizer for inference on the best available device."""
from __future__ import annotations

import torch
from torch import nn

from ..models import load_model
from ..tokenizer import Tokenizer
from ..train.device import select_device


def load_for_inference(model_dir: str, device: str = "auto") -> tuple[nn.Module, Tokenizer]:
    dev = select_device(device)
    # bf16 weights on CUDA halve memory and time; CPU and MPS stay in fp32 for exactness.
    dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model = load_model(model_dir, device=dev, dtype=dtype).eval()
    return model, Tokenizer.load(model_dir)

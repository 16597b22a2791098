"""`sprout export merge-lora --model BASE --lora ADAPTER --out DIR`: a standalone model with the adapter folded in.

W' = W + (lora_alpha / r) * B @ A for every adapted linear layer; the result is an ordinary
Hugging Face folder (config.json + model.safetensors + tokenizer) that needs neither sprout's LoRA
code nor PEFT to load.
"""

from __future__ import annotations

from pathlib import Path

from ..models import load_model, save_model
from ..train.lora import load_adapter, merge_lora


def merge_lora_folder(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    model = load_adapter(load_model(base), adapter)
    merge_lora(model)
    out = Path(out)
    src = next((s for s in (Path(adapter), Path(base)) if (s / "tokenizer.json").exists()), None)
    tok = None  # the tokenizer: the adapter's copy first, else the base's
    if src is not None:
        from ..tokenizer import Tokenizer

        tok = Tokenizer.load(src)
    save_model(model, out, tok.generation_ids() if tok else None)
    if tok:
        tok.save(out)
    return out

"""Read and write standard Hugging Face model folders (config.json + model.safetensors).

Our parameter names equal transformers' names, so saving is a plain state-dict dump. Loading
uses safetensors only: nothing is unpickled, so an untrusted folder cannot run code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import UserError
from .config import ModelConfig
from .deepseek_v3 import DeepseekV3Config, DeepseekV3ForCausalLM
from .dense import SproutForCausalLM
from .moe import MoEConfig, MoEForCausalLM
from .qwen3_next import Qwen3NextConfig, Qwen3NextForCausalLM

# Weight files in pickle formats: unpickling runs whatever code the file names, so sprout never opens them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

# model_type (config.json) -> (config reader, model class): every family sprout reads and writes.
REGISTRY: dict[str, tuple[Callable[[dict], ModelConfig], type[SproutForCausalLM]]] = {
    "qwen3": (ModelConfig.from_hf_dict, SproutForCausalLM),
    "llama": (ModelConfig.from_hf_dict, SproutForCausalLM),
    "qwen3_moe": (MoEConfig.from_hf_dict, MoEForCausalLM),
    "qwen2_moe": (MoEConfig.from_hf_dict, MoEForCausalLM),
    "deepseek_v3": (DeepseekV3Config.from_hf_dict, DeepseekV3ForCausalLM),
    "qwen3_next": (Qwen3NextConfig.from_hf_dict, Qwen3NextForCausalLM),
}


def build_model(cfg: ModelConfig) -> SproutForCausalLM:
    return REGISTRY[cfg.model_type][1](cfg)


def read_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise SystemExit(f"{folder} is not a model folder: {path} is missing")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"not valid JSON ({e})", file=path, advice="restore config.json from where the model came from"
        ) from None
    if not isinstance(d, dict):
        raise UserError("must hold a JSON object", file=path)
    mt = d.get("model_type")
    if mt not in REGISTRY:
        raise SystemExit(f"{path}: model_type {mt!r} is not supported; supported: {', '.join(REGISTRY)}")
    return REGISTRY[mt][0](d)


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    single = folder / "model.safetensors"
    if single.exists():
        return load_file(single)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(folder / f))
        return state
    pickles = sorted(f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(
            f"refusing to load {pickles[0]}: it is a pickle file, and unpickling can run any code",
            file=folder,
            advice="sprout reads only model.safetensors; convert weights you trust with "
            "transformers (model.save_pretrained(dir, safe_serialization=True))",
        )
    raise UserError("no model.safetensors (sprout reads only safetensors weights)", file=folder)


def load_model(
    folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> SproutForCausalLM:
    folder = Path(folder)
    cfg = read_config(folder)
    model = build_model(cfg)
    state = _read_weights(folder)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied: the head *is* the embedding matrix
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    # Training-only modules dropped on export (e.g. DeepSeek's multi-token-prediction heads) start fresh.
    optional = tuple(getattr(model, "training_only_prefixes", ()))
    missing = [m for m in missing if not (optional and m.startswith(optional))]
    if missing or unexpected:
        raise SystemExit(f"{folder}: weights do not match config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device=device, dtype=dtype)


def save_model(model: SproutForCausalLM, folder: str | Path, generation_config: dict | None = None) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    optional = tuple(getattr(model, "training_only_prefixes", ()))
    state = {
        k: v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if not (optional and k.startswith(optional))
    }
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # transformers re-ties it on load
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    gen = {
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": [cfg.eos_token_id, cfg.pad_token_id],
        "pad_token_id": cfg.pad_token_id,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "repetition_penalty": 1.05,
    }
    gen.update(generation_config or {})
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

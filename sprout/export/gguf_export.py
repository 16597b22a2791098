"""`sprout export gguf --model DIR --out FILE`: one GGUF file that llama.cpp (and so Ollama) runs unpatched.

A GGUF file is a header of typed key/values (architecture hyperparameters, tokenizer, chat template,
sampling defaults) followed by the tensors. We write it with the `gguf` library (llama.cpp's own
writer) and choose, per family, the architecture name and layout llama.cpp already implements
(see gguf_tensors.py). The tokenizer is written as llama.cpp's byte-level BPE ("gpt2" model) with
the pre-tokenizer "qwen2", whose split regex is character for character the one sprout trains with
(sprout.tokenizer.SPLIT_PATTERN), so llama.cpp needs no new pre-tokenizer entry.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch

from .dtypes import DTYPES
from .gguf_tensors import ARCHITECTURES, gguf_tensors

# llama.cpp's pre-tokenizer of this name splits text with this regex, which is sprout.tokenizer.SPLIT_PATTERN
# (tests/test_export_gguf.py tokenizes in llama.cpp to prove it).
PRE_TOKENIZER = "qwen2"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _model_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The folder's weights as saved (tied head and training-only modules left out) and its config.json."""
    from ..models import load_model

    model = load_model(folder)  # validates names and shapes against config.json
    skip = tuple(getattr(model, "training_only_prefixes", ()))
    state = {k: v.detach() for k, v in model.state_dict().items() if not (skip and k.startswith(skip))}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # llama.cpp reuses token_embd when output.weight is absent
    return state, json.loads((folder / "config.json").read_text())


_KEEP_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "exp_probs_b.bias", "ssm_conv1d.weight")


def _tensor_data(name: str, t: torch.Tensor, dtype: str):
    """(numpy data, GGML type or None for plain float arrays) of one tensor in the requested dtype.

    Norms, biases, routers and the DeltaNet conv kernel stay F32 (tiny, precision-sensitive; llama.cpp's
    CPU conv needs F32); Q8_0 needs rows that are a multiple of its 32-value block, other matrices
    fall back to F16."""
    a = t.to(torch.float32).cpu().numpy()
    if dtype == "f32" or a.ndim == 1 or name.endswith(_KEEP_F32):
        return a, None
    if dtype == "f16" or (dtype == "q8_0" and a.shape[-1] % 32):
        return a.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    return gguf.quants.quantize(a, qtype), qtype


def _write_hparams(w, hf: dict, arch: str) -> None:
    heads = hf["num_attention_heads"]
    w.add_context_length(hf["max_position_embeddings"])
    w.add_embedding_length(hf["hidden_size"])
    w.add_block_count(hf["num_hidden_layers"])
    w.add_feed_forward_length(hf["intermediate_size"])
    w.add_head_count(heads)
    w.add_layer_norm_rms_eps(hf["rms_norm_eps"])
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"RoPE scaling {rope['rope_type']!r} is not exported yet; export the unscaled model")
    w.add_rope_freq_base(float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))))
    w.add_vocab_size(hf["vocab_size"])
    if arch == "deepseek2":
        # MLA: llama.cpp caches the compressed kv (kv_lora_rank) plus the shared RoPE key as one "head".
        w.add_head_count_kv(1)
        w.add_q_lora_rank(hf["q_lora_rank"])
        w.add_kv_lora_rank(hf["kv_lora_rank"])
        w.add_key_length(hf["kv_lora_rank"] + hf["qk_rope_head_dim"])
        w.add_value_length(hf["kv_lora_rank"])
        w.add_key_length_mla(hf["qk_nope_head_dim"] + hf["qk_rope_head_dim"])
        w.add_value_length_mla(hf["v_head_dim"])
        w.add_rope_dimension_count(hf["qk_rope_head_dim"])
        w.add_leading_dense_block_count(hf["first_k_dense_replace"])
        w.add_expert_count(hf["n_routed_experts"])
        w.add_expert_used_count(hf["num_experts_per_tok"])
        w.add_expert_shared_count(hf["n_shared_experts"])
        w.add_expert_feed_forward_length(hf["moe_intermediate_size"])
        w.add_expert_weights_scale(hf["routed_scaling_factor"])
        w.add_expert_weights_norm(hf["norm_topk_prob"])
        w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)  # as DeepSeek-V3
        w.add_expert_group_count(hf["n_group"])
        w.add_expert_group_used_count(hf["topk_group"])
        return
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    w.add_head_count_kv(hf["num_key_value_heads"])
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if arch != "qwen3next":
        w.add_rope_dimension_count(head_dim)
    if arch in ("qwen3moe", "qwen2moe", "qwen3next"):
        w.add_expert_count(hf["num_experts"])
        w.add_expert_used_count(hf["num_experts_per_tok"])
        w.add_expert_feed_forward_length(hf["moe_intermediate_size"])
    if arch in ("qwen2moe", "qwen3next"):
        w.add_expert_shared_feed_forward_length(hf["shared_expert_intermediate_size"])
    if arch == "qwen3next":
        w.add_rope_dimension_count(int(head_dim * hf["partial_rotary_factor"]))  # partial RoPE
        w.add_full_attention_interval(hf["full_attention_interval"])
        w.add_ssm_conv_kernel(hf["linear_conv_kernel_dim"])
        w.add_ssm_state_size(hf["linear_key_head_dim"])
        w.add_ssm_group_count(hf["linear_num_key_heads"])
        w.add_ssm_time_step_rank(hf["linear_num_value_heads"])
        w.add_ssm_inner_size(hf["linear_value_head_dim"] * hf["linear_num_value_heads"])


def _write_tokenizer(w, folder: Path, vocab_size: int) -> None:
    """Byte-level BPE vocabulary, merges, token kinds, special ids and the chat template."""
    tok_json = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    split = tok_json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
    if split != QWEN2_SPLIT:
        raise SystemExit(
            f"{folder / 'tokenizer.json'}: its split regex differs from llama.cpp's '{PRE_TOKENIZER}' "
            "pre-tokenizer; retrain the tokenizer with sprout's SPLIT_PATTERN"
        )
    tokens: dict[int, str] = {i: t for t, i in tok_json["model"]["vocab"].items()}
    kinds = {i: gguf.TokenType.NORMAL for i in tokens}
    for added in tok_json["added_tokens"]:
        tokens[added["id"]] = added["content"]
        # special (control) tokens are only parsed when the caller asks; markup tokens (<think>, <tool_call>)
        # are user-defined: always one id, as in sprout's encode.
        kinds[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    if max(tokens) >= vocab_size:
        raise SystemExit(f"{folder}: tokenizer has {max(tokens) + 1} tokens, the model only {vocab_size}")
    names, types = [], []
    for i in range(vocab_size):  # embedding rows beyond the tokenizer (padding) get placeholder tokens
        names.append(tokens.get(i, f"[PAD{i}]"))
        types.append(kinds.get(i, gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    by_name = {t: i for i, t in tokens.items()}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE_TOKENIZER)
    w.add_token_list(names)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(by_name[cfg["eos_token"]])
    w.add_pad_token_id(by_name[cfg["pad_token"]])
    w.add_bos_token_id(by_name["<|im_start|>"])  # never added (add_bos false), but llama.cpp wants an id
    w.add_add_bos_token(False)
    w.add_chat_template(cfg["chat_template"])


def _write_sampling(w, folder: Path) -> None:
    """The folder's generation_config.json defaults as GGUF sampling keys (llama.cpp applies them)."""
    path = folder / "generation_config.json"
    gen = json.loads(path.read_text()) if path.exists() else {}
    if "temperature" in gen:
        w.add_sampling_temp(float(gen["temperature"]))
    if "top_p" in gen:
        w.add_sampling_top_p(float(gen["top_p"]))
    if gen.get("top_k"):
        w.add_sampling_top_k(int(gen["top_k"]))
    if "repetition_penalty" in gen:
        w.add_sampling_penalty_repeat(float(gen["repetition_penalty"]))


def write_gguf(folder: str | Path, out: str | Path, dtype: str = "f16") -> Path:
    """Write the model folder `folder` (config.json + safetensors + tokenizer) as one GGUF file."""
    folder, out = Path(folder), Path(out)
    if dtype not in DTYPES:
        raise SystemExit(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    state, hf = _model_state(folder)
    if not (folder / "tokenizer.json").exists():
        raise SystemExit(f"{folder}: no tokenizer.json; a GGUF file carries its tokenizer")
    arch = ARCHITECTURES.get(hf["model_type"])
    if arch is None:
        raise SystemExit(
            f"{folder}: model_type {hf['model_type']!r} has no GGUF export yet "
            f"(supported: {', '.join(ARCHITECTURES)}); see docs/export.md"
        )
    if arch == "qwen2moe" and hf.get("norm_topk_prob"):
        # llama.cpp's qwen2moe mixes the chosen experts with their raw softmax weights (as transformers'
        # Qwen2-MoE does by default); it has no switch for renormalised ones.
        raise SystemExit(
            f"{folder}/config.json: norm_topk_prob is true, but llama.cpp's qwen2moe never renormalises "
            "the top-k routing weights, so it would compute a different model; export qwen2_moe "
            "models trained with norm_topk_prob=false, or use the qwen3_moe layout"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), arch)
    w.add_name(folder.resolve().name)
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _write_hparams(w, hf, arch)
    _write_tokenizer(w, folder, hf["vocab_size"])
    _write_sampling(w, folder)
    for name, t in gguf_tensors(state, hf):
        data, qtype = _tensor_data(name, t, dtype)
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def export_gguf(model: str | Path, out: str | Path, dtype: str = "f16", lora: str | Path | None = None) -> Path:
    """GGUF of a model folder; with a LoRA adapter (`lora`, or `model` itself being an adapter folder
    whose adapter_config.json names its base) the adapter is merged first (sprout export merge-lora)."""
    model = Path(model)
    if lora is None and (model / "adapter_config.json").exists():
        lora = model
        base = json.loads((model / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or not (Path(base) / "config.json").exists():
            raise SystemExit(
                f"{model}/adapter_config.json: base_model_name_or_path {base!r} is not a model "
                "folder; pass the base as --model and the adapter as --lora"
            )
        model = Path(base)
    if lora is None:
        return write_gguf(model, out, dtype)
    from .merge_lora import merge_lora_folder

    with tempfile.TemporaryDirectory(prefix="sprout-merged-") as tmp:
        merged = merge_lora_folder(model, lora, tmp)
        gen = next(
            (p / "generation_config.json" for p in (Path(lora), model) if (p / "generation_config.json").exists()), None
        )
        if gen:  # sampling defaults: the adapter's, else the base's
            (merged / "generation_config.json").write_text(gen.read_text())
        return write_gguf(merged, out, dtype)

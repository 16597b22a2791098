"""Hugging Face tensor names and layouts -> llama.cpp's GGUF names and layouts, per architecture.

llama.cpp names tensors `blk.N.attn_q.weight`, `blk.N.ffn_gate_exps.weight`, ... and expects a few
layouts that differ from transformers':

* `llama` rotates RoPE pairs (x0, x1), (x2, x3), ... while transformers' Llama rotates the halves
  (x_i, x_{i+d/2}); the Q and K rows of each head are permuted so both compute the same thing.
  `qwen3` / `qwen3moe` use the half-rotation in llama.cpp too ("NEOX" RoPE): no permutation.
* experts are one 3-D tensor per projection, `[n_expert, rows, cols]` (numpy order), not one matrix
  per expert.
* DeepSeek's MLA up-projection `kv_b_proj` is split into `attn_k_b` (transposed per head) and
  `attn_v_b`, so llama.cpp can absorb them into the query and output (the MLA "weight absorption").
  Its RoPE pairs are already interleaved (`rope_interleave`), which is what llama.cpp expects.
* Qwen3-Next: llama.cpp's norms multiply by w where transformers' zero-centred norms multiply by
  (1 + w), so 1 is added (except the Gated DeltaNet output norm, a plain one); A is stored as
  -exp(A_log); the fused `in_proj_qkvz`, interleaved per key head as [q, k, v, z], becomes one
  [all q, all k, all v] matrix `attn_qkv` plus the output gate `attn_gate`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch

# model_type -> llama.cpp architecture name (general.architecture)
ARCHITECTURES = {
    "qwen3": "qwen3",
    "llama": "llama",
    "qwen3_moe": "qwen3moe",
    "qwen2_moe": "qwen2moe",
    "deepseek_v3": "deepseek2",
    "qwen3_next": "qwen3next",
}

_COMMON = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    # DeepSeek-V3: MLA projections, shared experts, the router's balancing bias
    "self_attn.q_a_proj.weight": "attn_q_a.weight",
    "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attn_q_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    # Qwen3-Next: the gated shared expert and the Gated DeltaNet ("ssm") tensors
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    "linear_attn.A_log": "ssm_a",
    "linear_attn.dt_bias": "ssm_dt.bias",
    "linear_attn.conv1d.weight": "ssm_conv1d.weight",
    "linear_attn.in_proj_ba.weight": "ssm_ba.weight",
    "linear_attn.norm.weight": "ssm_norm.weight",
    "linear_attn.out_proj.weight": "ssm_out.weight",
}
# Architectures whose llama.cpp loader requires output.weight even when the head is tied to the embedding.
_OUTPUT_REQUIRED = ("qwen2_moe",)
_LAYER_KEY = re.compile(r"model\.layers\.(\d+)\.(.+)")
_EXPERT_KEY = re.compile(r"mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")


def _unrotate_halves(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows from half-rotation order to pair-rotation order (llama RoPE).

    Within a head of size d, row j < d/2 and row j + d/2 form one rotated pair; llama.cpp wants
    them at rows 2j and 2j+1."""
    rows, cols = w.shape
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


def gguf_tensors(state: dict[str, torch.Tensor], hf: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for every weight of a model folder, in llama.cpp's layout."""
    model_type = hf["model_type"]
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for key, t in state.items():
        if model_type == "qwen3_next":
            t = _qwen3_next_values(key, t)
        if key in _COMMON:
            yield _COMMON[key], t
            continue
        m = _LAYER_KEY.fullmatch(key)
        if not m:
            raise SystemExit(
                f"weight {key!r} has no GGUF tensor in llama.cpp's {ARCHITECTURES[model_type]}; "
                "this model cannot be exported as it is"
            )
        i, rest = int(m.group(1)), m.group(2)
        e = _EXPERT_KEY.fullmatch(rest)
        if e:
            experts.setdefault((i, e.group(2)), {})[int(e.group(1))] = t
        elif rest == "self_attn.kv_b_proj.weight":
            yield from _split_kv_b(i, t, hf)
        elif rest == "linear_attn.in_proj_qkvz.weight":
            yield from _split_qkvz(i, t, hf)
        elif model_type == "qwen3_next" and rest == "post_attention_layernorm.weight":
            yield f"blk.{i}.post_attention_norm.weight", t
        elif rest in _LAYER:
            if model_type == "llama" and rest == "self_attn.q_proj.weight":
                t = _unrotate_halves(t, hf["num_attention_heads"])
            elif model_type == "llama" and rest == "self_attn.k_proj.weight":
                t = _unrotate_halves(t, hf["num_key_value_heads"])
            elif rest == "mlp.shared_expert_gate.weight":
                t = t.reshape(-1)  # [1, hidden] -> the vector [hidden] llama.cpp (and transformers' reader) expect
            yield f"blk.{i}.{_LAYER[rest]}", t
        else:  # e.g. attention biases, which llama.cpp's qwen3 would silently ignore
            raise SystemExit(
                f"weight {key!r} has no GGUF tensor in llama.cpp's {ARCHITECTURES[model_type]}; "
                "this model cannot be exported as it is"
            )
    for (i, proj), by_id in sorted(experts.items()):
        yield f"blk.{i}.ffn_{proj}_exps.weight", torch.stack([by_id[k] for k in sorted(by_id)])
    if model_type in _OUTPUT_REQUIRED and "lm_head.weight" not in state:  # tied head, written out
        yield "output.weight", state["model.embed_tokens.weight"]


def _split_kv_b(i: int, w: torch.Tensor, hf: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """kv_b_proj [heads * (nope + v), kv_lora] -> attn_k_b [heads, nope, kv_lora]^T per head, attn_v_b."""
    heads, nope, v = hf["num_attention_heads"], hf["qk_nope_head_dim"], hf["v_head_dim"]
    kv = w.reshape(heads, nope + v, w.shape[-1])
    k_b, v_b = kv.split([nope, v], dim=1)
    yield f"blk.{i}.attn_k_b.weight", k_b.transpose(1, 2).contiguous()  # [heads, kv_lora, nope]
    yield f"blk.{i}.attn_v_b.weight", v_b.contiguous()  # [heads, v, kv_lora]


def _qwen3_next_values(key: str, t: torch.Tensor) -> torch.Tensor:
    """Qwen3-Next tensors whose values (not only names) differ in llama.cpp."""
    if key.endswith("linear_attn.A_log"):
        return -torch.exp(t)  # llama.cpp stores the decay rate A itself
    if key.endswith("conv1d.weight"):
        return t.squeeze(1)  # [channels, 1, kernel] -> [channels, kernel]
    if key.endswith("norm.weight") and not key.endswith("linear_attn.norm.weight"):
        return t + 1  # zero-centred (1 + w) norm -> plain w norm
    return t


def _split_qkvz(i: int, w: torch.Tensor, hf: dict) -> Iterator[tuple[str, torch.Tensor]]:
    """in_proj_qkvz rows, grouped per key head as [q, k, v, z], -> attn_qkv [all q; all k; all v] and attn_gate z."""
    nk, dk, dv = hf["linear_num_key_heads"], hf["linear_key_head_dim"], hf["linear_value_head_dim"]
    v_per_k = hf["linear_num_value_heads"] // nk * dv
    groups = w.reshape(nk, 2 * dk + 2 * v_per_k, w.shape[-1])
    q, k, v, z = groups.split([dk, dk, v_per_k, v_per_k], dim=1)
    flat = [x.reshape(-1, w.shape[-1]) for x in (q, k, v, z)]
    yield f"blk.{i}.attn_qkv.weight", torch.cat(flat[:3])
    yield f"blk.{i}.attn_gate.weight", flat[3]

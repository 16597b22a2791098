"""`sprout import minimind FILE.pth --out DIR`: MiniMind's checkpoints as standard Hugging Face folders.

MiniMind's trainers save `{name: tensor.half()}` of its own model class. Its parameter names already
follow transformers' (`model.layers.N.self_attn.q_proj.weight`, `mlp.gate_proj`, ...), so the import is
mostly a matter of reading the architecture off the tensor shapes:

    generation   attention                         feed-forward               folder written
    MiniMind2    no QK-norm, head_dim = H / heads  dense                      llama
                                                   MoE + ungated shared       qwen2_moe
    minimind-3   q_norm / k_norm (Qwen3-aligned)   dense                      qwen3
                                                   MoE, routed only           qwen3_moe

What the shapes cannot tell (RMSNorm epsilon, RoPE theta, experts per token, MiniMind2's head count)
takes MiniMind's defaults unless given. MiniMind2's shared experts are added without a gate while
Qwen2-MoE scales its one shared expert by sigmoid(gate(x)): with a zero gate that factor is exactly 1/2,
so the shared experts (concatenated into one wider expert, which sums them) get their down projection
doubled — an exact rewrite in floating point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .hub import build_model, save_model
from .moe import MoEConfig

# MiniMind's defaults per generation (its MiniMindConfig): RMSNorm eps, experts per token.
DEFAULTS: dict[int, dict[str, Any]] = {
    2: {"rms_norm_eps": 1e-5, "experts_per_token": 2},
    3: {"rms_norm_eps": 1e-6, "experts_per_token": 1},
}
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


@dataclass
class ImportOptions:
    """Settings the tensors do not carry; None = MiniMind's default for the detected generation."""

    num_attention_heads: int | None = None  # MiniMind2 only (minimind-3 stores head_dim in q_norm)
    rms_norm_eps: float | None = None
    rope_theta: float = 1e6
    experts_per_token: int | None = None
    norm_topk_prob: bool = True
    max_position_embeddings: int = 32768


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a MiniMind .pth (a bare state dict or a resume checkpoint's 'model'), unpickled
    with weights_only=True so a file cannot run code; prefixes from torch.compile / DDP are removed."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"{path}: no such file") from None
    except Exception as e:  # not a torch file, or one holding more than tensors
        raise SystemExit(f"{path}: cannot read it as a PyTorch state dict ({type(e).__name__}: {e})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SystemExit(f"{path}: expected a dict of tensors (MiniMind's torch.save(model.state_dict()))")
    out = {}
    for k, v in obj.items():
        for prefix in ("_orig_mod.", "module."):
            k = k.removeprefix(prefix)
        out[k] = v
    if "model.embed_tokens.weight" not in out:
        raise SystemExit(f"{path}: no model.embed_tokens.weight — not a MiniMind checkpoint")
    return out


def infer_config(state: dict[str, torch.Tensor], opt: ImportOptions) -> tuple[ModelConfig, int]:
    """(the config of the folder to write, MiniMind generation 2 or 3) from the tensor shapes."""
    V, H = state["model.embed_tokens.weight"].shape
    L = 1 + max(int(m.group(1)) for k in state if (m := _LAYER.match(k)))
    p = "model.layers.0."
    gen = 3 if p + "self_attn.q_norm.weight" in state else 2
    d = DEFAULTS[gen]
    q_out, kv_out = state[p + "self_attn.q_proj.weight"].shape[0], state[p + "self_attn.k_proj.weight"].shape[0]
    if gen == 3:
        head_dim = state[p + "self_attn.q_norm.weight"].shape[0]
        heads = q_out // head_dim
    else:
        heads = opt.num_attention_heads or 8
        if q_out != H or H % heads:
            raise SystemExit(
                f"MiniMind2 attention has q_proj {q_out}x{H}; {heads} heads do not divide it (pass --heads N)"
            )
        head_dim = H // heads
    lm_head = state.get("lm_head.weight")
    common: dict[str, Any] = dict(
        vocab_size=V,
        hidden_size=H,
        num_hidden_layers=L,
        num_attention_heads=heads,
        num_key_value_heads=kv_out // head_dim,
        head_dim=head_dim,
        rope_theta=opt.rope_theta,
        rms_norm_eps=opt.rms_norm_eps or d["rms_norm_eps"],
        max_position_embeddings=opt.max_position_embeddings,
        tie_word_embeddings=lm_head is None or torch.equal(lm_head, state["model.embed_tokens.weight"]),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )  # MiniMind tokenizer ids; generation_config takes a given one
    if p + "mlp.gate_proj.weight" in state:
        inter = state[p + "mlp.gate_proj.weight"].shape[0]
        return ModelConfig(model_type="qwen3" if gen == 3 else "llama", intermediate_size=inter, **common), gen
    experts = 1 + max(int(k.split(".")[5]) for k in state if k.startswith(p + "mlp.experts."))
    expert_inter = state[p + "mlp.experts.0.gate_proj.weight"].shape[0]
    k = opt.experts_per_token or d["experts_per_token"]
    shared = sorted({k_.split(".")[5] for k_ in state if k_.startswith(p + "mlp.shared_experts.")})
    if gen == 3:
        return MoEConfig(
            model_type="qwen3_moe",
            intermediate_size=expert_inter,
            num_experts=experts,
            num_experts_per_tok=k,
            moe_intermediate_size=expert_inter,
            norm_topk_prob=opt.norm_topk_prob,
            router_aux_loss_coef=5e-4,
            **common,
        ), gen
    if not shared:
        raise SystemExit(
            "this MiniMind2 MoE checkpoint has no shared experts; sprout writes MiniMind2 MoE as "
            "qwen2_moe, whose layout needs one"
        )
    shared_inter = sum(state[f"{p}mlp.shared_experts.{j}.gate_proj.weight"].shape[0] for j in shared)
    # MiniMind2 renormalises the top-k weights only when k > 1.
    return MoEConfig(
        model_type="qwen2_moe",
        intermediate_size=expert_inter,
        num_experts=experts,
        num_experts_per_tok=k,
        moe_intermediate_size=expert_inter,
        shared_expert_intermediate_size=shared_inter,
        norm_topk_prob=opt.norm_topk_prob and k > 1,
        router_aux_loss_coef=0.01,
        **common,
    ), gen


def convert_state(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """MiniMind names -> the folder's names, in fp32. Only MiniMind2's shared experts are rewritten."""
    out = {k: v.float() for k, v in state.items() if ".mlp.shared_experts." not in k}
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    if getattr(cfg, "shared_expert_intermediate_size", 0):
        for i in range(cfg.num_hidden_layers):
            p = f"model.layers.{i}.mlp."
            ids = sorted({k.split(".")[5] for k in state if k.startswith(p + "shared_experts.")}, key=int)
            part = {
                n: [state[f"{p}shared_experts.{j}.{n}.weight"].float() for j in ids]
                for n in ("gate_proj", "up_proj", "down_proj")
            }
            # Sum of experts = one expert with the hidden units side by side.
            out[p + "shared_expert.gate_proj.weight"] = torch.cat(part["gate_proj"], 0)
            out[p + "shared_expert.up_proj.weight"] = torch.cat(part["up_proj"], 0)
            out[p + "shared_expert.down_proj.weight"] = 2 * torch.cat(part["down_proj"], 1)  # undo sigmoid(0)
            out[p + "shared_expert_gate.weight"] = torch.zeros(1, cfg.hidden_size)
    return out


def import_minimind(
    path: str | Path, out: str | Path, tokenizer: str | Path | None = None, options: ImportOptions | None = None
) -> Path:
    """Write a standard folder (config.json, model.safetensors, tokenizer files when `tokenizer` is given)."""
    from ..tokenizer import Tokenizer

    state = read_state(path)
    cfg, gen = infer_config(state, options or ImportOptions())
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(convert_state(state, cfg), strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(
            f"{path}: tensors do not match a MiniMind{'2' if gen == 2 else '-3'} model "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]})"
        )
    out = Path(out)
    tok = Tokenizer.load(tokenizer) if tokenizer else None
    if tok and tok.vocab_size > cfg.vocab_size:
        raise SystemExit(f"{tokenizer}: {tok.vocab_size} tokens, more than the checkpoint's {cfg.vocab_size}")
    save_model(model, out, tok.generation_ids() if tok else None)
    print(
        f"MiniMind{'2' if gen == 2 else '-3'} {cfg.model_type}: {cfg.num_hidden_layers} layers, hidden "
        f"{cfg.hidden_size}, {cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv, vocab "
        f"{cfg.vocab_size}"
        + (f", {cfg.num_experts} experts top-{cfg.num_experts_per_tok}" if isinstance(cfg, MoEConfig) else "")
        + f" -> {out}"
    )
    if tok:
        tok.save(out)
    else:
        print("no --tokenizer given: copy MiniMind's tokenizer folder in (--tokenizer DIR) before chatting")
    return out

"""`sprout import minimind`: MiniMind-style state dicts of both generations, dense and MoE, imported and
compared with a direct computation of MiniMind's forward pass (written here from its model definition);
stock transformers loads each imported folder and gives the same logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from foreign_folders import build_tokenizer

from sprout.models.minimind import ImportOptions, import_minimind

V, H, L, HEADS, KV, INTER = 6400, 64, 2, 4, 2, 96
EPS = {2: 1e-5, 3: 1e-6}


def minimind_state(gen: int, moe: bool, experts: int = 4, shared: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under MiniMind's names and shapes, in fp16 as its trainers save them."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape, scale=0.2):
        return (torch.randn(*shape, generator=g) * scale).half()

    hd = H // HEADS
    emb = w(V, H, scale=0.5)
    s = {"model.embed_tokens.weight": emb, "model.norm.weight": 1 + w(H, scale=0.1), "lm_head.weight": emb.clone()}
    for i in range(L):
        p = f"model.layers.{i}."
        s |= {
            p + "self_attn.q_proj.weight": w(HEADS * hd, H),
            p + "self_attn.k_proj.weight": w(KV * hd, H),
            p + "self_attn.v_proj.weight": w(KV * hd, H),
            p + "self_attn.o_proj.weight": w(H, HEADS * hd),
            p + "input_layernorm.weight": 1 + w(H, scale=0.1),
            p + "post_attention_layernorm.weight": 1 + w(H, scale=0.1),
        }
        if gen == 3:
            s |= {
                p + "self_attn.q_norm.weight": 1 + w(hd, scale=0.1),
                p + "self_attn.k_norm.weight": 1 + w(hd, scale=0.1),
            }
        ffns = [f"{p}mlp."]
        if moe:
            s[p + "mlp.gate.weight"] = w(experts, H, scale=1.0)
            ffns = [f"{p}mlp.experts.{j}." for j in range(experts)]
            if gen == 2:
                ffns += [f"{p}mlp.shared_experts.{j}." for j in range(shared)]
        for f in ffns:
            s |= {
                f + "gate_proj.weight": w(INTER, H),
                f + "up_proj.weight": w(INTER, H),
                f + "down_proj.weight": w(H, INTER),
            }
    return s


# ---- MiniMind's forward pass, computed directly -----------------------------------------------------
def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rope(x, theta=1e6):
    """x [B, T, heads, d]; MiniMind rotates the two halves of each head (cos/sin repeated twice)."""
    T, d = x.shape[1], x.shape[-1]
    f = torch.outer(torch.arange(T).float(), 1.0 / theta ** (torch.arange(0, d, 2).float() / d))
    cos, sin = torch.cat([f.cos(), f.cos()], -1)[None, :, None], torch.cat([f.sin(), f.sin()], -1)[None, :, None]
    return x * cos + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1) * sin


def _ffn(x, s, p):
    return F.linear(
        F.silu(F.linear(x, s[p + "gate_proj.weight"])) * F.linear(x, s[p + "up_proj.weight"]), s[p + "down_proj.weight"]
    )


def _moe(x, s, p, gen, top_k):
    flat = x.reshape(-1, H)
    scores = F.linear(flat, s[p + "gate.weight"]).softmax(-1)
    wk, ik = scores.topk(top_k, -1)
    if gen == 3 or top_k > 1:  # minimind-3 always renormalises; MiniMind2 only for k > 1
        wk = wk / wk.sum(-1, keepdim=True)
    y = torch.zeros_like(flat)
    for n in range(flat.shape[0]):
        for k in range(top_k):
            y[n] += wk[n, k] * _ffn(flat[n], s, f"{p}experts.{int(ik[n, k])}.")
    y = y.view_as(x)
    j = 0
    while f"{p}shared_experts.{j}.gate_proj.weight" in s:  # MiniMind2: shared experts added as they are
        y = y + _ffn(x, s, f"{p}shared_experts.{j}.")
        j += 1
    return y


def minimind_forward(s16, ids, gen, top_k):
    s = {k: v.float() for k, v in s16.items()}
    eps, hd = EPS[gen], H // HEADS
    x = s["model.embed_tokens.weight"][ids]
    B, T = ids.shape
    causal = torch.full((T, T), float("-inf")).triu(1)
    for i in range(L):
        p = f"model.layers.{i}."
        h = _rms(x, s[p + "input_layernorm.weight"], eps)
        q = F.linear(h, s[p + "self_attn.q_proj.weight"]).view(B, T, HEADS, hd)
        k = F.linear(h, s[p + "self_attn.k_proj.weight"]).view(B, T, KV, hd)
        v = F.linear(h, s[p + "self_attn.v_proj.weight"]).view(B, T, KV, hd)
        if gen == 3:
            q, k = _rms(q, s[p + "self_attn.q_norm.weight"], eps), _rms(k, s[p + "self_attn.k_norm.weight"], eps)
        q, k = _rope(q).transpose(1, 2), _rope(k).transpose(1, 2)
        k, v = k.repeat_interleave(HEADS // KV, 1), v.transpose(1, 2).repeat_interleave(HEADS // KV, 1)
        att = ((q @ k.transpose(-1, -2)) / math.sqrt(hd) + causal).softmax(-1) @ v
        x = x + F.linear(att.transpose(1, 2).reshape(B, T, -1), s[p + "self_attn.o_proj.weight"])
        h = _rms(x, s[p + "post_attention_layernorm.weight"], eps)
        x = x + (_moe(h, s, p + "mlp.", gen, top_k) if p + "mlp.gate.weight" in s else _ffn(h, s, p + "mlp."))
    return F.linear(_rms(x, s["model.norm.weight"], eps), s["lm_head.weight"])


@pytest.mark.parametrize(
    "gen,moe,family", [(2, False, "llama"), (3, False, "qwen3"), (2, True, "qwen2_moe"), (3, True, "qwen3_moe")]
)
def test_import_matches_minimind_forward_in_transformers(tmp_path, gen, moe, family):
    from transformers import AutoModelForCausalLM

    state = minimind_state(gen, moe)
    torch.save(state, tmp_path / "ckpt.pth")
    top_k = 2 if gen == 2 else 1  # MiniMind's defaults per generation
    out = import_minimind(
        tmp_path / "ckpt.pth", tmp_path / "out", options=ImportOptions(num_attention_heads=HEADS if gen == 2 else None)
    )
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.model_type == family
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, theirs = minimind_forward(state, ids, gen, top_k), hf(ids).logits
    assert ref.abs().max() > 1.0  # the logits are far from uniform, so agreement means something
    assert (theirs - ref).abs().max() < 1e-3  # measured ~1.4e-5 against logits up to ~20


def test_cli_import_with_minimind_tokenizer_then_chat(tmp_path):
    from sprout.cli import main
    from sprout.infer.chat import ChatSession
    from sprout.infer.generate import SamplingConfig
    from sprout.infer.loading import load_for_inference

    build_tokenizer("minimind").save_pretrained(tmp_path / "tokenizer")  # MiniMind's layout, its own template
    torch.save(minimind_state(3, False), tmp_path / "full_sft_64.pth")
    main(
        [
            "import",
            "minimind",
            str(tmp_path / "full_sft_64.pth"),
            "--out",
            str(tmp_path / "out"),
            "--tokenizer",
            str(tmp_path / "tokenizer"),
        ]
    )
    model, tok = load_for_inference(str(tmp_path / "out"), "cpu")
    assert (tok.eos_id, tok.pad_id) == (2, 0)
    reply = "".join(ChatSession(model, tok, SamplingConfig(max_new_tokens=5, temperature=0)).reply_stream("你好"))
    assert reply  # the imported model answers through sprout's own chat loop


def test_not_a_minimind_file_is_a_short_message(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(SystemExit, match="not a MiniMind checkpoint"):
        import_minimind(tmp_path / "x.pth", tmp_path / "out")

"""Qwen3-Next family: Gated DeltaNet (chunkwise == recurrent), hybrid cache decoding, interop with transformers
(which runs its own pure-PyTorch fallback when flash-linear-attention / causal-conv1d are not installed)."""

import pytest
import torch
from conftest import assert_cached_decoding_matches_full_forward
from transformers import AutoModelForCausalLM

from sprout.infer.generate import SamplingConfig, generate
from sprout.models import build_model, load_model, model_preset, save_model
from sprout.models.qwen3_next import _l2norm, gated_delta_chunkwise, gated_delta_recurrent


@pytest.mark.parametrize("T,chunk,init", [(37, 8, True), (16, 16, False), (5, 64, True)])
def test_chunkwise_and_recurrent_gated_delta_rule_agree(T, chunk, init):
    torch.manual_seed(T)
    B, H, dk, dv = 2, 3, 8, 6
    q = _l2norm(torch.randn(B, H, T, dk)) / dk**0.5
    k = _l2norm(torch.randn(B, H, T, dk))
    v = torch.randn(B, H, T, dv)
    g = -torch.rand(B, H, T) * 3  # strong decay too (the chunk form must not divide underflowed products)
    beta = torch.rand(B, H, T)
    s0 = torch.randn(B, H, dk, dv) if init else None
    o1, s1 = gated_delta_recurrent(q, k, v, g, beta, s0)
    o2, s2 = gated_delta_chunkwise(q, k, v, g, beta, s0, chunk=chunk)
    assert (o1 - o2).abs().max() < 1e-5 and (s1 - s2).abs().max() < 1e-5


def tiny_next():
    torch.manual_seed(0)
    model = build_model(model_preset("tiny-qwen3-next")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5) if "linear_attn.norm" in name else p.uniform_(-0.5, 0.5)
    return model


def test_layer_pattern_is_three_linear_then_one_full():
    model = tiny_next()
    assert [layer.layer_type for layer in model.model.layers] == ["linear_attention"] * 3 + ["full_attention"]


def test_recurrent_state_decoding_equals_full_forward():
    model = tiny_next()
    assert_cached_decoding_matches_full_forward(model, length=21, prefill=13)


def test_left_padded_batch_gives_the_same_tokens_as_one_at_a_time():
    model = tiny_next()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21]]
    sc = SamplingConfig(max_new_tokens=6, temperature=0, stop_token_ids=[])
    assert generate(model, prompts, sc) == [generate(model, [p], sc)[0] for p in prompts]


def test_transformers_loads_our_folder_with_same_logits_and_greedy_tokens(tmp_path):
    model = tiny_next()
    save_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "Qwen3NextForCausalLM"
    x = torch.randint(3, 512, (2, 33))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() < 1e-4
        assert (load_model(tmp_path)(x).logits - model(x).logits).abs().max() == 0
    prompt = x[:1, :10]
    theirs = hf.generate(
        prompt, max_new_tokens=16, do_sample=False, repetition_penalty=1.0, eos_token_id=None, pad_token_id=0
    )
    ours = generate(model, [prompt[0].tolist()], SamplingConfig(max_new_tokens=16, temperature=0, stop_token_ids=[]))
    assert ours[0] == theirs[0, 10:].tolist()

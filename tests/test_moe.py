"""Mixture of experts: sorted dispatch, routing options, load balancing, and interop with transformers."""

import pytest
import torch
from conftest import assert_cached_decoding_matches_full_forward
from torch import nn
from transformers import AutoModelForCausalLM

from sprout.infer.generate import SamplingConfig, generate
from sprout.models import load_model, save_model
from sprout.models.moe import MoEBlock, dispatch_naive, dispatch_sorted, moe_metrics, update_router_biases


@pytest.mark.parametrize(
    "opts",
    [
        dict(score="softmax"),
        dict(
            score="sigmoid", n_group=2, topk_group=1, routed_scaling_factor=2.5, use_bias=True, shared_intermediate=16
        ),
        dict(score="softmax", shared_intermediate=16, shared_gated=True, norm_topk=False),
    ],
)
def test_sorted_dispatch_equals_a_per_token_loop(opts):
    torch.manual_seed(0)
    block = MoEBlock(32, 8, 3, 24, **opts).eval()
    if block.gate.e_score_correction_bias is not None:
        block.gate.e_score_correction_bias.uniform_(-0.1, 0.1)
    x = torch.randn(3, 11, 32)
    flat = x.reshape(-1, 32)
    _, w, idx = block.gate(flat)
    assert idx.shape == (33, 3) and (idx.sort(-1).values.diff(dim=-1) > 0).all()  # k distinct experts
    ref = dispatch_naive(flat, idx, w, block.experts)
    assert torch.allclose(dispatch_sorted(flat, idx, w, block.experts), ref, atol=1e-6)
    y, stats = block(x)
    shared = 0
    if hasattr(block, "shared_expert"):
        shared = torch.sigmoid(block.shared_expert_gate(flat)) * block.shared_expert(flat)
    elif hasattr(block, "shared_experts"):
        shared = block.shared_experts(flat)
    assert torch.allclose(y.reshape(-1, 32), ref + shared, atol=1e-6)
    assert stats.load.sum() == 33 * 3 and stats.balance_loss is None  # eval: no balancing loss


def test_group_limited_routing_picks_experts_from_the_best_groups_only():
    torch.manual_seed(1)
    block = MoEBlock(16, 8, 2, 8, score="sigmoid", n_group=4, topk_group=1)
    _, _, idx = block.gate(torch.randn(50, 16))
    assert (idx // 2 == idx[:, :1] // 2).all()  # both experts in one group of 2


def test_balance_loss_is_returned_in_training_and_gradients_reach_the_router():
    torch.manual_seed(0)
    block = MoEBlock(16, 4, 2, 8, aux_loss_coef=0.1).train()
    y, stats = block(torch.randn(2, 5, 16))
    assert stats.balance_loss is not None and stats.balance_loss.item() >= 0.1 * 0.99  # >= coef, = coef when even
    (y.sum() + stats.balance_loss).backward()
    assert block.gate.weight.grad.abs().sum() > 0
    block.eval()
    assert block(torch.randn(2, 5, 16))[1].balance_loss is None


def test_bias_balancing_moves_the_bias_towards_underloaded_experts_once_per_call():
    torch.manual_seed(0)
    block = MoEBlock(16, 4, 1, 8, score="sigmoid", bias_update_rate=0.01).train()
    with torch.no_grad():
        block.gate.weight[0] += 1.0  # expert 0 is preferred by every token
    x = torch.randn(4, 16, 16).abs()
    _, stats = block(x)
    b = block.gate.e_score_correction_bias
    assert (b == 0).all()  # forward never touches the bias
    holder, layer = nn.Module(), nn.Module()
    layer.mlp = block
    holder.model = nn.Module()
    holder.model.layers = nn.ModuleList([layer])
    update_router_biases(holder, {0: stats.load})
    assert b[0] == -0.01 and (b[1:] >= 0).all() and b.abs().max() == 0.01


def test_moe_model_aux_loss_and_metrics():
    model = tiny_moe()
    model.train()
    out = model(torch.randint(3, 512, (2, 16)))
    assert set(out.aux_losses) == {"moe_balance"} and out.aux_loss is out.aux_losses["moe_balance"]
    m = moe_metrics(out.expert_load)
    assert {"moe/max_min", "moe/L0/max_min", "moe/L1/e3"} <= set(m)
    assert abs(sum(m[f"moe/L0/e{e}"] for e in range(4)) - 1) < 1e-6


def tiny_moe(**kw):
    from sprout.models import build_model, model_preset

    torch.manual_seed(0)
    model = build_model(model_preset("tiny-moe", **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def test_kv_cache_decoding_equals_full_forward():
    model = tiny_moe()
    assert_cached_decoding_matches_full_forward(model)


@pytest.mark.parametrize(
    "kw,arch",
    [
        ({}, "Qwen3MoeForCausalLM"),
        (dict(model_type="qwen2_moe", shared_expert_intermediate_size=48, mlp_only_layers=[0]), "Qwen2MoeForCausalLM"),
    ],
)
def test_transformers_loads_our_folder_with_same_logits_and_greedy_tokens(tmp_path, kw, arch):
    model = tiny_moe(**kw)
    save_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == arch
    x = torch.randint(3, 512, (2, 33))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() < 1e-4
        assert (load_model(tmp_path)(x).logits - model(x).logits).abs().max() == 0
    prompt = x[:1, :10]
    theirs = hf.generate(
        prompt, max_new_tokens=24, do_sample=False, repetition_penalty=1.0, eos_token_id=None, pad_token_id=0
    )
    ours = generate(model, [prompt[0].tolist()], SamplingConfig(max_new_tokens=24, temperature=0, stop_token_ids=[]))
    assert ours[0] == theirs[0, 10:].tolist()


def test_presets_match_minimind_sizes():
    from sprout.models import model_preset

    m2, m3 = model_preset("minimind2-moe"), model_preset("minimind3-moe")
    assert (m2.hidden_size, m2.num_hidden_layers, m2.num_experts, m2.num_experts_per_tok) == (640, 8, 4, 2)
    assert m2.shared_expert_intermediate_size > 0
    assert 140e6 < m2.num_parameters() < 150e6
    assert (m3.hidden_size, m3.num_hidden_layers) == (768, 8)
    assert 195e6 < m3.num_parameters() < 201e6 and 62e6 < m3.num_parameters(active=True) < 66e6

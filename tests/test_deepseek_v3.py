"""DeepSeek-V3 family: MLA with a compressed cache, DeepSeek MoE, MTP heads, and interop with transformers."""

import torch
from conftest import assert_cached_decoding_matches_full_forward
from transformers import AutoModelForCausalLM

from sprout.infer.generate import SamplingConfig, generate
from sprout.models import build_model, load_model, model_preset, save_model
from sprout.models.deepseek_v3 import LatentCache
from sprout.models.moe import update_router_biases


def tiny_ds(**kw):
    torch.manual_seed(0)
    model = build_model(model_preset("tiny-deepseekv3", **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
        for layer in model.model.layers:
            if hasattr(layer.mlp, "gate"):
                layer.mlp.gate.e_score_correction_bias.uniform_(-0.05, 0.05)
    return model


def test_cache_stores_only_the_latent_and_decoding_equals_full_forward():
    model = tiny_ds()
    cache = model.new_cache(2, 32)
    assert isinstance(cache, LatentCache) and set(cache.columns) == {"c", "kr"}
    assert cache.columns["c"][0].shape == (2, 32, 16) and cache.columns["kr"][0].shape == (2, 32, 8)
    assert_cached_decoding_matches_full_forward(model)


def test_training_forward_returns_mtp_logits_balance_loss_and_expert_load_and_leaves_the_bias():
    model = tiny_ds(aux_loss_alpha=0.01, bias_update_rate=0.01).train()
    before = model.model.layers[1].mlp.gate.e_score_correction_bias.clone()
    out = model(torch.randint(3, 512, (2, 16)))
    assert set(out.aux_losses) == {"moe_balance"} and out.aux_losses["moe_balance"] > 0
    assert [t.shape for t in out.mtp_logits] == [(2, 15, 512)] and out.mtp_loss_weight == 0.3
    assert set(out.expert_load) == {1} and out.expert_load[1].sum() == 2 * 16 * 2  # layer 0 is dense; top-2
    # The forward pass changes no state: the bias moves only in the once-per-step update.
    assert torch.equal(before, model.model.layers[1].mlp.gate.e_score_correction_bias)
    update_router_biases(model, out.expert_load)
    assert not torch.equal(before, model.model.layers[1].mlp.gate.e_score_correction_bias)
    out.mtp_logits[0].sum().backward()
    assert model.mtp[0].eh_proj.weight.grad is not None
    model.eval()
    with torch.no_grad():
        out = model(torch.randint(3, 512, (2, 16)))
    assert out.mtp_logits == [] and out.aux_losses == {}


def test_transformers_loads_our_folder_with_same_logits_and_greedy_tokens(tmp_path):
    model = tiny_ds()
    save_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "DeepseekV3ForCausalLM"
    x = torch.randint(3, 512, (2, 33))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() < 1e-4
        again = load_model(tmp_path)  # MTP heads are not exported; they start fresh on load
        assert (again(x).logits - model(x).logits).abs().max() == 0
    prompt = x[:1, :10]
    theirs = hf.generate(
        prompt, max_new_tokens=24, do_sample=False, repetition_penalty=1.0, eos_token_id=None, pad_token_id=0
    )
    ours = generate(model, [prompt[0].tolist()], SamplingConfig(max_new_tokens=24, temperature=0, stop_token_ids=[]))
    assert ours[0] == theirs[0, 10:].tolist()


def test_exported_folder_has_no_mtp_weights(tmp_path):
    from safetensors.torch import load_file

    save_model(tiny_ds(), tmp_path)
    assert not any(k.startswith("mtp.") for k in load_file(tmp_path / "model.safetensors"))

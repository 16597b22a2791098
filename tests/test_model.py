"""The dense model: causality, KV-cache decoding, packing masks, and interop with stock transformers."""

import pytest
import torch
from conftest import assert_cached_decoding_matches_full_forward, tiny_model
from transformers import AutoModelForCausalLM

from sprout.infer.generate import SamplingConfig, generate
from sprout.models import load_model, save_model


@pytest.mark.parametrize("model_type", ["qwen3", "llama"])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(model_type):
    model = tiny_model(model_type=model_type)
    x = torch.randint(3, 512, (2, 24))
    y = x.clone()
    y[:, 15] = (y[:, 15] + 7) % 512
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-6)
    assert not torch.allclose(a[:, 15:], b[:, 15:], atol=1e-3)


def test_kv_cache_decoding_equals_full_forward():
    model = tiny_model()
    assert_cached_decoding_matches_full_forward(model)


def test_packed_documents_do_not_attend_to_each_other():
    model = tiny_model()
    a, b = torch.randint(3, 512, (1, 9)), torch.randint(3, 512, (1, 7))
    packed = torch.cat([a, b], 1)
    doc_ids = torch.tensor([[0] * 9 + [1] * 7])
    pos = torch.tensor([list(range(9)) + list(range(7))])
    with torch.no_grad():
        out = model(packed, position_ids=pos, doc_ids=doc_ids).logits
        assert torch.allclose(out[:, :9], model(a).logits, atol=1e-5)
        assert torch.allclose(out[:, 9:], model(b).logits, atol=1e-5)


@pytest.mark.parametrize("model_type,tied", [("qwen3", True), ("llama", False)])
def test_transformers_loads_our_folder_with_same_logits_and_greedy_tokens(tmp_path, model_type, tied):
    model = tiny_model(model_type=model_type, tie_word_embeddings=tied)
    save_model(model, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}[model_type]
    x = torch.randint(3, 512, (2, 33))
    with torch.no_grad():
        assert (model(x).logits - hf(x).logits).abs().max() < 1e-4
    prompt = x[:1, :10]
    theirs = hf.generate(
        prompt, max_new_tokens=24, do_sample=False, repetition_penalty=1.0, eos_token_id=None, pad_token_id=0
    )
    ours = generate(model, [prompt[0].tolist()], SamplingConfig(max_new_tokens=24, temperature=0, stop_token_ids=[]))
    assert ours[0] == theirs[0, 10:].tolist()


def test_we_load_a_folder_written_by_transformers(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(1)
    cfg = Qwen3Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        tie_word_embeddings=False,
    )
    hf = Qwen3ForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path).eval()
    x = torch.randint(0, 300, (1, 12))
    with torch.no_grad():
        assert (ours(x).logits - hf(x).logits).abs().max() < 1e-4

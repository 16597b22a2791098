"""RoPE scaling (linear / NTK / YaRN) applied at inference."""

import torch
from conftest import tiny_model
from transformers import Qwen3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from sprout.models import apply_rope_scaling
from sprout.models.rope import scaled_inv_freq


def test_factor_one_or_none_leaves_the_model_unchanged():
    model = tiny_model()
    x = torch.randint(3, 512, (1, 20))
    with torch.no_grad():
        ref = model(x).logits
        assert torch.equal(apply_rope_scaling(model, "yarn", 1.0)(x).logits, ref)
        apply_rope_scaling(model, "linear", 4.0)
        assert not torch.allclose(model(x).logits, ref)
        assert torch.equal(apply_rope_scaling(model, "none", 4.0)(x).logits, ref)


def test_linear_and_yarn_frequencies_match_transformers():
    for kind in ("linear", "yarn"):
        params = {"rope_type": kind, "rope_theta": 1e6, "factor": 4.0}
        if kind == "yarn":
            params["original_max_position_embeddings"] = 128
        cfg = Qwen3Config(
            hidden_size=64, num_attention_heads=4, head_dim=32, max_position_embeddings=512, rope_parameters=params
        )
        inv, att = ROPE_INIT_FUNCTIONS[kind](cfg, "cpu")
        ours, our_att = scaled_inv_freq(32, 1e6, kind, 4.0, 128)
        assert torch.allclose(ours, inv.float(), rtol=1e-6) and abs(our_att - att) < 1e-6


def test_ntk_keeps_the_fastest_frequency_and_slows_the_slowest_by_the_factor():
    base, _ = scaled_inv_freq(32, 1e4)
    ntk, _ = scaled_inv_freq(32, 1e4, "ntk", 4.0)
    assert torch.isclose(ntk[0], base[0]) and torch.isclose(ntk[-1], base[-1] / 4, rtol=1e-4)

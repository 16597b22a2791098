"""The cache protocol (sprout.models.cache) for every family: rows added mid-decode, rows of different lengths
merged, rows removed and padding trimmed all give each row the logits it gets when decoded alone."""

import pytest
import torch
from conftest import (
    FAMILIES,
    assert_cache_operations_match_decoding_alone,
    assert_cached_decoding_matches_full_forward,
    tiny_family_model,
)

from sprout.infer.engine_batch import BatchEngine
from sprout.models.cache import Cache, KVCache


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_cache_implements_the_protocol_and_decodes_like_a_full_forward(family):
    model = tiny_family_model(family)
    assert isinstance(model.new_cache(2, 8), Cache)
    assert_cached_decoding_matches_full_forward(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_added_merged_removed_and_trimmed_match_decoding_alone(family):
    assert_cache_operations_match_decoding_alone(tiny_family_model(family))


def test_left_pad_and_trim_keep_recurrent_state_and_move_columns():
    model = tiny_family_model("qwen3_next")
    cache = model.new_cache(2, 4)
    with torch.no_grad():
        model(torch.randint(3, 512, (2, 6)), cache=cache)
    state = {i: t.clone() for i, t in cache.states["recurrent"].items()}
    k = cache.columns["k"][3][:, :, :6].clone()
    cache.left_pad(3)
    assert cache.length == 9 and torch.equal(cache.columns["k"][3][:, :, 3:9], k)
    assert (cache.columns["k"][3][:, :, :3] == 0).all()
    assert all(torch.equal(cache.states["recurrent"][i], s) for i, s in state.items())  # no columns: untouched
    cache.drop_left(3)
    assert cache.length == 6 and torch.equal(cache.columns["k"][3][:, :, :6], k)
    cache.select_rows(torch.tensor([1]))
    assert cache.batch_size == 1 and torch.equal(cache.states["recurrent"][0], state[0][1:])


def test_concat_refuses_caches_of_different_lengths():
    a = KVCache(1, 1, 2, 4, 8, torch.device("cpu"), torch.float32)
    b = KVCache(1, 1, 2, 4, 8, torch.device("cpu"), torch.float32)
    b.advance(3)
    with pytest.raises(ValueError, match="equal length"):
        a.concat(b)


def test_a_model_without_the_protocol_is_refused_when_the_engine_is_built():
    model = tiny_family_model("qwen3")
    model.new_cache = lambda batch, max_len: object()  # e.g. a family whose cache only imitates KVCache
    with pytest.raises(ValueError, match="cannot be served with continuous batching"):
        BatchEngine(model, name="odd")


def test_left_padding_enters_neither_the_conv_window_nor_the_delta_rule_state():
    model = tiny_family_model("qwen3_next")
    x = torch.randint(3, 512, (1, 7))
    alone, padded = model.new_cache(1, 16), model.new_cache(1, 16)
    mask = torch.cat([torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)], 1)
    with torch.no_grad():
        model(x, cache=alone)
        model(
            torch.cat([torch.zeros(1, 4, dtype=torch.long), x], 1),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            attention_mask=mask,
            cache=padded,
        )
    for name in ("conv", "recurrent"):
        for i, state in alone.states[name].items():
            assert state.abs().max() > 0 and torch.allclose(padded.states[name][i], state, atol=1e-5), (name, i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,v_dim", [(4, 2, 16), (4, 4, 16), (4, 4, 8)])
def test_one_query_attention_equals_sdpa(dtype: torch.dtype, heads: int, kv_heads: int, v_dim: int) -> None:
    """The CPU decoding path of `attend` (two matmuls for a single query per row) equals SDPA: grouped KV
    heads, a value width other than the key's (MLA), left padding hidden by the mask."""
    import torch.nn.functional as F

    from sprout.models.layers import attend

    torch.manual_seed(0)
    q = torch.randn(3, heads, 1, 16, dtype=dtype)
    k, v = torch.randn(3, kv_heads, 9, 16, dtype=dtype), torch.randn(3, kv_heads, 9, v_dim, dtype=dtype)
    mask = torch.ones(3, 1, 1, 9, dtype=torch.bool)
    mask[1, ..., :4] = False
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=heads != kv_heads)
    got = attend(q, k, v, mask)
    assert got.dtype == dtype and got.shape == (3, heads, 1, v_dim)
    torch.testing.assert_close(got.float(), want, **({} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}))

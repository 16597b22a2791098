"""Sampling and batched decoding."""

import pytest
import torch
from conftest import FAMILIES, tiny_family_model, tiny_model

from sprout.infer.generate import SamplingConfig, TextDecoder, apply_repetition_penalty, filter_top_k_top_p, generate


def test_batched_prompts_give_the_same_tokens_as_one_at_a_time():
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [20, 21], [40, 41, 42, 43]]
    sc = SamplingConfig(max_new_tokens=12, temperature=0, stop_token_ids=[])
    batched = generate(model, prompts, sc)
    assert batched == [generate(model, [p], sc)[0] for p in prompts]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_repeated_prompts_share_one_prefill_and_match_rows_alone(family: str):
    """A GRPO group (the same prompt several times) is prefilled once and its cache rows copied: every row
    still decodes what it decodes alone (greedy), and seeded sampling draws different replies per row."""
    model = tiny_family_model(family)
    p, q = [5, 6, 7, 8, 9, 10], [20, 21, 22]
    prompts = [p, q, p, p, q]
    sc = SamplingConfig(max_new_tokens=10, temperature=0, stop_token_ids=[])
    alone = {tuple(x): generate(model, [x], sc)[0] for x in (p, q)}
    shapes: list[tuple[int, ...]] = []
    hook = model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    assert generate(model, prompts, sc) == [alone[tuple(x)] for x in prompts]
    hook.remove()
    assert shapes[0] == (2, len(p)) and shapes[1] == (5, 1)  # the prefill ran two rows, decoding all five
    sc = SamplingConfig(max_new_tokens=10, temperature=1.0, stop_token_ids=[], seed=0)
    group = generate(model, [p] * 4, sc)
    assert len({tuple(r) for r in group}) > 1


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = tiny_model()
    sc = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, stop_token_ids=[], seed=3)
    a, b = generate(model, [[5, 6, 7]], sc), generate(model, [[5, 6, 7]], sc)
    sc.seed = 4
    assert a == b and a != generate(model, [[5, 6, 7]], sc)


def test_stop_token_ends_a_row_and_max_new_tokens_caps_it():
    model = tiny_model()
    sc = SamplingConfig(max_new_tokens=8, temperature=0, stop_token_ids=[])
    free = generate(model, [[5, 6, 7]], sc)[0]
    assert len(free) == 8
    sc.stop_token_ids = [free[2]]
    stopped = generate(model, [[5, 6, 7]], sc, include_stop=True)[0]
    assert stopped == free[: free.index(free[2]) + 1]


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(filter_top_k_top_p(logits, 2, 1.0)[0, 2:]).all()
    probs = logits.softmax(-1)[0]  # ~[0.64, 0.24, 0.09, 0.03]
    kept = ~torch.isinf(filter_top_k_top_p(logits, 0, 0.8)[0])
    assert kept.tolist() == [True, True, False, False] and probs[0] < 0.8 <= probs[:2].sum()


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    seen = torch.tensor([[True, True, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 2.0]]


def test_text_decoder_holds_back_partial_characters():
    raw = "保险".encode()
    # decode bytes seen so far, as a byte-level tokenizer would
    dec = TextDecoder(lambda ids: bytes(ids).decode("utf-8", errors="replace"))
    pieces = [dec.push(b) for b in raw]
    assert "".join(pieces) == "保险" and pieces[:2] == ["", ""]


def test_frequency_and_presence_penalties_count_generated_tokens():
    from sprout.infer.generate import apply_frequency_presence

    logits = torch.tensor([[1.0, 1.0, 1.0]])
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    out = apply_frequency_presence(logits, counts, frequency=0.5, presence=0.25)
    assert torch.allclose(out, torch.tensor([[1.0, 0.25, -0.75]]))
    # in decoding: a strong frequency penalty forbids any token from repeating within the reply
    model = tiny_model()
    sc = SamplingConfig(max_new_tokens=20, temperature=0, stop_token_ids=[], frequency_penalty=1e4)
    out = generate(model, [[5, 6, 7]], sc)[0]
    assert len(set(out)) == len(out) == 20


def test_text_decoder_pieces_join_to_the_full_decode_with_the_real_tokenizer():
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    text = "Car insurance 车险 covers damage — 保险公司 pays, minus the deductible (免赔额). " * 3
    ids = tok.encode(text)
    g = torch.Generator().manual_seed(0)
    ids += torch.randint(0, tok.vocab_size, (60,), generator=g).tolist()  # arbitrary ids, byte-level splits
    full = tok.decode(ids, skip_special_tokens=False)
    dec = TextDecoder(lambda t: tok.decode(t, skip_special_tokens=False))
    joined = "".join(dec.push(t) for t in ids)
    assert full.startswith(joined) and len(joined) >= len(full.rstrip("\ufffd")) - 2
    assert joined.startswith(text)


def test_padded_batch_with_penalties_and_sampling_matches_rows_alone():
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9], [20, 21], [40, 41, 42]]
    sc = SamplingConfig(
        max_new_tokens=10, temperature=0, stop_token_ids=[], repetition_penalty=1.3, frequency_penalty=0.5
    )
    assert generate(model, prompts, sc) == [generate(model, [p], sc)[0] for p in prompts]
    # a stop token that ends one row early leaves the others as they were alone
    alone = [generate(model, [p], sc)[0] for p in prompts]
    sc.stop_token_ids = [alone[1][3]]
    stopped = generate(model, prompts, sc, include_stop=True)
    for got, free in zip(stopped, alone):
        cut = free.index(sc.stop_token_ids[0]) + 1 if sc.stop_token_ids[0] in free else len(free)
        assert got == free[:cut]


@pytest.mark.slow
def test_compiled_decode_step_gives_the_eager_tokens():
    """torch.compile of the step (minutes of compilation on a small CPU, hence slow): same tokens as eager,
    padded batch and a single row, greedy."""
    model = tiny_model()
    prompts = [[5, 6, 7, 8, 9], [20, 21], [40, 41, 42]]
    sc = SamplingConfig(max_new_tokens=10, temperature=0, stop_token_ids=[])
    eager = generate(model, prompts, sc)
    assert generate(model, prompts, sc, compile_step=True) == eager
    assert generate(model, prompts[:1], sc, compile_step=True) == eager[:1]

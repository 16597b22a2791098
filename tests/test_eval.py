"""Scoring primitives against hand-computed values."""
import math

import torch
import torch.nn.functional as F

from conftest import tiny_model
from sprout.eval.samples import language_of, repeated_ngram_rate
from sprout.eval.scoring import continuation_logprobs, wilson_interval


def test_continuation_logprobs_match_a_hand_computed_sum():
    model = tiny_model()
    pairs = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([20, 21, 22, 23, 24], [25])]
    got = continuation_logprobs(model, pairs, batch_size=2)  # batching + padding must not matter
    for (ctx, cont), (lp, n) in zip(pairs, got):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = F.log_softmax(model(ids).logits[0], -1)
        expected = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert n == len(cont) and math.isclose(lp, expected, abs_tol=1e-4)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-3) and math.isclose(hi, 0.5962, abs_tol=1e-3)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17


def test_repetition_and_language_measures():
    assert repeated_ngram_rate([1, 2, 3, 4, 5, 6]) == 0.0
    assert math.isclose(repeated_ngram_rate([1, 2, 3, 4] * 3), 1 - 4 / 9)
    assert language_of("保险是一种风险转移工具") == "zh"
    assert language_of("Term life pays a death benefit.") == "en"

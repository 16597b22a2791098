"""Reasoning data, thinking on/off prompts, and tag-token loss up-weighting."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sprout.train.objectives.reasoning import tag_weighted_ce


def test_reasoning_records_render_think_blocks():
    from sprout.data.builtin_sets import reasoning_records
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir, normalize_record

    tok = Tokenizer.load(default_tokenizer_dir())
    recs = reasoning_records(40, think_fraction=0.5)
    n_think = sum("reasoning_content" in r["conversations"][-1] for r in recs)
    assert 0 < n_think < 40
    for r in recs:
        ids, mask = tok.encode_chat(*normalize_record(r))
        target = tok.decode([i for i, m in zip(ids, mask) if m])
        assert target.count("<think>") == 1 and target.count("</think>") == 1
        if "reasoning_content" in r["conversations"][-1]:
            assert r["conversations"][-1]["reasoning_content"] in target


def test_enable_thinking_switch():
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    msgs = [{"role": "user", "content": "1+1?"}]
    on = tok.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=True)
    off = tok.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=False)
    assert on.endswith("assistant\n") and off.endswith("assistant\n<think>\n\n</think>\n\n")


def test_tag_weighted_ce():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[3, 5, -100, 4]])
    tags = torch.tensor([3, 4])
    loss, plain = tag_weighted_ce(logits, labels, tags, 3.0)
    ce = F.cross_entropy(logits[0], labels[0], ignore_index=-100, reduction="none")
    assert abs(plain.item() - (ce[0] + ce[1] + ce[3]).item() / 3) < 1e-6
    assert abs(loss.item() - (3 * ce[0] + ce[1] + 3 * ce[3]).item() / 7) < 1e-6
    same, _ = tag_weighted_ce(logits, labels, tags, 1.0)
    assert abs(same.item() - plain.item()) < 1e-6


def test_think_block_counter():
    from sprout.eval.skills import think_blocks

    assert think_blocks("<think>\nx\n</think>\n\nA") == (1, True)
    assert think_blocks("<think>\n\n</think>\n\nA") == (1, False)
    assert think_blocks("A") == (0, False)
    assert think_blocks("<think>a</think><think>b</think>")[0] == 2
    assert think_blocks("<think> never closed")[0] == -1

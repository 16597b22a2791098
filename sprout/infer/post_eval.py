"""Checks for the post-training stages (used by the docs' numbers; run with `python -m sprout.infer.post_eval`).

    reasoning MODEL   fraction of generations with exactly one well-formed <think>…</think> block
                      (thinking on) and with none (thinking off), on held-out word problems
    tools MODEL       held-out arithmetic questions: did the model call the calculator, and is the
                      number in its final answer the true value?
    identity BASE ADAPTER   answers to "who are you" questions, with and without the adapter
"""
from __future__ import annotations

import argparse
import json
import re
from typing import Any

import torch

from .generate import SamplingConfig, generate

_OPEN, _CLOSE = "<think>", "</think>"


def think_blocks(text: str) -> tuple[int, bool]:
    """(number of <think>…</think> blocks, whether the single block has non-empty content).
    -1 when the tags are unbalanced or out of order (not well-formed)."""
    n_open, n_close = text.count(_OPEN), text.count(_CLOSE)
    if n_open != n_close:
        return -1, False
    pos = 0
    for _ in range(n_open):
        a = text.find(_OPEN, pos)
        b = text.find(_CLOSE, pos)
        if a < 0 or b < a:
            return -1, False
        pos = b + len(_CLOSE)
    if n_open == 1:
        inner = text[text.find(_OPEN) + len(_OPEN):text.find(_CLOSE)]
        return 1, bool(inner.strip())
    return n_open, False


def _gen(model, tok, convs: list[list[dict]], thinking: bool, max_new: int, tools=None, bs: int = 16) -> list[str]:
    out = []
    sc = SamplingConfig(max_new_tokens=max_new, temperature=0, repetition_penalty=1.0)
    for s in range(0, len(convs), bs):
        ids = [tok.encode(tok.apply_chat_template(c, tools=tools, add_generation_prompt=True, enable_thinking=thinking))
               for c in convs[s:s + bs]]
        with torch.inference_mode():
            out += [tok.decode(g, skip_special_tokens=False) for g in generate(model, ids, sc)]
    return out


def reasoning_eval(model, tok, n: int = 50) -> dict[str, Any]:
    from ..data.builtin_post import reasoning_prompts

    items = reasoning_prompts(n)
    convs = [[{"role": "user", "content": it["question"]}] for it in items]
    # Thinking on: the prompt ends at "assistant\n", the model must open and close the block itself.
    on = _gen(model, tok, convs, True, 96)
    off = _gen(model, tok, convs, False, 64)
    on_stats = [think_blocks(t) for t in on]
    nums = [re.findall(r"\d+", it["answer"])[0] for it in items]
    return {
        "n": n,
        "thinking_on_exactly_one_block": sum(c == 1 for c, _ in on_stats) / n,
        "thinking_on_one_nonempty_block": sum(c == 1 and ne for c, ne in on_stats) / n,
        "thinking_off_no_block": sum(t.count(_OPEN) == 0 and t.count(_CLOSE) == 0 for t in off) / n,
        "answer_correct_on": sum(num in t.split(_CLOSE)[-1] for num, t in zip(nums, on)) / n,
        "answer_correct_off": sum(num in t for num, t in zip(nums, off)) / n,
        "sample_on": on[0], "sample_off": off[0],
    }


def tools_eval(model, tok, n: int = 50, max_new: int = 64) -> dict[str, Any]:
    from ..data.builtin_post import tool_eval_questions
    from ..tools import tool_specs
    from .chat import ChatSession

    items = tool_eval_questions(n)
    called = right_expr = correct = 0
    samples = []
    for it in items:
        session = ChatSession(model, tok, SamplingConfig(max_new_tokens=max_new, temperature=0),
                              tools=tool_specs(["calculator"]), max_tool_rounds=1)
        with torch.inference_mode():
            "".join(session.reply_stream(it["question"]))
        calls = [c for m in session.history if m["role"] == "assistant" for c in m.get("tool_calls", [])]
        final = session.history[-1]["content"] if session.history[-1]["role"] == "assistant" else ""
        if any(c["name"] == "calculator" for c in calls):
            called += 1
            if any(str(c["arguments"].get("expression", "")).replace(" ", "") == it["expression"].replace(" ", "")
                   for c in calls if isinstance(c["arguments"], dict)):
                right_expr += 1
        nums = re.findall(r"-?\d+", final)
        ok = bool(nums) and int(nums[-1]) == it["answer"]
        correct += ok
        if len(samples) < 3:
            samples.append({"q": it["question"], "true": it["answer"], "history": session.history[1:]})
    return {"n": n, "called_calculator": called / n, "correct_expression": right_expr / n,
            "final_answer_correct": correct / n, "samples": samples}


def identity_eval(model, tok, questions=("Who are you?", "What is your name?", "Who made you?", "你是谁？",
                                          "你叫什么名字？", "谁开发了你？")) -> list[dict[str, str]]:
    convs = [[{"role": "user", "content": q}] for q in questions]
    return [{"q": q, "a": a} for q, a in zip(questions, _gen(model, tok, convs, False, 40))]


def main(argv: list[str] | None = None) -> None:
    from .chat import load_chat_model

    p = argparse.ArgumentParser(prog="python -m sprout.infer.post_eval")
    p.add_argument("check", choices=["reasoning", "tools", "identity"])
    p.add_argument("model")
    p.add_argument("--lora")
    p.add_argument("-n", type=int, default=50)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    model, tok = load_chat_model(a.model, a.lora, "cpu")
    if a.check == "reasoning":
        res: Any = reasoning_eval(model, tok, a.n)
    elif a.check == "tools":
        res = tools_eval(model, tok, a.n)
    else:
        res = identity_eval(model, tok)
    print(json.dumps(res, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()

"""Checks for the post-training stages (used by the docs' numbers; run with `sprout eval skills CHECK MODEL`).

reasoning MODEL   fraction of generations with exactly one well-formed <think>…</think> block
                  (thinking on) and with none (thinking off), on held-out word problems
tools MODEL       held-out tool questions: did the model call the right tool with the right
                  arguments, and is the final answer right? (--kind calc|unit|date, --offer needed|all|none)
identity BASE ADAPTER   answers to "who are you" questions, with and without the adapter
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..infer.generate import SamplingConfig, generate

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
        inner = text[text.find(_OPEN) + len(_OPEN) : text.find(_CLOSE)]
        return 1, bool(inner.strip())
    return n_open, False


def _gen(model, tok, convs: list[list[dict]], thinking: bool, max_new: int, tools=None, bs: int = 16) -> list[str]:
    out = []
    sc = SamplingConfig(max_new_tokens=max_new, temperature=0, repetition_penalty=1.0, stop_token_ids=tok.stop_ids)
    for s in range(0, len(convs), bs):
        ids = [
            tok.encode(tok.apply_chat_template(c, tools=tools, add_generation_prompt=True, enable_thinking=thinking))
            for c in convs[s : s + bs]
        ]
        with torch.inference_mode():
            out += [tok.decode(g, skip_special_tokens=False) for g in generate(model, ids, sc)]
    return out


def reasoning_eval(model, tok, n: int = 50) -> dict[str, Any]:
    from ..data.builtin_sets import reasoning_prompts

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
        "sample_on": on[0],
        "sample_off": off[0],
    }


def tools_eval(
    model, tok, n: int = 50, max_new: int = 160, offered: str = "needed", kind: str = "calc"
) -> dict[str, Any]:
    """Held-out questions for one tool `kind` (calc / unit / date). `offered`: "needed" (the
    system turn lists only the needed tool, as in 60% of the training calls), "all" (all three
    listed: the model must pick) or "none" (no tools: the baseline of a model answering by itself).
    A final answer is correct when its last number is the true value (arithmetic, computed with
    Python integers) or when it contains the tool's output for the correct call (units, dates)."""
    from ..data.builtin_sets import tool_eval_questions
    from ..tools import run_tool, tool_specs

    items = tool_eval_questions(n, kind=kind)
    called = right_args = correct = 0
    marks: list[str] = []  # per question, in order: "1" final answer right, "0" wrong (pairs two evaluations)
    samples: list[dict[str, Any]] = []
    for it in items:
        tools = {"needed": tool_specs([it["name"]]), "all": tool_specs(), "none": None}[offered]
        session = _ask(model, tok, it["question"], tools, max_new)
        calls = [
            c
            for m in session.history
            if m["role"] == "assistant"
            for c in m.get("tool_calls", [])
            if c["name"] == it["name"]
        ]
        final = session.history[-1]["content"] if session.history[-1]["role"] == "assistant" else ""
        called += bool(calls)
        right_args += any(_same_args(c["arguments"], it["arguments"]) for c in calls)
        if kind == "calc":
            nums = re.findall(r"-?\d+", final)
            right = bool(nums) and int(nums[-1]) == it["answer"]
        else:
            right = run_tool(it["name"], it["arguments"]) in final
        correct += right
        marks.append("1" if right else "0")
        if len(samples) < 3:
            samples.append({"q": it["question"], "history": session.history[1:]})
    res = {
        "n": n,
        "kind": kind,
        "tools_offered": offered,
        "called_right_tool": called / n,
        "correct_arguments": right_args / n,
        "final_answer_correct": correct / n,
        "final_per_question": "".join(marks),
        "samples": samples,
    }
    if offered == "all":
        res["no_call_on_domain_questions"] = _restraint(model, tok, n, max_new)
    return res


def _same_args(got: Any, want: dict) -> bool:
    """Arguments equal up to spaces in strings and int/float spelling of numbers."""
    if not isinstance(got, dict) or got.keys() != want.keys():
        return False

    def norm(v: Any) -> Any:
        return v.replace(" ", "") if isinstance(v, str) else float(v) if isinstance(v, (int, float)) else v

    return all(norm(got[k]) == norm(want[k]) for k in want)


def _restraint(model, tok, n: int, max_new: int) -> float:
    """Held-out insurance questions (insuranceqa valid) with every tool offered: the fraction the
    model answers without calling any tool (none of the tools can help)."""
    from ..data.builtin_sets import dpo_pairs
    from ..tools import tool_specs

    questions = [p["chosen"][0]["content"] for p in dpo_pairs("heldout", limit=n)]
    direct = 0
    for q in questions:
        history = _ask(model, tok, q, tool_specs(), max_new).history
        direct += not any(m.get("tool_calls") for m in history if m["role"] == "assistant")
    return direct / len(questions)


def _ask(model, tok, question: str, tools: list[dict] | None, max_new: int):
    """One greedy user turn through the same ChatSession as `sprout chat` (tool calls are executed,
    one round); returns the session, whose history holds the calls, results and final answer."""
    from ..infer.chat import ChatSession

    session = ChatSession(
        model, tok, SamplingConfig(max_new_tokens=max_new, temperature=0), tools=tools, max_tool_rounds=1
    )
    with torch.inference_mode():
        "".join(session.reply_stream(question))
    return session


def identity_eval(
    model,
    tok,
    questions=("Who are you?", "What is your name?", "Who made you?", "你是谁？", "你叫什么名字？", "谁开发了你？"),
) -> list[dict[str, str]]:
    convs = [[{"role": "user", "content": q}] for q in questions]
    return [{"q": q, "a": a} for q, a in zip(questions, _gen(model, tok, convs, False, 40))]


def run_check(
    check: str,
    model_dir: str,
    lora: str | None = None,
    n: int = 50,
    offer: str = "needed",
    kind: str = "calc",
    device: str = "cpu",
    threads: int = 2,
) -> Any:
    """`sprout eval skills CHECK MODEL`: load the model (plus adapter) and run one check; JSON-ready result."""
    from ..infer.chat import load_chat_model

    torch.set_num_threads(threads)
    model, tok = load_chat_model(model_dir, lora, device)
    if check == "reasoning":
        return reasoning_eval(model, tok, n)
    if check == "tools":
        return tools_eval(model, tok, n, offered=offer, kind=kind)
    return identity_eval(model, tok)

"""Prompts with checkable answers for RL: built-in verifiable tasks and MiniMind's RL files.

An RL item is a dict: `messages` (the conversation up to the reply the policy writes), `tools`
(specs offered in the system turn, or None), `gt` (list of acceptable answers; empty when there is
none, e.g. rlaif prompts scored by a reward model) and `kind`.

Built-in tasks (zh + en, exact answers computed here, never by the model):
    calc, unit, date   the tool questions of sprout.data.builtin_sets (arithmetic with 1-4 digit
                       operands, unit conversion, date arithmetic); the truth is Python integer
                       arithmetic (calc) or the tool's output for the correct call (unit, date).
                       Every question of the held-out tool eval (post_eval tools) is skipped.
    add                "What is 7 + 5?": single-digit + and - answered directly (no tools), a task a
                       small chat model can improve on by itself in minutes.
Files: rlaif (`conversations`, a trailing assistant turn is dropped; `gt` optional) and agent_rl
(the same plus `gt`, tools on the system message, as MiniMind writes them).
"""

from __future__ import annotations

import random
from typing import Any

BUILTIN_TASKS = ("calc", "unit", "date", "add")
HELDOUT_SKIP = 500  # this many held-out eval questions per kind are never used for training


def _truth(t: dict[str, Any]) -> str:
    from ..tools import run_tool

    if t["name"] == "calculator":
        a, op, b = t["arguments"]["expression"].split()
        a, b = int(a), int(b)
        return str(a + b if op == "+" else a - b if op == "-" else a * b)
    return run_tool(t["name"], t["arguments"])


def _add_item(rng: random.Random) -> dict[str, Any]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    lang = rng.choice(("en", "zh"))
    q = (
        rng.choice([f"What is {a} {op} {b}?", f"Calculate {a} {op} {b}."])
        if lang == "en"
        else rng.choice([f"{a} {op} {b} 等于多少？", f"计算 {a} {op} {b}。"])
    )
    return {
        "messages": [{"role": "user", "content": q}],
        "tools": None,
        "gt": [str(a + b if op == "+" else a - b)],
        "kind": "add",
        "lang": lang,
    }


def _heldout_keys(kind: str) -> set[str]:
    from ..data.builtin_sets import _call_key, tool_eval_questions

    return {_call_key(q["name"], q["arguments"]) for q in tool_eval_questions(HELDOUT_SKIP, kind=kind)}


def builtin_items(kind: str, n: int, seed: int = 0, tools: str = "all", heldout: bool = False) -> list[dict]:
    """`n` items of a built-in task. tools: "all" (every tool listed, shuffled), "needed" or "none".
    heldout=True returns the held-out eval questions themselves (the first `n` of post_eval's list)."""
    from ..data.builtin_sets import _call_key, tool_eval_questions, tool_question
    from ..tools import tool_specs

    if kind not in BUILTIN_TASKS:
        raise SystemExit(f"unknown built-in RL task {kind!r}; choose one of {', '.join(BUILTIN_TASKS)}")
    rng = random.Random(seed)
    if kind == "add":
        r = random.Random(10_000 + seed) if heldout else rng  # only ~190 distinct questions: sets overlap
        return [_add_item(r) for _ in range(n)]
    if heldout:
        qs = tool_eval_questions(n, kind=kind)
    else:
        skip, qs = _heldout_keys(kind), []
        while len(qs) < n:
            t = tool_question(rng, kind)
            if _call_key(t["name"], t["arguments"]) not in skip:
                qs.append(t)
    out = []
    for t in qs:
        specs = tool_specs([t["name"]]) if tools == "needed" else None
        if tools == "all":
            specs = tool_specs()
            rng.shuffle(specs)
        out.append(
            {"messages": [{"role": "user", "content": t["question"]}], "tools": specs, "gt": [_truth(t)], "kind": kind}
        )
    return out


def file_items(path: str, kind: str = "rlaif", skip_invalid: bool = False, limit: int | None = None) -> list[dict]:
    """Items from an rlaif or agent_rl jsonl/parquet file (validated, errors name file and line)."""
    from ..data.readers import read_records
    from ..tokenizer_chat import normalize_record

    out = []
    for rec in read_records(path, kind, skip_invalid=skip_invalid):
        messages, tools = normalize_record(rec)
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # rlaif: the stored reply ("无") is a placeholder
        out.append({"messages": messages, "tools": tools, "gt": [str(g) for g in rec.get("gt", [])], "kind": kind})
        if limit and len(out) >= limit:
            break
    if not out:
        raise SystemExit(f"{path}: no usable prompts")
    return out

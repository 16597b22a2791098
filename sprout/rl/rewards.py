"""Rule-based rewards. Each takes the reply text (and the item it answers) and returns a float;
`score` adds the enabled ones with their weights and keeps every component, so a run logs
`reward_answer`, `reward_format`, ... separately and one can see *which* part moved.

    answer      1 if the reply's final answer equals the ground truth (see `answer_matches`)
    think       thinking on: 1 for exactly one non-empty <think>…</think> block before the answer, else 0
    length      1 inside [min_tokens, max_tokens] generated tokens, falling linearly to 0 at 0 / 2x max
    repetition  -(fraction of repeated word 3-grams): 0 for text that never repeats itself
    number      1 if the reply contains a number at all (a gentle shaping term for numeric tasks)
"""

from __future__ import annotations

import math
import re
from typing import Any

_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _as_number(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def answer_matches(text: str, gt: Any) -> bool:
    """True when the reply answers `gt` (a string or a list of acceptable strings). A numeric truth is
    compared with the *last* number of the reply (the conclusion, not a number restated from the
    question), to 1e-6 relative; a date or other text must appear verbatim."""
    for g in gt if isinstance(gt, (list, tuple)) else [gt]:
        g = str(g).strip()
        want = None if _DATE.match(g) else _as_number(g)
        if want is None:
            if g and g in text:
                return True
            continue
        nums = _NUM.findall(text.replace(",", ""))
        if nums and math.isclose(float(nums[-1]), want, rel_tol=1e-6, abs_tol=1e-9):
            return True
    return False


def think_format(text: str) -> float:
    """Exactly one non-empty <think>…</think> block, opened at the start, followed by an answer."""
    t = text.strip()
    if t.count("<think>") != 1 or t.count("</think>") != 1 or not t.startswith("<think>"):
        return 0.0
    inner, after = t[len("<think>") :].split("</think>", 1)
    return float(bool(inner.strip()) and bool(after.strip()))


def length_window(n_tokens: int, min_tokens: int = 1, max_tokens: int = 64) -> float:
    if n_tokens < min_tokens:
        return n_tokens / max(min_tokens, 1)
    if n_tokens <= max_tokens:
        return 1.0
    return max(0.0, 1.0 - (n_tokens - max_tokens) / max_tokens)


def repetition(text: str, n: int = 3) -> float:
    words = text.split()
    if len(words) < n + 1:
        chars = list(text.replace(" ", ""))  # zh text has no spaces: use characters
        words = chars if len(chars) > len(words) else words
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return -(1.0 - len(set(grams)) / len(grams))


def has_number(text: str) -> float:
    return float(bool(_NUM.search(text)))


DEFAULT_WEIGHTS = {"answer": 1.0}


def score(
    text: str,
    item: dict[str, Any],
    n_tokens: int,
    weights: dict[str, float] | None = None,
    min_tokens: int = 1,
    max_tokens: int = 64,
) -> tuple[float, dict[str, float]]:
    """(weighted total, every component that has a weight); `item["gt"]` is the ground truth."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    fns = {
        "answer": lambda: float(answer_matches(text, item.get("gt", []))),
        "think": lambda: think_format(text),
        "length": lambda: length_window(n_tokens, min_tokens, max_tokens),
        "repetition": lambda: repetition(text),
        "number": lambda: has_number(text),
    }
    unknown = set(weights) - set(fns) - {"model"}
    if unknown:
        raise SystemExit(
            f"unknown reward component(s) {', '.join(sorted(unknown))}; choose from "
            f"{', '.join(fns)} (and model, with objective_args.reward_model)"
        )
    parts = {k: fns[k]() for k in weights if k in fns}
    return sum(weights[k] * v for k, v in parts.items()), parts

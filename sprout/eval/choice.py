"""Answer selection: does the model prefer the gold answer over same-domain negatives?

Each item is a question with k candidate answers. We render the question with the chat
template (thinking off) and score each answer as the assistant's reply:

- `mean`  — average log p(answer token | question), so long answers are not punished for length;
- `pmi`   — mean log p(answer | question) − mean log p(answer | no question). An answer that is
            simply fluent or common scores high under both terms; only what the *question* adds
            survives the difference, which is what answer selection is about.

The prediction is the option with the highest score; accuracy comes with a 95% Wilson interval.
`baseline_choices` scores the same items without a model (shortest option, word overlap), so a reader can
tell a model that reads the question from one that reads answer length.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from ..models import SproutForCausalLM
from .scoring import continuation_logprobs, wilson_interval


@dataclass
class ChoiceResult:
    task: str
    method: str
    correct: int
    total: int
    chance: float

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.total, 1)

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.total)

    def as_dict(self) -> dict:
        lo, hi = self.interval
        return {
            "task": self.task,
            "method": self.method,
            "accuracy": self.accuracy,
            "ci95": [lo, hi],
            "correct": self.correct,
            "total": self.total,
            "chance": self.chance,
        }


def chance_of(items: list[dict]) -> float:
    """The expected accuracy of guessing uniformly among each item's options."""
    return sum(1 / len(it["options"]) for it in items) / max(len(items), 1)


def _answer_pairs(tokenizer, question: str, options: list[str]) -> list[tuple[list[int], list[int]]]:
    msgs = [{"role": "user", "content": question}]
    ctx = tokenizer.encode(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=False))
    end = tokenizer.eos_id  # the end of an assistant turn, by name from the tokenizer
    return [(ctx, tokenizer.encode(opt) + [end]) for opt in options]


def score_choices(
    model: SproutForCausalLM, tokenizer, items: list[dict], task: str, batch_size: int = 16, return_scores: bool = False
):
    """items: {question, options, answer}. Returns results for the `mean` and `pmi` methods
    (and, with `return_scores`, each item's {"mean": [...], "pmi": [...]} option scores)."""
    cond_pairs, uncond_pairs = [], []
    for it in items:
        cond_pairs += _answer_pairs(tokenizer, it["question"], it["options"])
        uncond_pairs += _answer_pairs(tokenizer, "", it["options"])
    cond = continuation_logprobs(model, cond_pairs, batch_size)
    uncond = continuation_logprobs(model, uncond_pairs, batch_size)
    correct = {"mean": 0, "pmi": 0}
    k = 0
    per_item = []
    for it in items:
        n = len(it["options"])
        mean = [cond[k + j][0] / cond[k + j][1] for j in range(n)]
        pmi = [mean[j] - uncond[k + j][0] / uncond[k + j][1] for j in range(n)]
        k += n
        per_item.append({"mean": mean, "pmi": pmi})
        for name, scores in (("mean", mean), ("pmi", pmi)):
            correct[name] += int(max(range(n), key=scores.__getitem__) == it["answer"])
    results = [ChoiceResult(task, m, correct[m], len(items), chance_of(items)) for m in ("mean", "pmi")]
    return (results, per_item) if return_scores else results


def _terms(text: str) -> list[str]:
    """Lower-cased latin words and digits, and single CJK characters (Chinese has no spaces to split on)."""
    return re.findall(r"[a-z0-9]+|[\u4e00-\u9fff]", text.lower())


def baseline_choices(items: list[dict], task: str) -> list[ChoiceResult]:
    """Two scorers that use no model, as references for `mean` and `pmi` on the same items:

    - `shortest` picks the shortest option: well above chance means the options differ in length in a way
      that gives the answer away, and a likelihood score may be reading length, not the question;
    - `overlap` picks the option whose words best match the question's (tf-idf cosine, idf over all
      options of the task): what plain word matching achieves, a floor for a model that reads the question.
    """
    docs = [set(_terms(o)) for it in items for o in it["options"]]
    df = Counter(t for d in docs for t in d)
    idf = {t: math.log(len(docs) / n) for t, n in df.items()}
    correct = {"shortest": 0, "overlap": 0}
    for it in items:
        n = len(it["options"])
        q = set(_terms(it["question"]))
        shortest = min(range(n), key=lambda j: len(it["options"][j]))
        overlap = []
        for o in it["options"]:
            terms = set(_terms(o))
            norm = math.sqrt(sum(idf.get(t, 0.0) ** 2 for t in terms)) or 1.0
            overlap.append(sum(idf.get(t, 0.0) ** 2 for t in q & terms) / norm)
        correct["shortest"] += int(shortest == it["answer"])
        correct["overlap"] += int(max(range(n), key=overlap.__getitem__) == it["answer"])
    return [ChoiceResult(task, m, correct[m], len(items), chance_of(items)) for m in ("shortest", "overlap")]

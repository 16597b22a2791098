"""Answer selection: does the model prefer the gold answer over same-domain negatives?

Each item is a question with k candidate answers. We render the question with the chat
template (thinking off) and score each answer as the assistant's reply:

- `mean`  — average log p(answer token | question), so long answers are not punished for length;
- `pmi`   — mean log p(answer | question) − mean log p(answer | no question). An answer that is
            simply fluent or common scores high under both terms; only what the *question* adds
            survives the difference, which is what answer selection is about.

The prediction is the option with the highest score; accuracy comes with a 95% Wilson interval.
"""

from __future__ import annotations

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
    chance = sum(1 / len(it["options"]) for it in items) / max(len(items), 1)  # expected accuracy of guessing
    results = [ChoiceResult(task, m, correct[m], len(items), chance) for m in ("mean", "pmi")]
    return (results, per_item) if return_scores else results

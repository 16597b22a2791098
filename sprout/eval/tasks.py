"""Built-in multiple-choice tasks made from packaged data (no download).

- `insuranceqa-zh`, `insuranceqa-en`: a validation-split question (normalised: single spaces, sentence case,
  one question mark), its gold answer and three answers drawn from the question's own same-domain negatives,
  matched to the gold answer's length so that length does not give it away (`insuranceqa_choice`);
  `insuranceqa-zh-as-written`, `insuranceqa-en-as-written`: the same items with the
  question exactly as the dataset writes it (English in Title Case with doubled spaces). The two should agree
  within a few points for a model that copes with how people type.
- `idiom-zh`: "成语「X」是什么意思？" with X's explanation and the explanations of three other
  idioms drawn at random (seeded). The pretraining corpus contains every idiom's entry, so this
  measures how much of what the model read it can recall — not generalisation to unseen text.

All are scored with `score_choices` (`mean` and `pmi`, the answer rendered as the assistant reply), next to
the model-free references of `baseline_choices` (`shortest`, `overlap`).
"""

from __future__ import annotations

import random

BUILTIN_TASKS = (
    "insuranceqa-zh",
    "insuranceqa-en",
    "insuranceqa-zh-as-written",
    "insuranceqa-en-as-written",
    "idiom-zh",
)
DEFAULT_TASKS = ["insuranceqa-zh", "insuranceqa-en", "idiom-zh", "samples"]  # `sprout eval` without --tasks


def idiom_choice(n: int = 300, n_negatives: int = 3, seed: int = 0) -> list[dict]:
    """`n` idiom-meaning items `{question, options, answer}`, negatives = other idioms' explanations."""
    from ..data.builtin import _idioms

    idioms = _idioms()
    rng = random.Random(seed)
    picked = rng.sample(range(len(idioms)), min(n, len(idioms)))
    items = []
    for i in picked:
        gold = idioms[i]["explanation"]
        negatives: list[str] = []
        while len(negatives) < n_negatives:
            cand = idioms[rng.randrange(len(idioms))]["explanation"]
            if cand != gold and cand not in negatives:
                negatives.append(cand)
        options = [gold] + negatives
        rng.shuffle(options)
        items.append(
            {"question": f"成语「{idioms[i]['word']}」是什么意思？", "options": options, "answer": options.index(gold)}
        )
    return items


def builtin_items(task: str, limit: int = 300, seed: int = 0) -> list[dict]:
    if task in BUILTIN_TASKS and task.startswith("insuranceqa-"):
        from ..data.builtin import insuranceqa_choice

        lang = task.split("-")[1]
        return insuranceqa_choice("valid", lang, seed=seed, limit=limit, as_written=task.endswith("-as-written"))
    if task == "idiom-zh":
        return idiom_choice(limit, seed=seed)
    raise ValueError(f"unknown task {task!r}; built-in tasks: {', '.join(BUILTIN_TASKS)}")

"""Generation samples on a fixed set of held-out questions, with repetition and language checks.

"Why does my model repeat itself?" is the most common small-model complaint; the repeated
n-gram rate makes it a number, and the language check catches English questions answered in
Chinese (or the reverse).
"""

from __future__ import annotations

import re

from ..infer.generate import SamplingConfig, generate
from ..models.dense import SproutForCausalLM

# General prompts; the insuranceqa validation questions are added by `sample_questions`.
GENERAL_QUESTIONS = [
    ("zh", "你好，请介绍一下你自己。"),
    ("en", "Hello! What can you help me with?"),
]

_CJK = re.compile(r"[\u4e00-\u9fff]")


def language_of(text: str) -> str:
    """'zh' if at least a fifth of the letters are CJK characters, else 'en'."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return "none"
    return "zh" if sum(bool(_CJK.match(c)) for c in letters) / len(letters) >= 0.2 else "en"


def repeated_ngram_rate(tokens: list[int], n: int = 4) -> float:
    """Fraction of n-grams that already occurred earlier in the same text (0 = no repetition)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def sample_questions(per_language: int = 4) -> list[tuple[str, str]]:
    from ..data.builtin import insuranceqa_choice

    qs = list(GENERAL_QUESTIONS)
    for lang in ("zh", "en"):
        # the first validation questions; only their text is used, so no need to match option lengths
        qs += [
            (lang, it["question"]) for it in insuranceqa_choice("valid", lang, limit=per_language, length_matched=False)
        ]
    return qs


def generate_samples(
    model: SproutForCausalLM, tokenizer, questions: list[tuple[str, str]], max_new_tokens: int = 160, seed: int = 0
) -> list[dict]:
    sc = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=0.6,
        top_p=0.9,
        frequency_penalty=0.3,
        seed=seed,
        stop_token_ids=tokenizer.stop_ids,
    )
    prompts = [
        tokenizer.encode(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, enable_thinking=False
            )
        )
        for _, q in questions
    ]
    outs = generate(model, prompts, sc)
    rows = []
    for (lang, q), ids in zip(questions, outs):
        answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
        rows.append(
            {
                "lang": lang,
                "question": q,
                "answer": answer,
                "answer_lang": language_of(answer),
                "repeated_4gram_rate": round(repeated_ngram_rate(ids), 3),
                "tokens": len(ids),
                "finished": len(ids) < max_new_tokens,
            }
        )
    return rows

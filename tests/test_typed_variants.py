"""Questions as people type them: variants in training data, and normalisation for evaluation."""

import random

from sprout.data import builtin
from sprout.data.greetings import greeting_records
from sprout.data.typed_variants import normalise, typed_variant
from sprout.eval.samples import GENERAL_QUESTIONS
from sprout.eval.tasks import builtin_items


def test_every_variant_normalises_back():
    rng = random.Random(0)
    questions = [
        "Is disability insurance required by law?",
        "What is a 401(k) plan?",
        "医疗保险和Tricare如何合作？",
        "Can I get 1.5 times my salary in life cover?",
    ]
    for q in questions:
        variants = {typed_variant(q, rng) for _ in range(200)}
        assert len(variants) > 5  # case, punctuation, width and spacing all vary
        assert {normalise(v) for v in variants} == {normalise(q)}
    assert normalise("WHAT IS TERM LIFE") == "What is term life?"
    assert normalise("  什么是定期寿险?? ") == "什么是定期寿险？"
    assert normalise("What is a 401(k) plan") == "What is a 401(k) plan?"  # brackets and digits survive


def test_answer_selection_as_written_and_normalised():
    written = builtin_items("insuranceqa-en-as-written", 20)
    normal = builtin_items("insuranceqa-en", 20)
    assert [w["options"] for w in written] == [n["options"] for n in normal]
    assert [w["answer"] for w in written] == [n["answer"] for n in normal]
    assert written[0]["question"] == "Does  Medicare  Pick  Up  Co  Pays?"  # as the dataset writes it
    assert normal[0]["question"] == "Does medicare pick up co pays?"
    assert [normalise(w["question"]) for w in written] == [n["question"] for n in normal]


def test_sft_mix_has_greetings_and_typed_questions():
    sources = builtin.sft_sources()
    greetings = sources["greetings"]
    assert greetings == greeting_records()
    langs = {
        "zh" if any("\u4e00" <= c <= "\u9fff" for c in r["conversations"][1]["content"]) else "en" for r in greetings
    }
    assert langs == {"zh", "en"}
    assert all("sprout" in r["conversations"][1]["content"] for r in greetings)
    # the report's own greeting prompts stay held out
    asked = {r["conversations"][0]["content"] for r in greetings}
    assert not asked & {q for _, q in GENERAL_QUESTIONS}
    en_questions = [r["conversations"][-2]["content"] for r in sources["insuranceqa_en"]]
    typed = sum(q != normalise(q) for q in en_questions)
    assert 0.15 < typed / len(en_questions) < 0.45  # about TYPED_FRACTION of them typed casually

"""Scoring primitives against hand-computed values."""

import math

import torch
import torch.nn.functional as F
from conftest import tiny_model

from sprout.eval.samples import language_of, repeated_ngram_rate
from sprout.eval.scoring import continuation_logprobs, wilson_interval


def test_continuation_logprobs_match_a_hand_computed_sum():
    model = tiny_model()
    pairs = [([5, 6, 7], [8, 9]), ([10], [11, 12, 13, 14]), ([20, 21, 22, 23, 24], [25])]
    got = continuation_logprobs(model, pairs, batch_size=2)  # batching + padding must not matter
    for (ctx, cont), (lp, n) in zip(pairs, got):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logp = F.log_softmax(model(ids).logits[0], -1)
        expected = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert n == len(cont) and math.isclose(lp, expected, abs_tol=1e-4)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-3) and math.isclose(hi, 0.5962, abs_tol=1e-3)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and 0.15 < hi < 0.17


def test_repetition_and_language_measures():
    assert repeated_ngram_rate([1, 2, 3, 4, 5, 6]) == 0.0
    assert math.isclose(repeated_ngram_rate([1, 2, 3, 4] * 3), 1 - 4 / 9)
    assert language_of("保险是一种风险转移工具") == "zh"
    assert language_of("Term life pays a death benefit.") == "en"


# ---- perplexity / bits per byte and multiple choice, against log_softmax by hand ---------------

import json  # noqa: E402

import pytest  # noqa: E402

from sprout.eval.multiple_choice import load_mc_file, parse_item, score_multiple_choice  # noqa: E402
from sprout.eval.run import run_eval, text_loss  # noqa: E402
from sprout.eval.tasks import idiom_choice  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    return Tokenizer.load(default_tokenizer_dir())


def _model_for(tok):
    torch.set_num_threads(1)
    return tiny_model(vocab_size=tok.vocab_size)


def _logp(model, ids):
    with torch.no_grad():
        return F.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_text_loss_perplexity_and_bits_per_byte_by_hand(tok, tmp_path):
    model = _model_for(tok)
    docs = ["保险是一种风险转移工具。", "Term life insurance pays a death benefit."]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
    nats, tokens, n_bytes = 0.0, 0, 0
    for d in docs:
        ids = [0] + tok.encode(d)  # <|endoftext|> then the document
        logp = _logp(model, ids)
        nats -= sum(float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1))
        tokens += len(ids) - 1
        n_bytes += len(d.encode("utf-8"))
    got = text_loss(model, tok, str(path))
    assert got["tokens"] == tokens and got["bytes"] == n_bytes
    assert math.isclose(got["loss"], nats / tokens, rel_tol=1e-4)
    assert math.isclose(got["ppl"], math.exp(nats / tokens), rel_tol=1e-4)
    assert math.isclose(got["bits_per_byte"], nats / math.log(2) / n_bytes, rel_tol=1e-4)

    # windows: each window of 4 tokens is predicted from its own first token only
    ids = [0] + tok.encode(docs[1])
    win_nats = 0.0
    for s in range(0, len(ids) - 1, 4):
        chunk = ids[s : s + 5]
        logp = _logp(model, chunk)
        win_nats -= sum(float(logp[i, chunk[i + 1]]) for i in range(len(chunk) - 1))
    one = tmp_path / "one.txt"
    one.write_text(docs[1])
    got = text_loss(model, tok, str(one), window=4)
    assert math.isclose(got["bits_per_byte"], win_nats / math.log(2) / len(docs[1].encode()), rel_tol=1e-4)


MC_ITEMS = [
    {
        "question": "Which one pays a death benefit?",
        "A": "term life",
        "B": "car insurance",
        "C": "a savings account",
        "D": "nothing",
        "answer": "A",
    },
    {"question": "保险是什么？", "A": "一种风险转移工具", "B": "一种水果", "C": "一座山", "D": "一首歌", "answer": "C"},
    {"question": "2 + 2 = ?", "A": "3", "B": "4", "C": "5", "D": "22", "answer": "B"},
]


def _write_csv(path, items):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "question", "A", "B", "C", "D", "answer", "explanation"])
        w.writeheader()
        for i, it in enumerate(items):
            w.writerow({"id": i, **it, "explanation": ""})


def test_multiple_choice_letter_and_option_scores_by_hand(tok, tmp_path):
    model = _model_for(tok)
    _write_csv(tmp_path / "val.csv", MC_ITEMS)
    items = load_mc_file(tmp_path / "val.csv")
    assert [it["answer"] for it in items] == [0, 2, 1]
    results, scores = score_multiple_choice(model, tok, items, "toy", return_scores=True)
    hand_correct = {"letter": 0, "option": 0, "option_norm": 0}
    for raw, it, got in zip(MC_ITEMS, items, scores):
        letters = "ABCD"
        # letter: log p(" X" | question + listed options + "Answer:"), the next-token probability
        prompt = raw["question"] + "\n" + "\n".join(f"{x}. {raw[x]}" for x in letters) + "\nAnswer:"
        ctx = [0] + tok.encode(prompt)
        logp = _logp(model, ctx)
        letter = []
        for x in letters:
            (t,) = tok.encode(" " + x)  # one token each in the default tokenizer
            letter.append(float(logp[-1, t]))
        # option: sum of log p(" option text" | question + "Answer:"); option_norm divides by its bytes
        octx = [0] + tok.encode(raw["question"] + "\nAnswer:")
        option, norm = [], []
        for x in letters:
            cont = tok.encode(" " + raw[x])
            logp = _logp(model, octx + cont)
            lp = sum(float(logp[len(octx) - 1 + j, t]) for j, t in enumerate(cont))
            option.append(lp)
            norm.append(lp / len((" " + raw[x]).encode()))
        for name, hand in (("letter", letter), ("option", option), ("option_norm", norm)):
            assert got[name] == pytest.approx(hand, abs=1e-4)
            hand_correct[name] += int(max(range(4), key=hand.__getitem__) == it["answer"])
    for r in results:
        assert r.correct == hand_correct[r.method] and r.total == 3 and r.chance == 0.25


def test_few_shot_prompt_is_built_from_the_dev_file(tok, tmp_path):
    from sprout.eval.multiple_choice import build_prompts, letter_prompt

    items = [parse_item(it) for it in MC_ITEMS]
    dev = [parse_item({"question": "1 + 1 = ?", "choices": ["2", "3"], "answer": 0})]
    ((lp, op),) = build_prompts(items[:1], dev, shots=1)
    assert lp == (
        "1 + 1 = ?\nA. 2\nB. 3\nAnswer: A\n\n"
        "Which one pays a death benefit?\nA. term life\nB. car insurance\nC. a savings account\nD. nothing\n"
        "Answer:"
    )
    assert op == "1 + 1 = ?\nAnswer: 2\n\nWhich one pays a death benefit?\nAnswer:"
    # without a dev file the shots come from the same file, never the item itself
    for i, (lp, _) in enumerate(build_prompts(items, None, shots=2)):
        assert lp.count("Answer:") == 3 and lp.endswith(letter_prompt(items[i]))
        assert lp.count(items[i]["question"]) == 1


def test_parse_item_formats():
    assert parse_item({"Question": "q", "A": "a", "B": "b", "C": "c", "D": "d", "Answer": "d"})["answer"] == 3  # CMMLU
    assert parse_item({"question": "q", "choices": ["x", "y", "z"], "answer": 1}) == {
        "question": "q",
        "options": ["x", "y", "z"],
        "answer": 1,
    }  # MMLU export
    assert parse_item({"question": "q", "A": "a", "B": "b", "answer": "1"})["answer"] == 1
    with pytest.raises(ValueError):
        parse_item({"question": "q", "A": "a", "B": "b", "answer": "E"}, "f.csv:2")


def test_idiom_task_items():
    items = idiom_choice(20, seed=3)
    assert items == idiom_choice(20, seed=3) and items != idiom_choice(20, seed=4)
    for it in items:
        assert it["question"].startswith("成语「") and len(it["options"]) == 4
        assert len(set(it["options"])) == 4 and 0 <= it["answer"] < 4
    assert len({it["answer"] for it in items}) > 1  # gold position shuffled


def test_run_eval_writes_json_and_markdown(tok, tmp_path):
    model = _model_for(tok)
    _write_csv(tmp_path / "toy.csv", MC_ITEMS)
    data = tmp_path / "d.txt"
    data.write_text("Term life insurance pays a death benefit.")
    res = run_eval(
        "tiny",
        str(tmp_path / "out"),
        data=str(data),
        tasks=["idiom-zh"],
        limit=4,
        mc=[str(tmp_path / "toy.csv")],
        shots=1,
        model=model,
        tokenizer=tok,
        quiet=True,
    )
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved == json.loads(json.dumps(res, ensure_ascii=False))
    assert {(r["task"], r["method"]) for r in saved["choice"]} == {
        ("idiom-zh", "mean"),
        ("idiom-zh", "pmi"),
        ("idiom-zh", "shortest"),
        ("idiom-zh", "overlap"),
        ("toy (1-shot)", "letter"),
        ("toy (1-shot)", "option"),
        ("toy (1-shot)", "option_norm"),
    }
    for r in saved["choice"]:
        assert r["ci95"][0] <= r["accuracy"] <= r["ci95"][1] and r["chance"] == 0.25
    md = (tmp_path / "out" / "eval.md").read_text()
    assert "| idiom-zh | pmi |" in md and "bits/byte" in md


def test_answer_selection_mean_and_pmi_by_hand(tok):
    from sprout.eval.choice import score_choices

    model = _model_for(tok)
    items = [
        {"question": "什么是定期寿险？", "options": ["一种保险", "今天下雨", "Term life."], "answer": 0},
        {"question": "Hi?", "options": ["Hello.", "保险"], "answer": 1},
    ]
    correct = {"mean": 0, "pmi": 0}
    results, scores = score_choices(model, tok, items, "toy", return_scores=True)
    for it, got_scores in zip(items, scores):

        def mean_lp(question, option):
            ctx = tok.encode(
                tok.apply_chat_template(
                    [{"role": "user", "content": question}], add_generation_prompt=True, enable_thinking=False
                )
            )
            cont = tok.encode(option) + [tok.token_id("<|im_end|>")]
            logp = _logp(model, ctx + cont)
            return sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)) / len(cont)

        mean = [mean_lp(it["question"], o) for o in it["options"]]
        pmi = [m - mean_lp("", o) for m, o in zip(mean, it["options"])]
        assert got_scores["mean"] == pytest.approx(mean, abs=1e-4) and got_scores["pmi"] == pytest.approx(pmi, abs=1e-4)
        for name, s in (("mean", mean), ("pmi", pmi)):
            correct[name] += int(max(range(len(s)), key=s.__getitem__) == it["answer"])
    got = {r.method: r for r in results}
    assert {m: r.correct for m, r in got.items()} == correct
    assert math.isclose(got["mean"].chance, (1 / 3 + 1 / 2) / 2) and got["pmi"].total == 2


def test_baselines_pick_the_shortest_option_and_the_best_word_match():
    from sprout.eval.choice import baseline_choices

    items = [
        # en: the gold answer is the longest option and the only one that shares the question's rare words
        {
            "question": "Does Medicare cover hearing aids?",
            "options": ["Yes, it does.", "Medicare Part B covers hearing aids only in some cases.", "No."],
            "answer": 1,
        },
        # zh: overlap counts characters; the gold answer is again not the shortest
        {"question": "什么是定期寿险？", "options": ["车险", "定期寿险是一种保险", "今天天气很好"], "answer": 1},
        # the shortest option is the gold one, and it shares no words with the question
        {"question": "Is it raining?", "options": ["Maybe.", "The sun is shining brightly today."], "answer": 0},
    ]
    got = {r.method: r for r in baseline_choices(items, "toy")}
    assert got["shortest"].correct == 1 and got["overlap"].correct == 2 and got["overlap"].total == 3
    assert math.isclose(got["shortest"].chance, (1 / 3 + 1 / 3 + 1 / 2) / 3)

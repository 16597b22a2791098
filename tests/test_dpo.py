"""DPO: the loss against TRL's own implementation, reference precompute, and a tiny run."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from conftest import save_tiny_chat_model

from sprout.config import TrainConfig
from sprout.train.objectives.dpo import _last_turn_labels, dpo_loss


def _trl_loss(chosen, rejected, ref_c, ref_r, beta, loss_type, n_c, n_r, rpo_alpha=0.0):
    """Run TRL's DPOTrainer._compute_loss on fixed per-token log-probs (no model, no accelerator):
    the completion mask puts n tokens at the start of each row, and the row's log-probs sum to the target."""
    pytest.importorskip("trl")
    from trl.trainer.dpo_trainer import DPOTrainer

    B = chosen.shape[0]
    T = int(max(n_c.max(), n_r.max())) + 1
    n = torch.cat([n_c, n_r])
    totals = torch.cat([chosen, rejected])
    comp = torch.zeros(2 * B, T + 1, dtype=torch.long)
    per_tok = torch.zeros(2 * B, T)
    for i in range(2 * B):
        comp[i, 1 : 1 + int(n[i])] = 1
        per_tok[i, : int(n[i])] = totals[i] / n[i]
    outputs = SimpleNamespace(
        log_probs=per_tok,
        entropy=torch.zeros(2 * B, T),
        mean_logits=torch.zeros(2 * B, T),
        is_top1=torch.zeros(2 * B, T, dtype=torch.bool),
        aux_loss=None,
    )
    model = SimpleNamespace(training=True)
    acc = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x)
    fake = SimpleNamespace(
        model=model,
        accelerator=acc,
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type, "sft"] if rpo_alpha else [loss_type],
        loss_weights=[1.0, rpo_alpha] if rpo_alpha else [1.0],
        beta=beta,
        use_weighting=False,
        label_smoothing=0.0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2 * B, T + 1, dtype=torch.long),
        "completion_mask": comp,
        "attention_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    loss = DPOTrainer._compute_loss(fake, lambda **kw: outputs, inputs, False)
    return loss, fake._metrics["train"]


@pytest.mark.parametrize("rpo_alpha", [0.0, 0.7])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_loss_equals_trl(loss_type, beta, rpo_alpha):
    g = torch.Generator().manual_seed(0)
    B = 6
    chosen, rejected = (
        -torch.rand(B, generator=g, dtype=torch.float64) * 40,
        -torch.rand(B, generator=g, dtype=torch.float64) * 40,
    )
    ref_c, ref_r = (
        -torch.rand(B, generator=g, dtype=torch.float64) * 40,
        -torch.rand(B, generator=g, dtype=torch.float64) * 40,
    )
    n_c, n_r = torch.randint(1, 20, (B,), generator=g), torch.randint(1, 20, (B,), generator=g)
    ours, m = dpo_loss(chosen, rejected, ref_c, ref_r, beta, loss_type, n_c, n_r, rpo_alpha)
    theirs, tm = _trl_loss(chosen, rejected, ref_c, ref_r, beta, loss_type, n_c, n_r, rpo_alpha)
    assert abs(float(ours) - float(theirs)) < 1e-6
    assert abs(float(m["margin"]) - tm["rewards/margins"][-1]) < 1e-6
    assert abs(float(m["accuracy"]) - tm["rewards/accuracies"][-1]) < 1e-6
    assert abs(float(m["rewards_chosen"]) - tm["rewards/chosen"][-1]) < 1e-6


def test_sigmoid_by_hand():
    # one pair: log-ratios 1.0 and -1.0, beta 0.5 -> -log sigmoid(1.0)
    loss, m = dpo_loss(torch.tensor([-1.0]), torch.tensor([-5.0]), torch.tensor([-2.0]), torch.tensor([-4.0]), 0.5)
    assert abs(loss.item() - 0.3132616875) < 1e-6 and m["accuracy"].item() == 1.0


def test_last_turn_labels():
    ids = [10, 11, 12, 13, 14, 15, 16]
    mask = [False, True, True, False, False, True, True]
    assert _last_turn_labels(ids, mask) == [-100, -100, -100, -100, 15, 16, -100]


@pytest.mark.parametrize("reference", ["precompute", "frozen"])
def test_dpo_stage_runs(tmp_path, reference):
    import json

    from sprout.data.builtin_sets import dpo_pairs
    from sprout.train.engine import train

    save_tiny_chat_model(tmp_path / "base")
    for name, split in (("train", "train"), ("val", "heldout")):
        with open(tmp_path / f"{name}.jsonl", "w") as f:
            for r in dpo_pairs(split, limit=16, max_chars=60):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    cfg = TrainConfig(
        stage="dpo",
        model=str(tmp_path / "base"),
        data=str(tmp_path / "train.jsonl"),
        out=str(tmp_path / "run"),
        seq_len=48,
        batch_size=4,
        max_steps=3,
        eval_every=3,
        eval_batches=2,
        log_every=1,
        save_every=0,
        lr=1e-3,
        objective_args={"reference": reference, "val_data": str(tmp_path / "val.jsonl")},
    )
    out = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in rows if "accuracy" in r)
    assert {"rewards_chosen", "rewards_rejected", "margin", "accuracy"} <= set(first)
    # at step 1 the policy equals the reference: rewards are exactly zero
    assert abs(first["rewards_chosen"]) < 1e-4 and abs(first["margin"]) < 1e-4
    assert any("val_accuracy" in r for r in rows)
    if reference == "precompute":
        assert list((out / "tokenized" / "dpo").glob("train-*.pt"))


def test_builtin_pairs_reject_an_answer_of_about_the_gold_length():
    """The rejected answer is one of the question's own negatives, among the 6 closest to the gold answer in
    length: a preference learned from these pairs cannot come from length alone (the eval's options are
    length-matched too). Drawn from the whole pool, the negative is usually the longer answer."""
    from sprout.data.builtin_sets import dpo_pairs

    pairs = dpo_pairs("train", limit=400, max_chars=10_000)
    gaps = sorted(
        abs(len(p["chosen"][-1]["content"]) - len(p["rejected"][-1]["content"])) / len(p["chosen"][-1]["content"])
        for p in pairs
    )
    assert len(pairs) == 400 and all(p["chosen"][0] == p["rejected"][0] for p in pairs)
    assert gaps[len(gaps) // 2] < 0.05  # the median pair differs in length by under 5%


def test_builtin_pairs_keep_greetings_and_typed_questions():
    """The train split mixes in greeting pairs (the SFT mix's greeting answer against a reply that ignores the
    greeting: an insurance answer in the same language, or the greeting in the other language) and writes ~30%
    of the questions as people type them, as SFT does; the held-out split is the dataset's own questions."""
    from sprout.data.builtin_sets import dpo_pairs
    from sprout.data.typed_variants import normalise
    from sprout.eval.samples import language_of

    pairs = dpo_pairs("train", limit=400)
    greet = [p for p in pairs if "sprout" in p["chosen"][-1]["content"]]
    assert len(pairs) == 400 and len(greet) == 20
    kinds = set()
    for p in greet:
        q, chosen, rejected = p["chosen"][0]["content"], p["chosen"][-1]["content"], p["rejected"][-1]["content"]
        assert language_of(chosen) == language_of(q) and "sprout" in chosen
        if language_of(rejected) == language_of(q):
            assert "sprout" not in rejected  # an insurance answer
            kinds.add("insurance")
        else:
            kinds.add("other language")
    assert kinds == {"insurance", "other language"}
    questions = [p["chosen"][0]["content"] for p in pairs if p not in greet]
    typed = sum(q != normalise(q) for q in questions) / len(questions)
    assert 0.15 < typed < 0.45
    whole = dpo_pairs("train")  # `sprout train dpo` writes the whole split: the same share of greetings
    share = sum("sprout" in p["chosen"][-1]["content"] for p in whole) / len(whole)
    assert len(whole) > 10_000 and abs(share - 0.05) < 0.002
    held = dpo_pairs("heldout", limit=100)
    assert held == dpo_pairs("heldout", limit=100, typed_fraction=1.0, greeting_fraction=0.5)
    assert not [p for p in held if "sprout" in p["chosen"][-1]["content"]]


@pytest.mark.parametrize(
    ("args", "start"),
    [({}, "0.693 at the start"), ({"loss": "ipo"}, "25 at the start"), ({"rpo_alpha": 0.3}, "0.693 at the start")],
)
def test_the_logged_loss_is_described_for_its_loss_and_rpo_weight(args, start):
    """The report's axis label and healthy-run text follow the configured loss: with RPO the logged loss is
    not 0.693 at the start, and says so."""
    from sprout.train.objectives import build_objective

    obj = build_objective(TrainConfig(stage="dpo", objective_args=args))
    label, healthy = obj.describe()["loss_label"], obj.describe()["healthy"]
    assert start in label
    assert ("0.3 x the chosen answers' cross-entropy" in label) == bool(args.get("rpo_alpha"))
    assert ("nll_chosen" in healthy) == bool(args.get("rpo_alpha"))

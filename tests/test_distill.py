"""White-box KD against a hand-computed example; the distill stage and black-box generation run."""

from __future__ import annotations

import json
import math

import torch
from conftest import save_tiny_chat_model

from sprout.config import TrainConfig
from sprout.train.objectives.distill import kd_loss


def test_kd_loss_hand_computed():
    # one labelled position, vocabulary of 2; the second position is ignored (-100)
    student = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])
    teacher = torch.tensor([[[2.0, 0.0], [0.0, 9.0]]])
    labels = torch.tensor([[0, -100]])
    T, alpha = 2.0, 0.25
    # teacher at T=2: softmax([1, 0]) = [e/(e+1), 1/(e+1)]; student at T=2: [0.5, 0.5]
    pt = [math.e / (math.e + 1), 1 / (math.e + 1)]
    kl = sum(p * math.log(p / 0.5) for p in pt) * T * T
    ce = math.log(2)  # student softmax([0, 0]), label 0
    loss, m = kd_loss(student, teacher, labels, T, alpha)
    assert abs(m["kd"].item() - kl) < 1e-6 and abs(m["ce"].item() - ce) < 1e-6
    assert abs(loss.item() - (alpha * kl + (1 - alpha) * ce)) < 1e-6


def test_kd_zero_when_student_is_teacher():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    _, m = kd_loss(logits, logits.clone(), labels, 3.0, 1.0)
    assert abs(m["kd"].item()) < 1e-6


def test_distill_stage_and_blackbox_generation(tmp_path):
    from sprout.infer.generate import SamplingConfig
    from sprout.infer.teacher_answers import generate_sft, load_prompts
    from sprout.train.engine import train

    teacher, tok = save_tiny_chat_model(tmp_path / "teacher")
    cfg = TrainConfig(
        stage="distill",
        preset="tiny",
        tokenizer=str(tmp_path / "teacher"),
        model_overrides={"vocab_size": tok.vocab_size, "hidden_size": 32, "num_hidden_layers": 1},
        out=str(tmp_path / "student"),
        seq_len=64,
        batch_size=4,
        max_steps=2,
        eval_every=2,
        eval_batches=1,
        log_every=1,
        save_every=0,
        objective_args={"teacher": str(tmp_path / "teacher"), "dataset": "identity"},
    )
    out = train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("kd" in r and "ce" in r for r in rows) and any("val_ce" in r for r in rows)

    prompts = load_prompts("builtin:identity", limit=3)
    assert all(p[-1]["role"] == "user" for p in prompts)
    path = generate_sft(
        teacher.eval(),
        tok,
        prompts,
        tmp_path / "bb.jsonl",
        SamplingConfig(max_new_tokens=8, temperature=1.0, seed=0, stop_token_ids=[]),
        progress=None,
    )
    from sprout.data.readers import read_records

    recs = list(read_records(path, "sft"))
    assert recs and recs[0]["conversations"][-1]["role"] == "assistant"

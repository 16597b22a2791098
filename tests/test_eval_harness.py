"""lm-evaluation-harness on a saved folder, offline, with sprout's local insuranceqa task."""

import json

import pytest
import torch
from conftest import save_tiny_family_model

from sprout.eval.harness import LOCAL_TASKS, write_local_tasks
from sprout.eval.scoring import continuation_logprobs
from sprout.models import load_model
from sprout.tokenizer import Tokenizer

LIMIT = 6


def test_lm_eval_local_task_matches_sprouts_own_scoring(tmp_path, monkeypatch):
    """lm-eval's `acc` (highest total log-likelihood) on the local task equals the accuracy sprout computes
    itself from the same rows, so lm-eval read our folder, tokenizer and task data as intended."""
    from sprout.cli import main

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(var, "1")  # what run_harness sets for local tasks, undone after the test
    folder = save_tiny_family_model(tmp_path / "model", "qwen3")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["max_position_embeddings"] = 4096  # long insurance answers must fit lm-eval's context check
    (folder / "config.json").write_text(json.dumps(cfg))
    main(
        [
            "eval",
            "harness",
            "--model",
            str(folder),
            "--tasks",
            "sprout_insuranceqa_en",
            "--limit",
            str(LIMIT),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    got = json.loads((tmp_path / "out" / "harness.json").read_text())["results"]["sprout_insuranceqa_en"]
    assert set(got) >= {"acc", "acc_norm", "acc_stderr"}
    assert "sprout_insuranceqa_en" in (tmp_path / "out" / "harness.md").read_text()

    rows = [
        json.loads(line)
        for line in (tmp_path / "out" / "harness_tasks" / "sprout_insuranceqa_en.jsonl")
        .read_text()
        .splitlines()[:LIMIT]
    ]
    tok, model = Tokenizer.load(folder), load_model(folder).eval()
    pairs = [(tok.encode(r["context"]), tok.encode(c)) for r in rows for c in r["choices"]]
    with torch.no_grad():
        scores = [lp for lp, _ in continuation_logprobs(model, pairs, batch_size=4)]
    correct, k = 0, 0
    for r in rows:
        n = len(r["choices"])
        correct += int(max(range(n), key=lambda j: scores[k + j]) == r["answer"])
        k += n
    assert got["acc"] == pytest.approx(correct / LIMIT)


def test_local_tasks_are_lm_eval_yaml_with_local_data(tmp_path):
    write_local_tasks(tmp_path)
    import yaml

    for name in LOCAL_TASKS:
        cfg = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
        assert cfg["task"] == name and cfg["output_type"] == "multiple_choice"
        data = cfg["dataset_kwargs"]["data_files"]["validation"]
        row = json.loads(open(data, encoding="utf-8").readline())
        assert row["context"].startswith("<|im_start|>user\n") and row["context"].endswith("</think>\n\n")
        assert len(row["choices"]) == 4 and all(c.endswith("<|im_end|>") for c in row["choices"])

"""One's own data in MiniMind's layout: files mapped to stages, and `sprout speedrun --data-dir` end to end."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from sprout.data.data_dir import stage_files
from sprout.tokenizer import Tokenizer, default_tokenizer_dir

WORD = " zorblaxian"  # a word no built-in text contains: only a tokenizer trained on this folder knows it


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def minimind_folder(root):
    root.mkdir()
    from sprout.data.builtin import pretrain_texts

    # Ordinary zh + en text (so the trained tokenizer is a usable one) plus documents with WORD.
    texts = list(pretrain_texts(max_chars=300_000))
    texts += [f"The{WORD} garden number {i} grows{WORD} flowers; 第{i}个{WORD}花园。" for i in range(300)]
    _write(root / "pretrain_hq.jsonl", [{"text": t} for t in texts])
    _write(
        root / "sft_mini_512.jsonl",
        [
            {
                "conversations": [
                    {"role": "user", "content": f"What grows in garden {i}?"},
                    {"role": "assistant", "content": f"{WORD.strip()} flowers grow in garden {i}."},
                ]
            }
            for i in range(300)
        ],
    )
    sub = root / "more"
    sub.mkdir()
    for name in ("sft_1024.jsonl", "r1_mix_1024.jsonl", "rlaif-mini.jsonl", "lora_medical.jsonl"):
        (sub / name).write_text("", encoding="utf-8")
    q = [{"role": "user", "content": f"Who are you, friend {i}?"} for i in range(16)]
    _write(
        sub / "lora_identity.jsonl",
        [{"conversations": [m, {"role": "assistant", "content": "I am sprout."}]} for m in q],
    )
    _write(
        sub / "dpo.jsonl",
        [
            {
                "chosen": [m, {"role": "assistant", "content": "I am sprout."}],
                "rejected": [m, {"role": "assistant", "content": "No idea."}],
            }
            for m in q
        ],
    )
    return root


def test_stage_files_map_minimind_names(tmp_path):
    found = stage_files(minimind_folder(tmp_path / "d"))
    assert {k: v.name for k, v in found.items()} == {
        "pretrain": "pretrain_hq.jsonl",
        "sft": "sft_mini_512.jsonl",
        "dpo": "dpo.jsonl",
        "reasoning": "r1_mix_1024.jsonl",
        "rl_prompts": "rlaif-mini.jsonl",
        "lora": "lora_identity.jsonl",
    }


def test_missing_stage_file_is_a_short_message(tmp_path, capsys):
    from sprout.cli import main

    (tmp_path / "d").mkdir()
    with pytest.raises(SystemExit) as e:
        main(["speedrun", "--out", str(tmp_path / "run"), "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err
    assert re.search(r"^sprout: error: .*no file for pretrain \(pretrain_hq.jsonl\), sft", err)


def test_speedrun_on_own_folder_trains_tokenizer_on_its_text(tmp_path):
    from sprout.cli import main

    data = minimind_folder(tmp_path / "data")
    main(
        [
            "speedrun",
            "--out",
            str(tmp_path / "run"),
            "--data-dir",
            str(data),
            "--max-steps",
            "2",
            "--eval-questions",
            "4",
        ]
    )
    tok = Tokenizer.load(tmp_path / "run" / "tokenizer")
    assert len(tok.encode(WORD)) == 1  # learned from the folder's text...
    assert len(Tokenizer.load(default_tokenizer_dir()).encode(WORD)) > 2  # ...which the built-in text lacks
    for stage in ("pretrain", "sft"):
        meta = json.loads((tmp_path / "run" / stage / "tokenized" / stage / "meta.json").read_text())
        assert str(data) in meta["source"]  # each stage read the folder's own file
        assert Tokenizer.load(tmp_path / "run" / stage).vocab_size == tok.vocab_size
    # the recipe's third stage, DPO, trained on the folder's dpo.jsonl and gave the chat model
    dpo_cfg = yaml.safe_load((tmp_path / "run" / "dpo" / "config.yaml").read_text())
    assert dpo_cfg["data"] == str(data / "more" / "dpo.jsonl") and dpo_cfg["model"] == str(tmp_path / "run" / "sft")
    results = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert list(results["val_loss"]) == ["base", "sft", "chat"] and results["samples"]
    assert "insuranceqa-en (SFT model)" in {r["task"] for r in results["choice"]}
    # the other stages take their file from the same folder
    for stage, file in (("lora", "lora_identity.jsonl"), ("dpo", "dpo.jsonl")):
        out = tmp_path / stage
        main(
            [
                "train",
                stage,
                "--data-dir",
                str(data),
                "--model",
                str(tmp_path / "run" / "sft"),
                "--out",
                str(out),
                "--max-steps",
                "1",
                "batch_size=4",
                "seq_len=64",
                "eval_every=0",
                "save_every=0",
                "log_every=1",
            ]
        )
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert any(r.get("step") == 1 and "loss" in r for r in rows)
        assert yaml.safe_load((out / "config.yaml").read_text())["data"].endswith(file)

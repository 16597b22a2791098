"""`sprout train` from the command line: recipe < flags < key=value overrides, real files out."""

import json

import pytest
from transformers import AutoModelForCausalLM

from sprout.cli import main
from sprout.config import build_train_config


def test_flags_and_overrides_layer_over_the_recipe():
    cfg = build_train_config(
        "cpu", "pretrain", {"max_steps": 7, "out": "x"}, ["lr=3e-4", "model_overrides.hidden_size=128"]
    )
    assert (cfg.preset, cfg.seq_len, cfg.max_steps, cfg.lr, cfg.out) == ("cpu", 256, 7, 3e-4, "x")
    # a dotted override replaces one key of the recipe's model_overrides and keeps the others
    assert cfg.model_overrides == {"hidden_size": 128, "intermediate_size": 512}
    with pytest.raises(SystemExit, match="unknown training option"):
        build_train_config(None, "sft", {}, ["learning_rate=1"])


def test_train_pretrain_then_sft_from_the_command_line(tmp_path):
    text = tmp_path / "pretrain.jsonl"
    text.write_text(
        "".join(json.dumps({"text": f"保险 policy number {i} covers fire and flood."}) + "\n" for i in range(200))
    )
    sft = tmp_path / "sft.jsonl"
    sft.write_text(
        "".join(
            json.dumps(
                {
                    "conversations": [
                        {"role": "user", "content": f"What is {i}?"},
                        {"role": "assistant", "content": f"It is {i}."},
                    ]
                }
            )
            + "\n"
            for i in range(200)
        )
    )
    base, chat = tmp_path / "base", tmp_path / "chat"
    common = [
        "--max-steps",
        "3",
        "preset=tiny",
        "seq_len=32",
        "batch_size=4",
        "eval_every=2",
        "eval_batches=1",
        "val_fraction=0.05",
        "log_every=1",
    ]
    main(["train", "pretrain", "--data", str(text), "--out", str(base)] + common)
    main(["train", "sft", "--data", str(sft), "--model", str(base), "--out", str(chat)] + common)
    rows = [json.loads(line) for line in (chat / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("split") == "val" for r in rows) and any("loss" in r for r in rows)
    assert AutoModelForCausalLM.from_pretrained(chat).config.model_type == "qwen3"


def test_malformed_data_stops_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(SystemExit) as e:
        main(["train", "pretrain", "--data", str(bad), "--out", str(tmp_path / "o"), "--max-steps", "1", "preset=tiny"])
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith(f"sprout: error: {bad}:2: text must be a string, got int; ")

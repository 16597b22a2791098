"""Long runs (pytest -m slow): every model family pretrains from the command line with a falling loss."""

import json

import pytest

from sprout.cli import main
from sprout.data.builtin import write_builtin


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pretrain.jsonl"
    return write_builtin("pretrain", path, max_chars=1_500_000)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cpu", "cpu-moe", "cpu-deepseekv3", "cpu-qwen3-next"])
def test_family_pretrains_with_falling_loss(tmp_path, corpus, preset):
    out = tmp_path / preset
    main(
        [
            "train",
            "pretrain",
            "--data",
            str(corpus),
            "--preset",
            preset,
            "--out",
            str(out),
            "--max-steps",
            "60",
            "seq_len=128",
            "batch_size=8",
            "lr=3e-3",
            "log_every=5",
            "eval_every=1000",
            "save_every=1000",
        ]
    )
    losses = [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    # a broken run stays near ln(6400) = 8.76 or rises; 60 healthy steps fall by about 1 nat
    assert last < first - 0.5, f"{preset}: loss {first:.2f} -> {last:.2f}"
    assert (out / "model.safetensors").exists()

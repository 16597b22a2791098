"""Every post-training stage resumes through the shared engine: Ctrl-C mid-run + `--resume` gives
the same final weights (adapter or full model) as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ctrl_c_at, save_tiny_chat_model
from safetensors.torch import load_file

from sprout.config import TrainConfig
from sprout.data.builtin import write_jsonl
from sprout.data.builtin_sets import dpo_pairs, write_post_builtin
from sprout.tokenizer import Tokenizer
from sprout.train.engine import train


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base")
    save_tiny_chat_model(path)
    return path


def _stage_cfg(stage: str, base: Path, data_dir: Path) -> dict:
    if stage == "dpo":
        data = write_jsonl(dpo_pairs("train", limit=32, max_chars=60), data_dir / "dpo.jsonl")
        return dict(model=str(base), data=str(data), objective_args={"reference": "precompute"})
    if stage == "distill":
        return dict(
            data=str(write_post_builtin("domain", data_dir / "domain.jsonl", limit=64)),
            preset="tiny",
            tokenizer=str(base),
            model_overrides={"num_hidden_layers": 1, "vocab_size": Tokenizer.load(base).vocab_size},
            objective_args={"teacher": str(base), "temperature": 2.0, "alpha": 0.5},
        )
    if stage == "lora":
        # dropout on: the resumed run must also restore the RNG that draws the dropout masks
        return dict(model=str(base), objective_args={"r": 2, "alpha": 4, "dropout": 0.1, "dataset": "identity"})
    if stage == "tools":  # a tool conversation with only the needed tool listed is ~390 tokens
        return dict(model=str(base), seq_len=448, objective_args={"tag_weight": 2.0, "n": 24, "all_tools_fraction": 0})
    return dict(model=str(base), objective_args={"tag_weight": 2.0, "n": 40})


def _weights(out: Path) -> dict[str, torch.Tensor]:
    files = sorted(out.glob("*.safetensors"))
    assert files, f"no weights in {out}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("stage", ["lora", "dpo", "distill", "reasoning", "tools"])
def test_post_stage_stop_and_resume_matches_uninterrupted(stage: str, base: Path, tmp_path: Path) -> None:
    extra = _stage_cfg(stage, base, tmp_path)

    def cfg(out: Path, **kw) -> TrainConfig:
        fields = dict(
            stage=stage,
            out=str(out),
            seq_len=64,
            batch_size=2,
            max_steps=6,
            eval_every=0,
            log_every=1,
            save_every=0,
            lr=1e-3,
            seed=5,
            device="cpu",
            dtype="fp32",
        )
        return TrainConfig(**{**fields, **extra, **kw})

    straight = tmp_path / "straight"
    train(cfg(straight))

    resumed = tmp_path / "resumed"
    assert train(cfg(resumed), on_step=ctrl_c_at(3)).name == "step_0000003"
    train(cfg(resumed, resume=True))
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

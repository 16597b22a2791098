"""The training engine on a synthetic task: exact resume, optimizer groups, schedules, checkpoints, output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ctrl_c_at
from safetensors.torch import load_file
from torch.utils.data import Dataset

from sprout.config import TrainConfig
from sprout.errors import UserError
from sprout.models import build_model, model_preset
from sprout.train import register, train
from sprout.train.checkpoint import LATEST, MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, list_checkpoints
from sprout.train.objectives.lm import CausalLMObjective
from sprout.train.optim import Schedule, make_schedule, param_groups

PERIOD = 7  # the synthetic text repeats 1..7: a model that learns it predicts every next token


class RepeatingSequence(Dataset):
    """Windows of 1,2,..,7,1,2,.. at varying offsets: input_ids[T] and next-token labels[T]."""

    def __init__(self, n: int, seq_len: int):
        self.n, self.seq_len = n, seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        seq = (torch.arange(i, i + self.seq_len + 1) % PERIOD) + 1
        return {"input_ids": seq[:-1].clone(), "labels": seq[1:].clone()}


@register
class SyntheticObjective(CausalLMObjective):
    """The LM loss on synthetic data, with no tokenizer: the engine must not need sprout.data."""

    name = "synthetic-test"

    def load_tokenizer(self) -> None:
        return None

    def datasets(self, tokenizer) -> tuple[Dataset, Dataset]:
        return RepeatingSequence(48, self.cfg.seq_len), RepeatingSequence(8, self.cfg.seq_len)


@register
class NaNObjective(SyntheticObjective):
    """A loss that is never finite: the engine must skip the steps, then stop with a clear error."""

    name = "nan-test"

    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        return loss * float("nan"), metrics


def make_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(
        stage="synthetic-test",
        out=str(out),
        preset="tiny",
        model_overrides={"vocab_size": 16, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1},
        seq_len=16,
        batch_size=4,
        grad_accum=2,
        lr=1e-2,
        warmup=0.2,
        schedule="cosine",
        max_steps=12,
        eval_every=5,
        eval_batches=2,
        log_every=2,
        save_every=5,
        device="cpu",
        dtype="fp32",
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def test_stop_and_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(make_cfg(straight))

    # Interrupt like Ctrl-C after step 7 (not a save_every multiple), then resume to the same budget.
    resumed = tmp_path / "resumed"
    path = train(make_cfg(resumed), on_step=ctrl_c_at(7))
    assert path.name == "step_0000007"
    assert not (resumed / "model.safetensors").exists()  # interrupted runs write no final model
    train(make_cfg(resumed, resume=True))

    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # The resumed log continues the first one without duplicate or missing steps.
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in lines if "split" not in r]
    assert train_steps == [2, 4, 6, 8, 10, 12]
    ref = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in ref if "split" not in r] == [r["lr"] for r in lines if "split" not in r]


def test_adamw_groups_exclude_norms_and_embeddings() -> None:
    model = build_model(model_preset("tiny"))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "model.layers.0.self_attn.q_proj.weight" in decay["param_names"]
    assert "model.layers.1.mlp.down_proj.weight" in decay["param_names"]
    assert "model.embed_tokens.weight" in no_decay["param_names"]
    assert "model.norm.weight" in no_decay["param_names"]
    assert "model.layers.0.input_layernorm.weight" in no_decay["param_names"]
    assert "model.layers.0.self_attn.q_norm.weight" in no_decay["param_names"]
    # The tied head is the embedding: it must appear once, without decay.
    assert "lm_head.weight" not in decay["param_names"]
    assert not any("norm" in n or "embed" in n for n in decay["param_names"])
    n_total = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_total


def test_schedules() -> None:
    cos = Schedule("cosine", warmup_frac=0.1, min_lr_ratio=0.1)
    assert cos.factor(0.0) == 0.0
    assert cos.factor(0.05) == pytest.approx(0.5)
    assert cos.factor(0.1) == pytest.approx(1.0)
    assert cos.factor(0.55) == pytest.approx(0.55)  # halfway through the cosine: (1 + min) / 2
    assert cos.factor(1.0) == pytest.approx(0.1)

    wsd = Schedule("wsd", warmup_frac=0.1, min_lr_ratio=0.1, decay_fraction=0.2)
    assert wsd.factor(0.05) == pytest.approx(0.5)
    assert wsd.factor(0.1) == pytest.approx(1.0)
    assert wsd.factor(0.8) == pytest.approx(1.0)  # stable until the final 20%
    assert wsd.factor(0.9) == pytest.approx(0.55)
    assert wsd.factor(1.0) == pytest.approx(0.1)

    assert Schedule("constant", warmup_frac=0.1).factor(0.7) == 1.0
    # Warmup in steps becomes a fraction of the estimated number of steps.
    assert make_schedule("cosine", 10, 0.1, 0.2, est_total_steps=100).warmup_frac == pytest.approx(0.1)


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("learn")
    train(make_cfg(out, max_steps=40, grad_accum=1, warmup=0.1, eval_every=20, save_every=15, log_every=5))
    return out


def test_loss_decreases_on_repeating_sequence(learned_run: Path) -> None:
    records = [json.loads(x) for x in (learned_run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in records if "split" not in r]
    val = [r for r in records if r.get("split") == "val"]
    assert train_losses[0] > 2.0  # ~ln(16) at init
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert val[-1]["step"] == 40 and val[-1]["val_loss"] < val[0]["val_loss"]
    assert val[-1]["val_ppl"] == pytest.approx(math.exp(val[-1]["val_loss"]))


def test_metrics_jsonl_keys(learned_run: Path) -> None:
    records = [json.loads(x) for x in (learned_run / "metrics.jsonl").read_text().splitlines()]
    train_rec = [r for r in records if "split" not in r]
    assert [r["step"] for r in train_rec] == list(range(5, 41, 5))
    for key in ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "ce"):
        assert key in train_rec[0], key
    assert train_rec[0]["tokens"] == 5 * 4 * 16
    val_rec = [r for r in records if r.get("split") == "val"]
    assert [r["step"] for r in val_rec] == [20, 40]
    assert {"val_loss", "val_ppl"} <= set(val_rec[0])


def test_checkpoint_is_complete_and_latest_points_to_it(learned_run: Path) -> None:
    root = learned_run / "checkpoints"
    dirs = list_checkpoints(root)
    assert [d.name for d in dirs] == ["step_0000030", "step_0000040"]  # only the last two are kept
    assert (root / LATEST).read_text().strip() == "step_0000040"
    latest = dirs[-1]
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        assert (latest / name).is_file(), name
    state = torch.load(latest / STATE_FILE, weights_only=True)
    assert state["step"] == 40 and state["tokens"] == 40 * 4 * 16
    assert {"cursor", "rng", "config", "elapsed_s", "lr"} <= set(state)
    assert not list(root.glob(".tmp-*"))
    assert (learned_run / "config.yaml").is_file()


def test_final_folder_loads_in_transformers(learned_run: Path) -> None:
    transformers = pytest.importorskip("transformers")
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        assert (learned_run / name).is_file(), name
    hf = transformers.AutoModelForCausalLM.from_pretrained(learned_run)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 1, 2, 3]])
    with torch.no_grad():
        pred = hf(ids).logits.argmax(-1)[0, 2:-1]
    # The trained model continues the cycle: after 3 comes 4, and so on.
    assert torch.equal(pred, (ids[0, 2:-1] % PERIOD) + 1)


def test_repeated_nan_losses_stop_the_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="3 optimizer steps in a row had a non-finite loss"):
        train(make_cfg(tmp_path, stage="nan-test"))


class HalfMaskedSequence(RepeatingSequence):
    """As RepeatingSequence, with the first half of each row's labels ignored (like padding in SFT)."""

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = super().__getitem__(i)
        row["labels"][: self.seq_len // 2] = -100
        return row


@register
class HalfMaskedObjective(SyntheticObjective):
    name = "half-masked-test"

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:  # as SFT counts: only what is data
        return int((batch["labels"] != -100).sum())

    def datasets(self, tokenizer) -> tuple[Dataset, Dataset]:
        return HalfMaskedSequence(48, self.cfg.seq_len), HalfMaskedSequence(8, self.cfg.seq_len)


def test_progress_line_total_follows_the_real_tokens_per_step(tmp_path: Path, capsys) -> None:
    """A token budget counts real (target) tokens. The step total estimated before training assumes full rows,
    so with half of every row masked the run takes twice the estimate; the progress line corrects it."""
    nominal = 4 * 16 * 2  # batch_size x seq_len x grad_accum
    train(make_cfg(tmp_path / "run", stage="half-masked-test", max_steps=None, max_tokens=10 * nominal))
    lines = capsys.readouterr().err.splitlines()
    heads = [line.split()[1] for line in lines if line.startswith("step ") and "/" in line.split()[1]]
    done, total = (int(x) for x in heads[-1].split("/"))
    assert done == 20 and total == 20  # not the estimate of 10

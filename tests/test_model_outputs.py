"""Explicit model outputs in training: the MTP loss uses the objective's labels (no MTP gradient from prompt
tokens), and DeepSeek's router-bias balancing runs once per optimizer step, at a rate grad_accum does not change,
identically on every data-parallel rank (a real 2-process gloo run of the training engine)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import Dataset

from sprout.config import TrainConfig
from sprout.models import build_model, model_preset
from sprout.train import register, train
from sprout.train.objectives.base import mtp_loss
from sprout.train.objectives.lm import CausalLMObjective, SFTObjective

RATE = 0.01  # bias_update_rate in these tests


class RandomWindows(Dataset):
    """Token windows drawn from a generator seeded by the index: ranks that read different indices see
    different tokens, so their expert loads differ."""

    def __init__(self, n: int, seq_len: int):
        self.n, self.seq_len = n, seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        seq = torch.randint(1, 16, (self.seq_len + 1,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": seq[:-1].clone(), "labels": seq[1:].clone()}


@register
class BiasRecordingObjective(CausalLMObjective):
    """LM loss on random windows; after each optimizer step it records the routing biases (and the expert load
    the step saw on this rank) to objective_args.record."""

    name = "router-bias-test"

    def load_tokenizer(self) -> None:
        return None

    def datasets(self, tokenizer) -> tuple[Dataset, None]:
        return RandomWindows(64, self.cfg.seq_len), None

    def on_optimizer_step(self, model) -> None:
        load = torch.stack([v.clone() for _, v in sorted(self._step_load.items())])
        super().on_optimizer_step(model)
        biases = torch.stack([layer.mlp.gate.e_score_correction_bias.clone() for layer in model.model.layers[1:]])
        self.records = getattr(self, "records", []) + [{"load": load, "bias": biases}]
        torch.save(self.records, self.cfg.objective_args["record"])


def bias_cfg(out: Path, record: Path, grad_accum: int, steps: int = 4) -> TrainConfig:
    return TrainConfig(
        stage="router-bias-test",
        out=str(out),
        preset="tiny-deepseekv3",
        model_overrides={"vocab_size": 16, "bias_update_rate": RATE, "num_hidden_layers": 2, "n_group": 1},
        seq_len=16,
        batch_size=2,
        grad_accum=grad_accum,
        lr=1e-3,
        warmup=0,
        max_steps=steps,
        eval_every=1000,
        log_every=1,
        save_every=1000,
        device="cpu",
        dtype="fp32",
        seed=0,
        objective_args={"record": str(record)},
    )


def test_mtp_loss_uses_the_objectives_labels_so_prompt_tokens_get_no_mtp_gradient():
    torch.manual_seed(0)
    model = build_model(model_preset("tiny-deepseekv3")).train()
    T, prompt = 12, 6
    ids = torch.randint(3, 512, (1, T))
    labels = torch.cat([torch.full((1, prompt - 1), -100), ids[:, prompt:], torch.full((1, 1), -100)], 1)
    captured = {}
    forward = model.forward

    def spy(*args, **kw):
        out = forward(*args, **kw)
        out.mtp_logits[0].retain_grad()
        captured["out"] = out
        return out

    model.forward = spy
    loss, metrics = SFTObjective(TrainConfig()).loss(model, {"input_ids": ids, "labels": labels})
    loss.backward()
    mtp_logits = captured["out"].mtp_logits[0]  # [1, T-1, V]: position i predicts token i+2 = labels[i+1]
    # The reported MTP loss is the CE against the very same labels, one position further.
    ref = F.cross_entropy(mtp_logits[0].detach(), labels[0, 1:], ignore_index=-100)
    assert torch.allclose(metrics["mtp_loss"], ref)
    grad_per_position = mtp_logits.grad[0].abs().sum(-1)
    target_is_prompt = labels[0, 1:] == -100
    assert target_is_prompt[: prompt - 2].all() and not target_is_prompt[prompt - 1 : -1].any()
    assert (grad_per_position[target_is_prompt] == 0).all()  # no MTP gradient towards prompt tokens
    assert (grad_per_position[~target_is_prompt] > 0).all()
    # Packed documents: a target in the next document is not an MTP target either.
    doc_ids = torch.tensor([[0] * 8 + [1] * 4])
    full = torch.randint(3, 512, (1, T))
    all_labels = torch.cat([full[:, 1:], torch.full((1, 1), -100)], 1)
    logits = [torch.randn(1, T - 1, 512)]
    crossing = F.cross_entropy(logits[0][0, 7:8], all_labels[0, 8:9])  # position 7 (doc 0) -> token 9 (doc 1)
    with_docs, without = mtp_loss(logits, all_labels, doc_ids), mtp_loss(logits, all_labels)
    assert not torch.allclose(with_docs, without) and crossing > 0


def _deltas(records: list[dict]) -> list[torch.Tensor]:
    biases = [torch.zeros_like(records[0]["bias"])] + [r["bias"] for r in records]
    return [b - a for a, b in zip(biases, biases[1:])]


def test_grad_accum_does_not_change_the_balancing_rate(tmp_path):
    for ga in (1, 3):
        record = tmp_path / f"ga{ga}.pt"
        train(bias_cfg(tmp_path / f"run{ga}", record, grad_accum=ga))
        records = torch.load(record, weights_only=True)
        deltas = _deltas(records)
        assert len(records) == 4 and sum(int((d != 0).sum()) for d in deltas) > 0
        for r, d in zip(records, deltas):
            # One update per optimizer step: each expert moves by exactly RATE (or 0 when at the mean), whatever
            # the number of micro-batches (a per-forward update moved it by up to ga * RATE).
            assert torch.allclose(d[d != 0].abs(), torch.full_like(d[d != 0], RATE))
            assert r["load"].sum() == ga * 2 * 16 * 2  # ga micro-batches x 2 rows x 16 tokens x top-2, 1 MoE layer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    train(bias_cfg(Path(tmp) / "run", Path(tmp) / f"rank{rank}.pt", grad_accum=2, steps=5))


def test_router_biases_are_identical_on_both_ranks_of_a_gloo_run(tmp_path):
    mp.spawn(_rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0) == len(r1) == 5
    # The ranks routed different tokens (their own data shards)...
    assert any(not torch.equal(a["load"], b["load"]) for a, b in zip(r0, r1))
    for a, b in zip(r0, r1):
        # ...yet after every step their biases are identical, and they do move.
        assert torch.equal(a["bias"], b["bias"])
    assert r0[-1]["bias"].abs().max() > 0

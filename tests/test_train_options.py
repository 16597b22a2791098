"""Training options for speed per position: chunked head+CE in the objective, Muon, activation checkpointing,
fused AdamW on CPU. Each is checked against the plain path (same numbers) or for training (the loss falls)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_engine import make_cfg

from sprout.config import TrainConfig
from sprout.models import build_model, model_preset
from sprout.train import train
from sprout.train.muon import MuonAdamW, orthogonalize
from sprout.train.objectives.lm import PretrainObjective
from sprout.train.optim import build_optimizer

TINY = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}


def _model_and_batch(preset: str = "tiny"):
    torch.manual_seed(0)
    model = build_model(model_preset(preset, **TINY)).train()
    ids = torch.randint(0, 64, (2, 12))
    labels = torch.randint(0, 64, (2, 12))
    labels[:, :3] = -100
    return model, {"input_ids": ids, "labels": labels}


def _loss_and_grads(model, batch, **cfg):
    objective = PretrainObjective(TrainConfig(**cfg))
    model.zero_grad()
    loss, _ = objective.loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_chunked_ce_in_the_objective_matches_the_plain_loss(preset: str) -> None:
    model, batch = _model_and_batch(preset)
    plain, g_plain = _loss_and_grads(model, batch)
    chunked, g_chunked = _loss_and_grads(model, batch, ce_chunk=5)
    assert chunked == pytest.approx(plain, rel=1e-5)
    assert g_plain.keys() == g_chunked.keys()
    for name in g_plain:
        torch.testing.assert_close(g_chunked[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    model, batch = _model_and_batch()
    plain, g_plain = _loss_and_grads(model, batch)
    model.gradient_checkpointing = True
    again, g_ckpt = _loss_and_grads(model, batch)
    assert again == pytest.approx(plain, rel=1e-6)
    for name in g_plain:
        torch.testing.assert_close(g_ckpt[name], g_plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_adamw_is_the_fused_kernel_on_cpu() -> None:
    model, _ = _model_and_batch()
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"), model.named_parameters())
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True


def test_newton_schulz_brings_singular_values_near_one() -> None:
    m = torch.randn(48, 16) @ torch.diag(torch.logspace(-1, 0.5, 16))  # condition number ~30
    s = torch.linalg.svdvals(orthogonalize(m).float())
    assert s.min() > 0.5 and s.max() < 1.3


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest() -> None:
    model, _ = _model_and_batch()
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), torch.device("cpu"), model.named_parameters(), "muon", 0.02)
    assert isinstance(opt, MuonAdamW)
    muon = {n for g in opt.param_groups if g["muon"] for n in g["param_names"]}
    adam = {n for g in opt.param_groups if not g["muon"] for n in g["param_names"]}
    assert muon and all(n.endswith("proj.weight") for n in muon)
    assert "model.embed_tokens.weight" in adam and not any(n.startswith("lm_head") for n in muon)
    assert all(g["lr_ratio"] == pytest.approx(20.0) for g in opt.param_groups if g["muon"])


def _val_losses(out: Path) -> list[float]:
    return [json.loads(x)["val_loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]


def test_muon_trains_the_synthetic_task(tmp_path: Path) -> None:
    cfg = dict(optimizer="muon", muon_lr=0.05, max_steps=30, eval_every=10, save_every=10, ce_chunk=8)
    train(make_cfg(tmp_path / "a", **cfg))
    losses = _val_losses(tmp_path / "a")
    assert losses[-1] < 0.5 * losses[0]  # the period-7 sequence is being learnt


def test_the_data_cursor_maps_onto_another_global_batch() -> None:
    from sprout.train.engine import ResumableSampler

    two = ResumableSampler(48, 4, seed=1, rank=0, world=2)  # global batch 8
    one = ResumableSampler(48, 8, seed=1)
    assert one.map_cursor((2, 3), saved_global_batch=8) == ((2, 3), True)
    # batches 0-2 of 8 = examples 0..23: with a global batch of 12 that is 2 whole batches
    assert ResumableSampler(48, 12, seed=1).map_cursor((0, 3), 8) == ((0, 2), True)
    # 3 batches of 8 = 24 examples; batches of 16 continue at the next whole batch (not repeating 16..23)
    assert ResumableSampler(48, 16, seed=1).map_cursor((0, 3), 8) == ((0, 2), False)
    assert ResumableSampler(48, 16, seed=1).map_cursor((0, 5), 8) == ((1, 0), False)
    # same global batch: rank 0 and rank 1 of two processes together hold one process's batch
    both = sorted(two.batch_indices(0, 1) + ResumableSampler(48, 4, seed=1, rank=1, world=2).batch_indices(0, 1))
    assert both == sorted(one.batch_indices(0, 1))


def test_compile_on_cpu_trains_like_eager(tmp_path: Path) -> None:
    """`compile=true` compiles the forward on CPU too: the same losses as the eager run (to float rounding of the
    fused kernels) and a saved model with plain parameter names."""
    from safetensors.torch import load_file

    kw = dict(max_steps=6, eval_every=3, save_every=6, log_every=1)
    train(make_cfg(tmp_path / "eager", **kw))
    train(make_cfg(tmp_path / "compiled", compile=True, **kw))

    def losses(out: Path) -> list[float]:
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r] + [r["val_loss"] for r in rows if "val_loss" in r]

    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(eager) == len(compiled) >= 8
    assert compiled == pytest.approx(eager, rel=1e-4)
    names = set(load_file(str(tmp_path / "compiled" / "model.safetensors")))
    assert names == set(load_file(str(tmp_path / "eager" / "model.safetensors")))

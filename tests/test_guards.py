"""Numerical guards and checkpoint safety inside the one engine: non-finite gradients are skipped
and counted, a full disk never damages the last good checkpoint, the best checkpoint survives
pruning, and a crafted pickle in a checkpoint is refused."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from test_engine import SyntheticObjective, final_weights, make_cfg

from sprout.errors import UserError
from sprout.train import checkpoint as ckpt
from sprout.train import register, train
from sprout.train.guards import StepGuard, oom_advice


class _InfGrad(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (a finite loss with an exploding gradient)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


@register
class GradSpikeObjective(SyntheticObjective):
    """Finite losses throughout, but the gradients of optimizer steps 3 and 4 are infinite."""

    name = "grad-spike-test"
    calls = 0

    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        if model.training:
            type(self).calls += 1
            if (type(self).calls - 1) // self.cfg.grad_accum in (2, 3):
                loss = _InfGrad.apply(loss)
        return loss, metrics


def test_non_finite_gradients_are_skipped_and_counted(tmp_path: Path) -> None:
    GradSpikeObjective.calls = 0
    train(make_cfg(tmp_path, stage="grad-spike-test", max_steps=8, log_every=1, eval_every=0))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 9))  # 8 good steps, the 2 bad ones were extra
    assert [r["skipped_steps"] for r in steps] == [0, 0, 2, 2, 2, 2, 2, 2]
    assert all(torch.isfinite(w).all() for w in final_weights(tmp_path).values())


def test_guard_stops_after_several_in_a_row_with_advice() -> None:
    guard = StepGuard(2, Path("runs/x/checkpoints"))
    assert guard.accept(True, 1.5, 1) == (True, None)
    ok, note = guard.accept(True, float("nan"), 2)
    assert (
        not ok and note == "step 2: non-finite gradient norm, skipping these batches (1/2 in a row, 1 skipped in all)"
    )
    assert guard.accept(True, 0.3, 3)[0]  # a good step resets the run of bad ones
    guard.accept(False, None, 4)
    with pytest.raises(UserError) as e:
        guard.accept(False, None, 5)
    assert str(e.value) == "2 optimizer steps in a row had a non-finite loss (last at step 5); the run has diverged"
    assert "lower lr" in e.value.message() and "runs/x/checkpoints" in e.value.message()


def test_oom_advice_keeps_tokens_per_step() -> None:
    assert oom_advice(16, 512, 1) == (
        "CUDA out of memory at batch_size=16, seq_len=512, grad_accum=1; try batch_size=8 grad_accum=2 "
        "(same tokens per step), a shorter seq_len, or dtype=bf16; resume with --resume"
    )


def test_disk_full_during_save_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    cfg = make_cfg(tmp_path, max_steps=5, save_every=5, eval_every=0)
    train(cfg)
    root = tmp_path / "checkpoints"
    good = ckpt.latest_checkpoint(root)
    before = {f.name: f.read_bytes() for f in good.iterdir()}

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(root / ".tmp-step_0000010" / ckpt.OPTIMIZER_FILE))

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(UserError) as e:
        train(make_cfg(tmp_path, max_steps=10, save_every=5, eval_every=0, resume=True))
    assert e.value.message().startswith("could not write checkpoint step_0000010: ")
    assert "no space left on the device" in e.value.message()
    assert f"the last good checkpoint is {good}, untouched" in e.value.message()
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp")] == []
    assert ckpt.latest_checkpoint(root) == good
    assert {f.name: f.read_bytes() for f in good.iterdir()} == before


def test_keep_last_k_plus_best(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    root = tmp_path / "checkpoints"
    for step, val in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, 4.0)):
        ckpt.save_checkpoint(root, step, model, opt, {"step": step}, keep=2)
        ckpt.mark_best(root, step, val)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_0000002", "step_0000004", "step_0000005"]
    assert ckpt.best_checkpoint(root) == root / "step_0000002"
    assert ckpt.latest_checkpoint(root) == root / "step_0000005"


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pickle_in_a_checkpoint_is_refused(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, {"step": 1})
    marker = tmp_path / "pwned"
    (path / ckpt.STATE_FILE).write_bytes(pickle.dumps({"step": 1, "x": _Payload(marker)}, protocol=2))
    with pytest.raises(UserError) as e:
        ckpt.load_checkpoint(path, model, opt)
    assert e.value.located() == (
        f"{path / ckpt.STATE_FILE}: refusing to load: it holds Python objects other than "
        "tensors and plain data (Trying to load unsupported GLOBAL posix.system whose module "
        "posix is blocked.)"
    )
    assert not marker.exists()


def test_permission_denied_during_save_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    train(make_cfg(tmp_path, max_steps=5, save_every=5, eval_every=0))
    root = tmp_path / "checkpoints"
    good = ckpt.latest_checkpoint(root)

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(ckpt, "save_safetensors_model", lambda model, path, *a, **k: denied(path))
    with pytest.raises(UserError) as e:
        train(make_cfg(tmp_path, max_steps=10, save_every=5, eval_every=0, resume=True))
    assert e.value.message() == (
        f"could not write checkpoint step_0000010: {root / '.tmp-step_0000010' / ckpt.MODEL_FILE}: permission denied; "
        f"check the owner and mode of this path (ls -l); the last good checkpoint is {good}, untouched; "
        "resume from it with --resume"
    )
    assert ckpt.latest_checkpoint(root) == good and ckpt.list_checkpoints(root) == [good]


@register
class EvalCrashObjective(SyntheticObjective):
    """Evaluation fails (a bug in an eval metric, a device error): training must not be lost."""

    name = "eval-crash-test"

    def loss(self, model, batch):
        if not model.training:
            raise RuntimeError("evaluation blew up")
        return super().loss(model, batch)


def test_a_crash_in_evaluation_loses_no_training(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="evaluation blew up"):
        train(make_cfg(tmp_path, stage="eval-crash-test", max_steps=12, save_every=5, eval_every=5))
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(root) == root / "step_0000005"  # saved before the evaluation that crashed
    # The run continues from there (without the broken evaluation) and matches an uninterrupted run.
    train(make_cfg(tmp_path, max_steps=12, save_every=5, eval_every=0, resume=True))
    train(make_cfg(tmp_path / "ref", max_steps=12, save_every=5, eval_every=0))
    got, ref = final_weights(tmp_path), final_weights(tmp_path / "ref")
    assert all(torch.equal(got[k], ref[k]) for k in ref)


@register
class SmallMemoryObjective(SyntheticObjective):
    """Pretends the GPU holds at most 2 rows: larger micro-batches raise CUDA's out-of-memory error."""

    name = "small-memory-test"

    def loss(self, model, batch):
        if batch["input_ids"].shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().loss(model, batch)


def test_out_of_memory_gives_advice(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        train(make_cfg(tmp_path, stage="small-memory-test", batch_size=8, grad_accum=1))
    assert e.value.message() == oom_advice(8, 16, 1)


def test_auto_batch_size_halves_until_it_fits_and_keeps_tokens_per_step(tmp_path: Path) -> None:
    train(make_cfg(tmp_path / "auto", stage="small-memory-test", batch_size=8, grad_accum=1, auto_batch_size=True))
    train(make_cfg(tmp_path / "manual", batch_size=2, grad_accum=4))
    auto, manual = final_weights(tmp_path / "auto"), final_weights(tmp_path / "manual")
    assert all(torch.equal(auto[k], manual[k]) for k in manual)
    # A resumed run reuses the size its checkpoint was written with (2 x 4), not the one asked for (8 x 1).
    train(
        make_cfg(
            tmp_path / "auto",
            stage="small-memory-test",
            batch_size=8,
            grad_accum=1,
            auto_batch_size=True,
            max_steps=16,
            resume=True,
        )
    )
    train(make_cfg(tmp_path / "manual", batch_size=2, grad_accum=4, max_steps=16, resume=True))
    auto, manual = final_weights(tmp_path / "auto"), final_weights(tmp_path / "manual")
    assert all(torch.equal(auto[k], manual[k]) for k in manual)

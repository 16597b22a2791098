"""The one training loop. Every stage runs through `train(cfg)`; what differs per stage is its Objective.

    run, state = setup(cfg)                      # model, data, optimizer, schedule; --resume restores all
    until budget_reached or Ctrl-C:
        set_lr                                   # schedule(progress once this step is done)
        optimizer_step:
            accumulate_gradients                 # grad_accum x (objective.loss(model, batch) / grad_accum).backward()
            agree_across_ranks                   # one all-reduce: tokens, loss, non-finite loss, clock, Ctrl-C
            clip_gradients; guard.accept         # non-finite loss or gradient norm: skip, count (guards.py)
            step_optimizer + objective.on_optimizer_step(model)
            (distributed=deepspeed: DeepSpeed's engine runs the backward, clipping and step; _zero_step)
        log_step; checkpoint, evaluate_and_log   # on their intervals; saved first, so an eval crash loses nothing
    finish: checkpoint, evaluate, objective.save(model, tokenizer, cfg.out)   (Ctrl-C: interrupted -> checkpoint)

`Run` holds what setup builds once, `RunState` what changes per step (and what a checkpoint stores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from ..errors import UserError
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    mark_best,
    rng_state,
    save_checkpoint,
    saved_config,
    set_rng_state,
    step_dir_name,
)
from .deepspeed_zero import FOLDER, DeepSpeedZero, check_deepspeed
from .device import configure_backend, select_device, select_precision
from .guards import StepGuard, fit_batch_size, oom_advice
from .logging import MetricsLog, ProgressDisplay, check_trackers, format_duration
from .objectives import Objective, build_objective, move_batch
from .optim import build_optimizer, make_schedule
from .sharding import FSDPSharding, SavedOptimizer, full_tensor


# ---- data order ---------------------------------------------------------------------------------
class ResumableSampler:
    """Batches of dataset indices in a seeded permutation per epoch (seed + epoch).

    The order is a pure function of (epoch, batch) so a cursor of two integers is all a
    checkpoint needs to continue at the exact next batch. Each rank takes every world-th index
    of the permutation; the incomplete last batch of an epoch is dropped so shapes stay equal.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.per_rank = n // world
        self.batches_per_epoch = self.per_rank // batch_size
        if self.batches_per_epoch == 0:
            raise SystemExit(
                f"the training set has {n} examples, fewer than one batch of {batch_size} per process "
                f"({world} process(es)); lower batch_size or add data"
            )
        self._perm_epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def batch_indices(self, epoch: int, batch: int) -> list[int]:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = torch.randperm(self.n, generator=g)[self.rank : self.per_rank * self.world : self.world]
            self._perm_epoch = epoch
        return self._perm[batch * self.batch_size : (batch + 1) * self.batch_size].tolist()

    def advance(self, cursor: tuple[int, int]) -> tuple[int, int]:
        epoch, batch = cursor
        batch += 1
        return (epoch + 1, 0) if batch == self.batches_per_epoch else (epoch, batch)

    def epochs_done(self, cursor: tuple[int, int]) -> float:
        return cursor[0] + cursor[1] / self.batches_per_epoch

    def map_cursor(self, cursor: tuple[int, int], saved_global_batch: int) -> tuple[tuple[int, int], bool]:
        """A cursor saved by a run with another global batch (batch_size x processes) -> this run's cursor, and
        whether it is exact. Batch b of every rank together covers permutation entries [b*G, (b+1)*G) with
        G = batch_size x world, so the same G on another number of processes continues at the same example; a
        different G continues at the first whole batch not yet (fully) seen."""
        epoch, batch = cursor
        global_batch = self.batch_size * self.world
        if saved_global_batch == global_batch:
            return cursor, True
        seen = batch * saved_global_batch
        batch = -(-seen // global_batch)  # round up: never repeat an example of this epoch
        if batch >= self.batches_per_epoch:
            return (epoch + 1, 0), False
        return (epoch, batch), seen % global_batch == 0

    def iter_from(self, cursor: tuple[int, int]) -> Iterator[list[int]]:
        while True:
            yield self.batch_indices(*cursor)
            cursor = self.advance(cursor)


class _BatchSampler:
    """Adapter so DataLoader (and its workers) walks the sampler from a given cursor, forever."""

    def __init__(self, sampler: ResumableSampler, cursor: tuple[int, int]):
        self.sampler, self.cursor = sampler, cursor

    def __iter__(self) -> Iterator[list[int]]:
        return self.sampler.iter_from(self.cursor)


# ---- budgets --------------------------------------------------------------------------------------
@dataclass
class Budget:
    """Run length limits; progress is the largest completed fraction among the ones that are set."""

    max_steps: int | None
    max_tokens: int | None
    max_minutes: float | None
    epochs: float | None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Budget:
        b = cls(cfg.max_steps, cfg.max_tokens, cfg.max_minutes, cfg.epochs)
        if not any((b.max_steps, b.max_tokens, b.max_minutes, b.epochs)):
            b.epochs = 1.0  # no budget given: one pass over the data
        return b

    def progress(self, step: float, tokens: float, elapsed_s: float, epochs_done: float) -> float:
        parts = [0.0]
        if self.max_steps:
            parts.append(step / self.max_steps)
        if self.max_tokens:
            parts.append(tokens / self.max_tokens)
        if self.max_minutes:
            parts.append(elapsed_s / (60.0 * self.max_minutes))
        if self.epochs:
            parts.append(epochs_done / self.epochs)
        return max(parts)

    def describe(self) -> str:
        items = [f"{k}={v}" for k, v in dataclasses.asdict(self).items() if v]
        return ", ".join(items)


# ---- distributed ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return info


class _ObjectiveModule(nn.Module):
    """Puts objective.loss behind forward(), so DDP sees (and synchronises) the whole loss computation."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.objective.loss(self.model, batch)


# ---- Ctrl-C -------------------------------------------------------------------------------------------
class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint, exit. Second Ctrl-C: abort immediately."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort without saving)", flush=True)


# ---- helpers -----------------------------------------------------------------------------------------
def _len(ds: Dataset) -> int:
    """Size of a map-style dataset (they all have __len__; torch's Dataset type does not declare it)."""
    return len(cast(Sized, ds))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_float(v: Any) -> float:
    return float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 50 else math.inf


@torch.no_grad()
def evaluate(model: nn.Module, objective: Objective, val: Dataset, cfg: TrainConfig, precision, device) -> dict:
    """Mean loss over the first eval_batches batches of the val set (always the same ones)."""
    model.eval()
    bs = cfg.batch_size
    n_batches = max(1, min(cfg.eval_batches, math.ceil(_len(val) / bs)))
    losses: list[float] = []
    sums: dict[str, float] = {}
    for b in range(n_batches):
        items = [val[i] for i in range(b * bs, min((b + 1) * bs, _len(val)))]
        batch = move_batch(objective.collate(items), device)
        with precision.autocast():
            loss, metrics = objective.loss(model, batch)
        losses.append(_to_float(loss))
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + _to_float(v)
    model.train()
    val_loss = sum(losses) / len(losses)
    out = {"val_loss": val_loss}
    if objective.lm_loss:  # exp(loss) is a perplexity only for a next-token cross-entropy (not DPO / RL losses)
        out["val_ppl"] = _ppl(val_loss)
    out.update({f"val_{k}": v / len(losses) for k, v in sums.items()})
    return out


def _write_config(cfg: TrainConfig, out: Path) -> None:
    data = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, plain YAML
    (out / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


# ---- the run: fixed parts and changing state -----------------------------------------------------------
@dataclass
class LogWindow:
    """Sums since the last metrics.jsonl record (averaged when written)."""

    t: float  # perf_counter() when the window opened, for tokens/s
    loss: float = 0.0
    grad_norm: Any = 0.0  # a tensor once a step is added: read back only when a record is written
    n: int = 0
    tokens: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunState:
    """What changes from step to step. step/tokens/cursor/elapsed (plus the RNG streams, the optimizer and
    objective state) are what a checkpoint stores to continue bit-identically; the rest is loop bookkeeping."""

    step: int = 0
    tokens: int = 0
    cursor: tuple[int, int] = (0, 0)  # (epoch, batch) of the next batch, see ResumableSampler
    saved_global_batch: int | None = None  # batch_size x world of the checkpoint resumed from
    elapsed_before: float = 0.0  # seconds trained by earlier runs of a resumed training
    t_start: float = 0.0  # perf_counter() when this run's loop began
    lr: float = 0.0
    last_eval_step: int = -1
    last_save_step: int = -1
    smooth: float | None = None  # moving average of the loss, for the progress line
    agreed_elapsed: float = 0.0  # under DDP: rank 0's clock as agreed at the last step
    stop_agreed: bool = False  # under DDP: some rank saw Ctrl-C at the last step
    window: LogWindow = field(default_factory=lambda: LogWindow(t=0.0))

    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.t_start)


@dataclass
class Run:
    """The parts of a training run that `setup` builds once and the step functions share."""

    cfg: TrainConfig
    out: Path
    dinfo: DistInfo
    device: torch.device
    precision: Any
    objective: Objective
    tokenizer: Any
    model: nn.Module
    loss_module: nn.Module  # objective.loss behind forward(), DDP-wrapped (or DeepSpeed's engine) when distributed
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]
    scaler: Any
    train_ds: Dataset
    val_ds: Dataset | None
    sampler: ResumableSampler
    batches: Iterator[dict[str, Any]]
    budget: Budget
    schedule: Any
    est_total_steps: float | None
    nominal_step_tokens: int
    resumed_from: Path | None
    log: MetricsLog | None
    display: ProgressDisplay
    guard: StepGuard  # skips and counts non-finite steps, stops the run when they keep coming
    sharding: FSDPSharding | None = None  # distributed=fsdp under torchrun
    zero: DeepSpeedZero | None = None  # distributed=deepspeed under torchrun

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    @property
    def every_rank_forwards(self) -> bool:
        """FSDP and ZeRO-3 gather weight shards from all ranks in a forward pass: evaluation runs on every rank."""
        return self.sharding is not None or (self.zero is not None and self.zero.forward_needs_every_rank)


@dataclass
class StepResult:
    loss: float  # mean over the micro-batches
    grad_norm: torch.Tensor
    metrics: dict[str, Any]  # summed over the micro-batches
    tokens: int  # all ranks together


# ---- the loop ------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, on_step: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Run training as configured; return the final model folder (cfg.out), or the checkpoint
    folder when the run was interrupted. `on_step(info)` is called after every optimizer step
    (tests use it to interrupt a run)."""
    dinfo = init_distributed(cfg.device)
    try:
        return _train(cfg, Path(cfg.out), dinfo, on_step)
    except torch.cuda.OutOfMemoryError as e:
        raise UserError(oom_advice(cfg.batch_size, cfg.seq_len, cfg.grad_accum)) from e
    finally:
        if dinfo.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, dinfo: DistInfo, on_step: Callable | None) -> Path:
    """Set up; until a budget is reached or Ctrl-C: one optimizer step, log, evaluate, checkpoint on their
    intervals; then a last evaluation, checkpoint and the saved model (or, when stopped, just the checkpoint)."""
    run, st = setup(cfg, out, dinfo)
    with run.display, _StopFlag() as stop, run.log if run.log is not None else contextlib.nullcontext():
        announce(run, st)
        st.t_start = st.window.t = time.perf_counter()
        st.lr = cfg.lr * run.schedule.factor(0.0, st.step)
        while True:
            if budget_reached(run, st):
                return finish(run, st)
            if stop_agreed(run, st, stop):
                return interrupted(run, st)
            set_lr(run, st)
            result = optimizer_step(run, st, stop)
            if result is None:
                continue  # non-finite loss or gradient: the batches were skipped
            progress = log_step(run, st, result)
            # Save before evaluating: a crash inside evaluation must not lose the training since the last save.
            if cfg.save_every and st.step % cfg.save_every == 0:
                checkpoint(run, st)
            if run.val_ds is not None and cfg.eval_every and st.step % cfg.eval_every == 0:
                evaluate_and_log(run, st)
            if on_step is not None:
                on_step({"step": st.step, "loss": result.loss, "lr": st.lr, "tokens": st.tokens, "progress": progress})


# ---- setup ------------------------------------------------------------------------------------------------
def setup(cfg: TrainConfig, out: Path, dinfo: DistInfo) -> tuple[Run, RunState]:
    """Device, objective, model, data, optimizer, schedule; restored from the latest checkpoint with --resume.
    The order is fixed: everything that draws random numbers comes before the RNG streams are restored."""
    device = select_device(cfg.device)
    precision = select_precision(device, cfg.dtype)
    configure_backend(device, cfg.num_threads)
    _seed_everything(cfg.seed)  # same on every rank: identical initial weights
    resume_from = _resume_path(cfg, out)
    if dinfo.main:
        check_trackers(cfg.trackers)
        out.mkdir(parents=True, exist_ok=True)
        _write_config(cfg, out)

    objective, tokenizer, model = _build_model(cfg, out, dinfo, device)
    train_ds, val_ds = _datasets(objective, tokenizer, dinfo)
    if cfg.auto_batch_size:
        cfg = _auto_batch_size(cfg, model, objective, train_ds, precision, device, resume_from)
    sharding = _shard(cfg, dinfo, model)  # before the optimizer: FSDP2 replaces the parameters by shards

    sampler = ResumableSampler(_len(train_ds), cfg.batch_size, cfg.seed, dinfo.rank, dinfo.world)
    optimizer = build_optimizer(
        model,
        cfg.lr,
        cfg.weight_decay,
        cfg.betas,
        device,
        objective.trainable_parameters(model),
        cfg.optimizer,
        cfg.muon_lr,
    )
    params = [p for g in optimizer.param_groups for p in g["params"]]  # DeepSpeed swaps in flat partitions
    zero = _deepspeed(cfg, dinfo, model, objective, optimizer, device, precision.name)
    if zero is not None:
        optimizer = cast(torch.optim.Optimizer, zero.optimizer)  # the same param groups, stepped by DeepSpeed
    scaler = precision.make_scaler() if zero is None else None  # DeepSpeed scales fp16 losses itself
    budget = Budget.from_config(cfg)
    nominal_step_tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum * dinfo.world
    est_total_steps = _estimate_total_steps(budget, nominal_step_tokens, sampler.batches_per_epoch, cfg.grad_accum)
    schedule = make_schedule(cfg.schedule, cfg.warmup, cfg.min_lr_ratio, cfg.decay_fraction, est_total_steps)

    st = RunState()
    saved_rng = None
    if resume_from is not None:
        saved_rng = _restore(resume_from, st, model, optimizer, scaler, objective, sharding, zero)
        _map_cursor_onto_world(st, sampler, st.saved_global_batch, dinfo)

    if cfg.compile:
        # Compile the forward only: state-dict names stay clean and model.loss() uses the compiled graph. On CPU too:
        # fusing norms, RoPE and SwiGLU made a bf16 minimind3 step 1.58x faster on 2 cores (docs/BENCHMARKS.md).
        model.forward = torch.compile(model.forward)
    loss_module = zero.engine if zero is not None else _loss_module(model, objective, dinfo, device, sharding)
    batches = _batches(cfg, train_ds, sampler, st.cursor, objective, device)
    if saved_rng is not None:
        set_rng_state(saved_rng)  # last, so nothing above perturbs the restored streams

    run = Run(
        cfg=cfg,
        out=out,
        dinfo=dinfo,
        device=device,
        precision=precision,
        objective=objective,
        tokenizer=tokenizer,
        model=model,
        loss_module=loss_module,
        optimizer=optimizer,
        params=params,
        scaler=scaler,
        train_ds=train_ds,
        val_ds=val_ds,
        sampler=sampler,
        batches=batches,
        budget=budget,
        schedule=schedule,
        est_total_steps=est_total_steps,
        nominal_step_tokens=nominal_step_tokens,
        resumed_from=resume_from,
        log=_metrics_log(cfg, out, dinfo, st.step if resume_from is not None else None),
        display=ProgressDisplay(dinfo.main, cfg.log_every),
        guard=StepGuard(cfg.max_bad_steps, out / "checkpoints"),
        sharding=sharding,
        zero=zero,
    )
    return run, st


def _auto_batch_size(
    cfg: TrainConfig,
    model: nn.Module,
    objective: Objective,
    train_ds: Dataset,
    precision: Any,
    device: torch.device,
    resume_from: Path | None,
) -> TrainConfig:
    """auto_batch_size=true: the largest micro-batch that fits, found once; a resumed run reuses it (its
    checkpoint's batch_size and grad_accum), so the data order stays the same."""
    if resume_from is not None:
        saved = saved_config(resume_from)
        bs, ga = int(saved["batch_size"]), int(saved["grad_accum"])
    else:

        def try_batch(b: int) -> None:
            batch = move_batch(objective.collate([train_ds[i % _len(train_ds)] for i in range(b)]), device)
            with precision.autocast():
                loss, _ = objective.loss(model, batch)
            loss.backward()
            model.zero_grad(set_to_none=True)

        bs, ga = fit_batch_size(try_batch, cfg.batch_size, cfg.grad_accum, cfg.seq_len)
    if (bs, ga) != (cfg.batch_size, cfg.grad_accum):
        print(f"auto_batch_size: batch_size={bs} grad_accum={ga} (asked for {cfg.batch_size} x {cfg.grad_accum})")
    return dataclasses.replace(cfg, batch_size=bs, grad_accum=ga)


def _build_model(
    cfg: TrainConfig, out: Path, dinfo: DistInfo, device: torch.device
) -> tuple[Objective, Any, nn.Module]:
    """The stage's objective (its self-description saved beside the run), tokenizer and model on the device."""
    objective = build_objective(cfg)
    if dinfo.main:
        _write_description(objective, out, keep_started=cfg.resume)
    tokenizer = objective.load_tokenizer()
    model = objective.build_model(tokenizer).to(device)
    model.train()
    if cfg.grad_checkpoint:
        cast(Any, model).gradient_checkpointing = True  # read by the model's trunk while training
    objective.setup(model, device)
    return objective, tokenizer, model


def _batches(
    cfg: TrainConfig,
    train_ds: Dataset,
    sampler: ResumableSampler,
    cursor: tuple[int, int],
    objective: Objective,
    device: torch.device,
) -> Iterator[dict[str, Any]]:
    """Training batches from `cursor` on, forever (the budget ends the loop), collated by the objective."""
    loader = DataLoader(
        train_ds,
        batch_sampler=_BatchSampler(sampler, cursor),
        collate_fn=objective.collate,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps DataLoader from drawing on the global RNG
    )
    return iter(loader)


def _metrics_log(cfg: TrainConfig, out: Path, dinfo: DistInfo, resume_step: int | None) -> MetricsLog | None:
    """metrics.jsonl (+ trackers) on rank 0; on resume it drops records past the checkpoint's step."""
    if not dinfo.main:
        return None
    return MetricsLog(out, cfg.trackers, json.loads(json.dumps(dataclasses.asdict(cfg))), resume_step=resume_step)


def _resume_path(cfg: TrainConfig, out: Path) -> Path | None:
    if not cfg.resume:
        return None
    path = latest_checkpoint(out / "checkpoints")
    if path is None:
        raise SystemExit(f"resume=True but {out / 'checkpoints'} holds no checkpoint; drop --resume to start fresh")
    return path


def _datasets(objective: Objective, tokenizer: Any, dinfo: DistInfo) -> tuple[Dataset, Dataset | None]:
    """Rank 0 builds (and caches) the datasets first; the other ranks then read its cache."""
    if dinfo.enabled and not dinfo.main:
        dist.barrier()
    train_ds, val_ds = objective.datasets(tokenizer)
    if dinfo.enabled and dinfo.main:
        dist.barrier()
    if val_ds is not None and _len(val_ds) == 0:
        val_ds = None
    return train_ds, val_ds


def _estimate_total_steps(budget: Budget, step_tokens: int, batches_per_epoch: int, grad_accum: int) -> float | None:
    """Steps the run will take by the tightest of the step, token and epoch budgets (a time budget has no
    estimate); the LR schedule and the progress display use it."""
    estimates = [
        x
        for x in (
            budget.max_steps,
            budget.max_tokens / step_tokens if budget.max_tokens else None,
            budget.epochs * batches_per_epoch / grad_accum if budget.epochs else None,
        )
        if x
    ]
    return min(estimates) if estimates else None


def _restore(
    path: Path,
    st: RunState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: Any,
    objective: Objective,
    sharding: FSDPSharding | None = None,
    zero: DeepSpeedZero | None = None,
) -> dict[str, Any]:
    """Load weights, optimizer, scaler and objective state into place and the counters into `st`; return the
    saved RNG streams (applied last by `setup`)."""
    if zero is not None:
        saved = zero.load(path)
    elif sharding is not None:
        saved = sharding.load(path, model, optimizer)
    else:
        saved = load_checkpoint(path, model, optimizer)
    st.step, st.tokens, st.elapsed_before = int(saved["step"]), int(saved["tokens"]), float(saved["elapsed_s"])
    st.cursor = (int(saved["cursor"][0]), int(saved["cursor"][1]))
    if "world" in saved:
        st.saved_global_batch = int(saved["batch_size"]) * int(saved["world"])
    st.agreed_elapsed = st.elapsed_before
    st.last_save_step = st.step  # this step is on disk already
    if scaler is not None and saved.get("scaler"):
        scaler.load_state_dict(saved["scaler"])
    objective.load_state_dict(saved.get("objective", {}))
    return saved["rng"]


def _map_cursor_onto_world(st: RunState, sampler: ResumableSampler, saved_global: int | None, dinfo: DistInfo) -> None:
    """Resume onto another number of processes (or batch size): re-express the data cursor (docs/training.md)."""
    if saved_global is None:  # a checkpoint from before world sizes were recorded: assume the same
        return
    st.cursor, exact = sampler.map_cursor(st.cursor, saved_global)
    if not exact and dinfo.main:
        print(
            f"resuming with a global batch of {sampler.batch_size * sampler.world} instead of {saved_global}: "
            f"the data order continues at the next whole batch, epoch {st.cursor[0]} batch {st.cursor[1]}"
        )


def _shard(cfg: TrainConfig, dinfo: DistInfo, model: nn.Module) -> FSDPSharding | None:
    """distributed=fsdp under torchrun: shard the model with FSDP2 (sprout/train/sharding.py); else None."""
    if cfg.distributed not in ("ddp", "fsdp", "deepspeed"):
        raise SystemExit(f"distributed must be ddp, fsdp or deepspeed; got {cfg.distributed!r}")
    if cfg.distributed != "fsdp" or not dinfo.enabled:
        return None
    if cfg.ce_chunk:
        raise SystemExit(
            "ce_chunk reads the LM head outside the model's forward, which FSDP does not see; "
            "use ce_chunk=0 with distributed=fsdp"
        )
    if cfg.optimizer == "muon":
        raise SystemExit("Muon orthogonalises whole matrices; with distributed=fsdp they are sharded. Use ddp.")
    from .sharding import FSDPSharding

    return FSDPSharding(model, dinfo.main)


def _deepspeed(
    cfg: TrainConfig,
    dinfo: DistInfo,
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    dtype: str,
) -> DeepSpeedZero | None:
    """distributed=deepspeed under torchrun: DeepSpeed's engine with ZeRO-2/3 around the loss module and our
    optimizer (sprout/train/deepspeed_zero.py); else None."""
    if cfg.distributed != "deepspeed":
        return None
    if cfg.zero_stage not in (2, 3):
        raise SystemExit(f"zero_stage must be 2 or 3; got {cfg.zero_stage!r}")
    if not dinfo.enabled:
        return None
    if cfg.optimizer == "muon":
        raise SystemExit("Muon orthogonalises whole matrices; ZeRO partitions them. Use distributed=ddp.")
    if cfg.ce_chunk and cfg.zero_stage == 3:
        raise SystemExit(
            "ce_chunk reads the LM head outside the model's forward, where ZeRO-3 has not gathered it; "
            "use ce_chunk=0 or zero_stage=2"
        )
    check_deepspeed(device)
    return DeepSpeedZero(cfg, _ObjectiveModule(model, objective), optimizer, dtype)


def _loss_module(
    model: nn.Module, objective: Objective, dinfo: DistInfo, device: torch.device, sharding: FSDPSharding | None = None
) -> nn.Module:
    module: nn.Module = _ObjectiveModule(model, objective)
    if dinfo.enabled and sharding is None:
        module = nn.parallel.DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            # Buffers are not re-broadcast before each forward: RoPE tables are constants and MoE router biases
            # move alike on all ranks (on_optimizer_step). They are synced once here, when they are equal anyway.
            forward_sync_buffers=False,
        )
    return module


def _numel(p: nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 leaves an empty tensor and records the full size


def announce(run: Run, st: RunState) -> None:
    n_params = sum(_numel(p) for p in run.model.parameters())
    n_train = sum(_numel(p) for p in run.params)
    if run.resumed_from is not None:
        run.display.print(f"resumed from {run.resumed_from} at step {st.step}")
    n_val = _len(run.val_ds) if run.val_ds is not None else 0
    run.display.print(
        f"{run.cfg.stage}: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trained) on {run.device} "
        f"[{run.precision.name}], {_len(run.train_ds):,} train / {n_val:,} val "
        f"examples, budget {run.budget.describe()}"
        + (f" ~{run.est_total_steps:,.0f} steps" if run.est_total_steps else "")
    )


# ---- decisions at the top of each step (identical on every rank) -------------------------------------------
def _elapsed_for_decisions(run: Run, st: RunState) -> float:
    # Under DDP every rank must take the same decisions, so they use the values agreed at the last step.
    return st.agreed_elapsed if run.dinfo.enabled else st.elapsed()


def budget_reached(run: Run, st: RunState) -> bool:
    elapsed = _elapsed_for_decisions(run, st)
    return run.budget.progress(st.step, st.tokens, elapsed, run.sampler.epochs_done(st.cursor)) >= 1.0


def stop_agreed(run: Run, st: RunState, stop: _StopFlag) -> bool:
    return st.stop_agreed if run.dinfo.enabled else stop.requested


def set_lr(run: Run, st: RunState) -> None:
    """lr for this step: budget progress as it will be once this step is done."""
    cfg = run.cfg
    epochs_next = run.sampler.epochs_done(st.cursor) + cfg.grad_accum / run.sampler.batches_per_epoch
    progress = run.budget.progress(
        st.step + 1, st.tokens + run.nominal_step_tokens, _elapsed_for_decisions(run, st), epochs_next
    )
    st.lr = cfg.lr * run.schedule.factor(progress, st.step)
    for g in run.optimizer.param_groups:
        g["lr"] = st.lr * g.get("lr_ratio", 1.0)  # Muon's matrices run at muon_lr / lr times the schedule


# ---- one optimizer step ---------------------------------------------------------------------------------------
def optimizer_step(run: Run, st: RunState, stop: _StopFlag) -> StepResult | None:
    """grad_accum micro-batches, agree across ranks, clip the gradients, then either skip a step whose loss
    or gradient norm is not finite (None; guards.py) or step the optimizer and tell the objective
    (`on_optimizer_step`)."""
    loss_sum, step_tokens, metrics = accumulate_gradients(run, st)
    nonfinite, tokens, loss = agree_across_ranks(run, st, loss_sum, step_tokens, stop)
    st.tokens += tokens
    if run.zero is not None:
        return _zero_step(run, st, nonfinite, StepResult(loss / run.cfg.grad_accum, torch.zeros(()), metrics, tokens))
    grad_norm = None if nonfinite else clip_gradients(run)
    # fp16's scaler skips inf gradients itself (and lowers its scale); elsewhere the guard does. Gradients
    # are all-reduced, so every rank sees the same norm and takes the same decision.
    measured = None if grad_norm is None or run.scaler is not None else float(grad_norm)
    if not _guard_accepts(run, st, nonfinite, measured) or grad_norm is None:  # (never accepted without one)
        run.optimizer.zero_grad(set_to_none=True)
        return None
    step_optimizer(run)
    run.objective.on_optimizer_step(run.model)
    st.step += 1
    return StepResult(loss / run.cfg.grad_accum, grad_norm, metrics, tokens)


def _guard_accepts(run: Run, st: RunState, nonfinite: bool, measured: float | None) -> bool:
    """The guard's verdict on the coming step (guards.py), its note printed when it skips or stops."""
    ok, note = run.guard.accept(not nonfinite, measured, st.step + 1)
    if not ok and note:
        run.display.print(note)
    return ok


def _zero_step(run: Run, st: RunState, nonfinite: bool, result: StepResult) -> StepResult | None:
    """DeepSpeed clips and steps inside its engine, and skips a step whose gradient norm is not finite itself (a
    non-finite loss makes one); the guard counts such steps from the norm it reports (fp16: DeepSpeed's loss
    scaler skips overflowing steps, as torch's GradScaler does on the other paths)."""
    zero = cast(DeepSpeedZero, run.zero)
    result.grad_norm = zero.step()
    measured = None if run.precision.name == "fp16" else float(result.grad_norm)
    if not _guard_accepts(run, st, nonfinite, measured):
        return None
    run.objective.on_optimizer_step(run.model)
    st.step += 1
    return result


def accumulate_gradients(run: Run, st: RunState) -> tuple[torch.Tensor, int, dict[str, Any]]:
    """Forward + backward over grad_accum micro-batches; (summed loss, tokens on this rank, summed metrics)."""
    cfg = run.cfg
    loss_sum = torch.zeros((), device=run.device)
    step_tokens = 0
    step_metrics: dict[str, Any] = {}
    for k in range(cfg.grad_accum):
        batch = next(run.batches)
        st.cursor = run.sampler.advance(st.cursor)
        step_tokens += run.objective.count_tokens(batch)
        batch = move_batch(batch, run.device)
        last_micro = k == cfg.grad_accum - 1
        with _gradient_sync(run, last_micro):
            with run.precision.autocast():
                loss, metrics = run.loss_module(batch)
            scaled = loss / cfg.grad_accum
            if run.zero is not None:
                run.zero.backward(scaled)  # DeepSpeed's backward reduces the partitioned gradients
            else:
                (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        loss_sum += loss.detach().float()
        for name, v in metrics.items():
            step_metrics[name] = step_metrics.get(name, 0.0) + (
                v.detach().float() if isinstance(v, torch.Tensor) else float(v)
            )
    return loss_sum, step_tokens, step_metrics


def _gradient_sync(run: Run, last_micro: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces (FSDP reduce-scatters) gradients on every backward unless told not to: only the last
    micro-step of grad_accum syncs (DeepSpeed: its accumulation boundary)."""
    if run.zero is not None:
        run.zero.set_boundary(last_micro)
        return contextlib.nullcontext()
    if not run.dinfo.enabled or last_micro:
        if run.sharding is not None:
            run.sharding.set_gradient_sync(run.model, True)
        return contextlib.nullcontext()
    if run.sharding is not None:
        run.sharding.set_gradient_sync(run.model, False)
        return contextlib.nullcontext()
    return cast(nn.parallel.DistributedDataParallel, run.loss_module).no_sync()


def agree_across_ranks(
    run: Run, st: RunState, loss_sum: torch.Tensor, step_tokens: int, stop: _StopFlag
) -> tuple[bool, int, float]:
    """One collective per step keeps every rank agreeing on tokens, NaN skips, time and Ctrl-C, and makes the
    logged loss the mean over ranks (what one process with the same global batch would log).
    Returns (some rank's loss was non-finite, tokens of all ranks, summed micro-batch loss averaged over ranks)."""
    loss = float(loss_sum.item())
    nonfinite = float(not math.isfinite(loss))
    shared = [float(step_tokens), nonfinite, st.elapsed() if run.dinfo.main else 0.0, float(stop.requested), loss]
    if run.dinfo.enabled:
        t = torch.tensor(shared, dtype=torch.float64, device=run.device)
        dist.all_reduce(t)
        shared = t.tolist()
        st.agreed_elapsed, st.stop_agreed = shared[2], shared[3] > 0
    return shared[1] > 0, int(shared[0]), shared[4] / run.dinfo.world


def clip_gradients(run: Run) -> torch.Tensor:
    """Unscale (fp16) and clip to cfg.grad_clip; the norm before clipping."""
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
    max_norm = run.cfg.grad_clip if run.cfg.grad_clip and run.cfg.grad_clip > 0 else math.inf
    return full_tensor(torch.nn.utils.clip_grad_norm_(run.params, max_norm))  # FSDP: a DTensor


def step_optimizer(run: Run) -> None:
    """Optimizer step (through the GradScaler in fp16), then zero the gradients."""
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)


# ---- log, evaluate, checkpoint, finish ----------------------------------------------------------------------
def log_step(run: Run, st: RunState, r: StepResult) -> float:
    """Progress line every step; a metrics.jsonl record (window averages) every log_every steps. Returns the
    budget progress."""
    st.smooth = r.loss if st.smooth is None else 0.9 * st.smooth + 0.1 * r.loss
    w = st.window
    w.loss += r.loss
    w.grad_norm += r.grad_norm.detach().float()
    w.n += 1
    for name, v in r.metrics.items():
        w.metrics[name] = w.metrics.get(name, 0.0) + v
    w.tokens += r.tokens
    now = time.perf_counter()
    elapsed = st.elapsed_before + (now - st.t_start)
    progress = run.budget.progress(st.step, st.tokens, elapsed, run.sampler.epochs_done(st.cursor))
    tok_s = w.tokens / max(now - w.t, 1e-9)
    # The estimate made before training assumes every row full; packed or padded rows hold fewer real tokens, so
    # once a tenth of the budget is done the steps so far over the progress so far say more.
    if progress >= 0.1:
        total: int | None = round(st.step / progress)
    else:
        total = round(run.est_total_steps) if run.est_total_steps else None
    run.display.update(st.step, total, progress, st.smooth, st.lr, tok_s)
    if run.log is not None and st.step % max(1, run.cfg.log_every) == 0:
        micro = w.n * run.cfg.grad_accum
        record = {
            "step": st.step,
            "tokens": st.tokens,
            "loss": w.loss / w.n,
            "lr": st.lr,
            "grad_norm": _to_float(w.grad_norm) / w.n,
            "tokens_per_s": tok_s,
            "elapsed_s": round(elapsed, 3),
            "epoch": round(run.sampler.epochs_done(st.cursor), 4),
            "skipped_steps": run.guard.skipped,
        }
        record.update({k: _to_float(v) / micro for k, v in w.metrics.items()})
        run.log.log(record)
        st.window = LogWindow(t=now)
    return progress


def evaluate_and_log(run: Run, st: RunState) -> None:
    """Validation loss on rank 0 (the other ranks only note that this step was evaluated; under FSDP and ZeRO-3
    every rank runs the forward passes, which need all shards)."""
    if (run.dinfo.main or run.every_rank_forwards) and run.val_ds is not None:
        result = evaluate(run.model, run.objective, run.val_ds, run.cfg, run.precision, run.device)
        _log_eval(run.log, run.display, result, st.step, st.tokens, st.elapsed())
        if run.dinfo.main:  # only rank 0 writes files
            mark_best(run.ckpt_root, st.step, result["val_loss"])  # when this step has a checkpoint
    st.last_eval_step = st.step


def checkpoint(run: Run, st: RunState) -> Path | None:
    """Rank 0 writes everything `setup` needs to continue exactly (DeepSpeed: every rank its shards first); all
    ranks wait for it."""
    path = None
    shards = run.zero.save_shards(run.ckpt_root, st.step) if run.zero is not None else None
    model, optimizer = _whole(run, shards, st.step)
    if run.dinfo.main:
        state = {
            "step": st.step,
            "tokens": st.tokens,
            "elapsed_s": st.elapsed(),
            "cursor": list(st.cursor),
            "world": run.dinfo.world,  # the cursor counts batches of batch_size x world examples
            "batch_size": run.cfg.batch_size,
            "lr": st.lr,
            "scaler": run.scaler.state_dict() if run.scaler is not None else {},
            "objective": run.objective.state_dict(),
            "rng": rng_state(),
            "config": json.loads(json.dumps(dataclasses.asdict(run.cfg))),
        }
        staged = {FOLDER: shards} if shards is not None else None
        path = save_checkpoint(
            run.ckpt_root, st.step, model, optimizer, state, keep=run.cfg.keep_checkpoints, staged=staged
        )
    if run.dinfo.enabled:
        dist.barrier()
    st.last_save_step = st.step
    return path


def _whole(run: Run, shards: Path | None = None, step: int = 0) -> tuple[Any, Any]:
    """The model and optimizer as rank 0 saves them: themselves; under FSDP the gathered full state (a
    collective every rank joins); under DeepSpeed the weights consolidated from the shards of `step` and a
    marker in place of the optimizer state (it is in the shards)."""
    if run.zero is not None:
        marker = SavedOptimizer({"deepspeed": {"zero_stage": run.zero.stage, "world": run.dinfo.world}})
        return run.zero.consolidated(cast(Path, shards), step), marker
    if run.sharding is None:
        return run.model, run.optimizer
    return run.sharding.gathered(run.model, run.optimizer)


def interrupted(run: Run, st: RunState) -> Path:
    """Ctrl-C: checkpoint (unless this step is saved already) and say how to resume."""
    path = checkpoint(run, st) if st.last_save_step != st.step else latest_checkpoint(run.ckpt_root)
    run.display.print(
        f"interrupted at step {st.step}; checkpoint in {path}. Resume with the same command plus "
        f"--resume (resume=true)."
    )
    return path if path is not None else run.ckpt_root


def finish(run: Run, st: RunState) -> Path:
    """Budget reached: last checkpoint and evaluation (if not just done), then the objective saves the model."""
    if st.last_save_step != st.step:
        checkpoint(run, st)
    if run.val_ds is not None and (run.dinfo.main or run.every_rank_forwards) and st.last_eval_step != st.step:
        evaluate_and_log(run, st)
    if run.zero is not None:  # the weights of this step's checkpoint (consolidated when it was written)
        model, _ = _whole(run, run.ckpt_root / step_dir_name(st.step) / FOLDER, st.step)
    else:
        model, _ = _whole(run) if run.sharding is not None else (run.model, None)
    if run.dinfo.main:
        run.objective.save(model, run.tokenizer, run.out)
        run.display.print(
            f"done: {st.step} steps, {st.tokens:,} tokens in {format_duration(st.elapsed())}; model saved to {run.out}"
        )
    if run.dinfo.enabled:
        dist.barrier()
    return run.out


def _write_description(objective: Objective, out: Path, keep_started: bool) -> None:
    """OUT/objective.json: the stage's self-description for `sprout report`, plus when the stage first started
    (kept on resume; the report orders a speedrun's stages by it)."""
    path = out / "objective.json"
    started = time.time()
    if keep_started:
        with contextlib.suppress(OSError, ValueError, KeyError):
            started = json.loads(path.read_text())["started"]
    path.write_text(json.dumps({**objective.describe(), "started": started}, ensure_ascii=False, indent=1) + "\n")


def _log_eval(
    log: MetricsLog | None, display: ProgressDisplay, result: dict, step: int, tokens: int, elapsed: float
) -> None:
    shown = [f"val_loss {result['val_loss']:.4f}"]
    shown += [f"{k} {result[k]:.4f}" for k in ("val_ppl", "val_reward", "val_accuracy") if k in result]
    display.print(f"step {step}: " + "  ".join(shown))
    if log is not None:
        log.log({"step": step, "split": "val", "tokens": tokens, "elapsed_s": round(elapsed, 3), **result})

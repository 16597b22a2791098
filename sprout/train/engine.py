"""The one training loop. Every stage runs through `train(cfg)`; what differs per stage is its Objective.

    for each optimizer step until a budget is reached:
        lr = cfg.lr * schedule(progress)
        repeat grad_accum times: loss = objective.loss(model, next_batch); (loss / grad_accum).backward()
        clip gradients to cfg.grad_clip, optimizer.step(), zero_grad
        log / evaluate / checkpoint on their intervals
    evaluate, checkpoint, objective.save(model, tokenizer, cfg.out)
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import TrainConfig
from .checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .device import configure_backend, select_device, select_precision
from .logging import MetricsLog, ProgressDisplay, check_trackers, format_duration
from .objectives import Objective, build_objective, move_batch
from .optim import build_optimizer, make_schedule

MAX_BAD_STEPS = 3  # consecutive non-finite losses tolerated before the run is stopped


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
    def from_config(cls, cfg: TrainConfig) -> "Budget":
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

    def __enter__(self) -> "_StopFlag":
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
    n_batches = max(1, min(cfg.eval_batches, math.ceil(len(val) / bs)))
    losses: list[float] = []
    sums: dict[str, float] = {}
    for b in range(n_batches):
        items = [val[i] for i in range(b * bs, min((b + 1) * bs, len(val)))]
        batch = move_batch(objective.collate(items), device)
        with precision.autocast():
            loss, metrics = objective.loss(model, batch)
        losses.append(_to_float(loss))
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + _to_float(v)
    model.train()
    val_loss = sum(losses) / len(losses)
    out = {"val_loss": val_loss, "val_ppl": _ppl(val_loss)}
    out.update({f"val_{k}": v / len(losses) for k, v in sums.items()})
    return out


def _write_config(cfg: TrainConfig, out: Path) -> None:
    data = json.loads(json.dumps(dataclasses.asdict(cfg)))  # tuples -> lists, plain YAML
    (out / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


# ---- the loop ----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, on_step: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """Run training as configured; return the final model folder (cfg.out), or the checkpoint
    folder when the run was interrupted. `on_step(info)` is called after every optimizer step
    (tests use it to interrupt a run)."""
    out = Path(cfg.out)
    dinfo = init_distributed(cfg.device)
    try:
        return _train(cfg, out, dinfo, on_step)
    finally:
        if dinfo.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, out: Path, dinfo: DistInfo, on_step: Callable | None) -> Path:
    device = select_device(cfg.device)
    precision = select_precision(device, cfg.dtype)
    configure_backend(device, cfg.num_threads)
    _seed_everything(cfg.seed)  # same on every rank: identical initial weights
    ckpt_root = out / "checkpoints"
    resume_from = None
    if cfg.resume:
        resume_from = latest_checkpoint(ckpt_root)
        if resume_from is None:
            raise SystemExit(f"resume=True but {ckpt_root} holds no checkpoint; drop --resume to start fresh")
    if dinfo.main:
        check_trackers(cfg.trackers)
        out.mkdir(parents=True, exist_ok=True)
        _write_config(cfg, out)

    objective = build_objective(cfg)
    tokenizer = objective.load_tokenizer()
    model = objective.build_model(tokenizer).to(device)
    model.train()
    objective.setup(model, device)

    # Rank 0 builds (and caches) the datasets first; the other ranks then read its cache.
    if dinfo.enabled and not dinfo.main:
        dist.barrier()
    train_ds, val_ds = objective.datasets(tokenizer)
    if dinfo.enabled and dinfo.main:
        dist.barrier()
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None

    sampler = ResumableSampler(len(train_ds), cfg.batch_size, cfg.seed, dinfo.rank, dinfo.world)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, device,
                                objective.trainable_parameters(model))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = precision.make_scaler()
    budget = Budget.from_config(cfg)
    nominal_step_tokens = cfg.batch_size * cfg.seq_len * cfg.grad_accum * dinfo.world
    estimates = [x for x in (
        budget.max_steps,
        budget.max_tokens / nominal_step_tokens if budget.max_tokens else None,
        budget.epochs * sampler.batches_per_epoch / cfg.grad_accum if budget.epochs else None,
    ) if x]
    est_total_steps = min(estimates) if estimates else None
    schedule = make_schedule(cfg.schedule, cfg.warmup, cfg.min_lr_ratio, cfg.decay_fraction, est_total_steps)

    step, tokens, elapsed_before, cursor = 0, 0, 0.0, (0, 0)
    saved_rng = None
    if resume_from is not None:
        st = load_checkpoint(resume_from, model, optimizer)
        step, tokens, elapsed_before = int(st["step"]), int(st["tokens"]), float(st["elapsed_s"])
        cursor = (int(st["cursor"][0]), int(st["cursor"][1]))
        if scaler is not None and st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        objective.load_state_dict(st.get("objective", {}))
        saved_rng = st["rng"]

    if cfg.compile and device.type == "cuda":
        # Compile the forward only: state-dict names stay clean and model.loss() uses the compiled graph.
        model.forward = torch.compile(model.forward)
    loss_module: nn.Module = _ObjectiveModule(model, objective)
    if dinfo.enabled:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)  # RoPE constants; MoE router biases move alike on all ranks (on_optimizer_step)

    loader = DataLoader(
        train_ds, batch_sampler=_BatchSampler(sampler, cursor), collate_fn=objective.collate,
        num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps DataLoader from drawing on the global RNG
    )
    batches = iter(loader)
    if saved_rng is not None:
        set_rng_state(saved_rng)  # last, so nothing above perturbs the restored streams

    log = MetricsLog(out, cfg.trackers, json.loads(json.dumps(dataclasses.asdict(cfg))),
                     resume_step=step if resume_from is not None else None) if dinfo.main else None
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in params)

    def checkpoint(lr: float) -> Path | None:
        path = None
        if dinfo.main:
            state = {
                "step": step, "tokens": tokens, "elapsed_s": elapsed_before + (time.perf_counter() - t_start),
                "cursor": list(cursor), "lr": lr, "scaler": scaler.state_dict() if scaler is not None else {},
                "objective": objective.state_dict(), "rng": rng_state(),
                "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
            }
            path = save_checkpoint(ckpt_root, step, model, optimizer, state)
        if dinfo.enabled:
            dist.barrier()
        return path

    display = ProgressDisplay(dinfo.main, cfg.log_every)
    t_start = time.perf_counter()
    lr = cfg.lr * schedule.factor(0.0, step)
    bad_steps, last_eval_step, last_save_step = 0, -1, step if resume_from is not None else -1
    window: dict[str, Any] = {"loss": 0.0, "grad_norm": 0.0, "n": 0, "tokens": 0, "t": t_start, "metrics": {}}
    smooth: float | None = None
    stopped_by_user = stop_agreed = False
    agreed_elapsed = elapsed_before

    with display, _StopFlag() as stop, (log if log is not None else contextlib.nullcontext()):
        if resume_from is not None:
            display.print(f"resumed from {resume_from} at step {step}")
        display.print(
            f"{cfg.stage}: {n_params / 1e6:.2f}M parameters ({n_train / 1e6:.2f}M trained) on {device} "
            f"[{precision.name}], {len(train_ds):,} train / {len(val_ds) if val_ds is not None else 0:,} val "
            f"examples, budget {budget.describe()}" + (f" ~{est_total_steps:,.0f} steps" if est_total_steps else "")
        )
        while True:
            # Under DDP every rank must take the same decisions, so they use the values agreed at the last step.
            elapsed = agreed_elapsed if dinfo.enabled else elapsed_before + (time.perf_counter() - t_start)
            if budget.progress(step, tokens, elapsed, sampler.epochs_done(cursor)) >= 1.0:
                break
            if stop_agreed if dinfo.enabled else stop.requested:
                stopped_by_user = True
                break
            # lr for this step: budget progress as it will be once this step is done.
            epochs_next = sampler.epochs_done(cursor) + cfg.grad_accum / sampler.batches_per_epoch
            lr = cfg.lr * schedule.factor(
                budget.progress(step + 1, tokens + nominal_step_tokens, elapsed, epochs_next), step)
            for g in optimizer.param_groups:
                g["lr"] = lr

            loss_sum = torch.zeros((), device=device)
            step_tokens = 0
            step_metrics: dict[str, Any] = {}
            for k in range(cfg.grad_accum):
                batch = next(batches)
                cursor = sampler.advance(cursor)
                step_tokens += objective.count_tokens(batch)
                batch = move_batch(batch, device)
                last_micro = k == cfg.grad_accum - 1
                # DDP all-reduces gradients on every backward unless told not to: only the last micro-step syncs.
                sync = loss_module.no_sync() if dinfo.enabled and not last_micro else contextlib.nullcontext()
                with sync:
                    with precision.autocast():
                        loss, metrics = loss_module(batch)
                    scaled = loss / cfg.grad_accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_sum += loss.detach().float()
                for name, v in metrics.items():
                    step_metrics[name] = step_metrics.get(name, 0.0) + (
                        v.detach().float() if isinstance(v, torch.Tensor) else float(v))

            # One collective per step keeps every rank agreeing on tokens, NaN skips, time and Ctrl-C.
            now_elapsed = elapsed_before + (time.perf_counter() - t_start)
            nonfinite = float(not torch.isfinite(loss_sum).item())
            shared = [float(step_tokens), nonfinite, now_elapsed if dinfo.main else 0.0, float(stop.requested)]
            if dinfo.enabled:
                t = torch.tensor(shared, dtype=torch.float64, device=device)
                dist.all_reduce(t)
                shared = t.tolist()
                agreed_elapsed, stop_agreed = shared[2], shared[3] > 0
            tokens += int(shared[0])

            if shared[1] > 0:
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                display.print(f"step {step + 1}: non-finite loss, skipping these batches ({bad_steps}/{MAX_BAD_STEPS})")
                if bad_steps >= MAX_BAD_STEPS:
                    raise RuntimeError(
                        f"{MAX_BAD_STEPS} optimizer steps in a row had a NaN/inf loss (last at step {step + 1}); "
                        "try a lower lr, dtype=fp32 or bf16 instead of fp16, or check the data. The last good "
                        f"checkpoint is in {ckpt_root}."
                    )
                continue
            bad_steps = 0
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            max_norm = cfg.grad_clip if cfg.grad_clip and cfg.grad_clip > 0 else math.inf
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            objective.on_optimizer_step(model)
            step += 1

            loss_value = loss_sum.item() / cfg.grad_accum
            smooth = loss_value if smooth is None else 0.9 * smooth + 0.1 * loss_value
            window["loss"] += loss_value
            window["grad_norm"] += grad_norm.detach().float()
            window["n"] += 1
            for name, v in step_metrics.items():
                window["metrics"][name] = window["metrics"].get(name, 0.0) + v
            window["tokens"] += int(shared[0])
            now = time.perf_counter()
            elapsed = elapsed_before + (now - t_start)
            progress = budget.progress(step, tokens, elapsed, sampler.epochs_done(cursor))
            tok_s = window["tokens"] / max(now - window["t"], 1e-9)
            display.update(step, round(est_total_steps) if est_total_steps else None, progress, smooth, lr, tok_s)

            if log is not None and step % max(1, cfg.log_every) == 0:
                n = window["n"]
                micro = n * cfg.grad_accum
                record = {"step": step, "tokens": tokens, "loss": window["loss"] / n, "lr": lr,
                          "grad_norm": _to_float(window["grad_norm"]) / n, "tokens_per_s": tok_s,
                          "elapsed_s": round(elapsed, 3), "epoch": round(sampler.epochs_done(cursor), 4)}
                record.update({k: _to_float(v) / micro for k, v in window["metrics"].items()})
                log.log(record)
                window = {"loss": 0.0, "grad_norm": 0.0, "n": 0, "tokens": 0, "t": now, "metrics": {}}

            if val_ds is not None and cfg.eval_every and step % cfg.eval_every == 0:
                if dinfo.main:
                    _log_eval(log, display, evaluate(model, objective, val_ds, cfg, precision, device),
                              step, tokens, elapsed)
                last_eval_step = step
            if cfg.save_every and step % cfg.save_every == 0:
                checkpoint(lr)
                last_save_step = step
            if on_step is not None:
                on_step({"step": step, "loss": loss_value, "lr": lr, "tokens": tokens, "progress": progress})

        if stopped_by_user:
            path = checkpoint(lr) if last_save_step != step else latest_checkpoint(ckpt_root)
            display.print(
                f"interrupted at step {step}; checkpoint in {path}. Resume with the same command plus "
                f"--resume (resume=true)."
            )
            return path if path is not None else ckpt_root

        elapsed = elapsed_before + (time.perf_counter() - t_start)
        if val_ds is not None and dinfo.main and last_eval_step != step:
            _log_eval(log, display, evaluate(model, objective, val_ds, cfg, precision, device), step, tokens, elapsed)
        if last_save_step != step:
            checkpoint(lr)
        if dinfo.main:
            objective.save(model, tokenizer, out)
            display.print(f"done: {step} steps, {tokens:,} tokens in {format_duration(elapsed)}; model saved to {out}")
        if dinfo.enabled:
            dist.barrier()
    return out


def _log_eval(log: MetricsLog | None, display: ProgressDisplay, result: dict, step: int, tokens: int,
              elapsed: float) -> None:
    display.print(f"step {step}: val_loss {result['val_loss']:.4f}  val_ppl {result['val_ppl']:.2f}")
    if log is not None:
        log.log({"step": step, "split": "val", "tokens": tokens, "elapsed_s": round(elapsed, 3), **result})

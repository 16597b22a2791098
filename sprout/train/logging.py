"""Run output for humans and tools: a progress bar, metrics.jsonl, and optional trackers.

metrics.jsonl gets one JSON object per logged step and one per evaluation (with "split": "val").
Trackers (tensorboard, wandb, swanlab) receive the same numbers; each is imported only when asked
for, so none of them is a dependency.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

_INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}


def _import_tracker(name: str):
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter
        if name == "wandb":
            import wandb

            return wandb
        import swanlab

        return swanlab
    except ImportError as e:
        raise SystemExit(
            f"tracker {name!r} is not installed ({e}); run: pip install {_INSTALL[name]}  (or drop it from trackers)"
        ) from None


def check_trackers(names: list[str]) -> None:
    """Fail at start-up, not after the data is tokenized, when a tracker is unknown or missing."""
    for name in names:
        if name not in _INSTALL:
            raise SystemExit(f"unknown tracker {name!r}; choose from {', '.join(_INSTALL)}")
        _import_tracker(name)


class MetricsLog:
    """Appends records to out/metrics.jsonl and forwards numeric fields to the trackers."""

    def __init__(self, out: Path, trackers: list[str], run_config: dict[str, Any], resume_step: int | None = None):
        self.path = out / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            # Drop records an interrupted run wrote after its last checkpoint: they are redone now.
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()  # a fresh run in a reused folder starts a fresh log
        self._file = open(self.path, "a", encoding="utf-8")
        self._trackers: list[tuple[str, Any]] = []
        check_trackers(trackers)
        for name in trackers:
            mod = _import_tracker(name)
            if name == "tensorboard":
                self._trackers.append((name, mod(log_dir=str(out / "tensorboard"))))
            elif name == "wandb":
                self._trackers.append(
                    (name, mod.init(project="sprout", name=out.name, dir=str(out), config=run_config, resume="allow"))
                )
            else:
                self._trackers.append(
                    (
                        name,
                        mod.init(
                            project="sprout", experiment_name=out.name, config=run_config, logdir=str(out / "swanlab")
                        ),
                    )
                )

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        step = int(record["step"])
        prefix = "val/" if record.get("split") == "val" else "train/"
        scalars = {
            prefix + k: float(v)
            for k, v in record.items()
            if k not in ("step", "split") and isinstance(v, (int, float)) and math.isfinite(v)
        }
        for name, t in self._trackers:
            if name == "tensorboard":
                for k, v in scalars.items():
                    t.add_scalar(k, v, step)
            else:
                t.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        for name, t in self._trackers:
            if name == "tensorboard":
                t.close()
            else:
                t.finish()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class ProgressDisplay:
    """A rich progress bar on a terminal; one plain line per `log_every` steps otherwise (CI, nohup)."""

    def __init__(self, enabled: bool, log_every: int):
        self.enabled = enabled
        self.log_every = max(1, log_every)
        self.console = Console(stderr=True)
        self.interactive = enabled and self.console.is_terminal
        self._bar: Progress | None = None
        self._task: TaskID | None = None  # set together with _bar
        self._t0 = time.perf_counter()
        self._p0: float | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.interactive:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[info]}"),
                console=self.console,
                transient=False,
            )
            self._task = self._bar.add_task("train", total=1000, info="")
            self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

    def eta(self, progress: float) -> float:
        """Seconds left, extrapolated from this session's speed along the binding budget."""
        if self._p0 is None:
            self._p0 = progress
            self._t0 = time.perf_counter()
        done = progress - self._p0
        if done <= 0:
            return math.inf
        # A time budget can overshoot 100% by part of a step: never show a negative ETA.
        return (time.perf_counter() - self._t0) / done * max(0.0, 1.0 - progress)

    def update(self, step: int, total: int | None, progress: float, loss: float, lr: float, tok_s: float) -> None:
        if not self.enabled:
            return
        eta = format_duration(self.eta(progress))
        head = f"step {step}" + (f"/{total}" if total else "")
        info = f"loss {loss:.4f}  lr {lr:.2e}  {tok_s:,.0f} tok/s  eta {eta}"
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=int(progress * 1000), description=head, info=info)
        elif step % self.log_every == 0:
            print(f"{head} ({min(progress, 1.0):.1%})  {info}", file=sys.stderr, flush=True)

    def print(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=sys.stderr, flush=True)

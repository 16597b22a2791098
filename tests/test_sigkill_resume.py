"""SIGKILL a training run again and again, at random moments and inside checkpoint saves; resume it
each time; the final weights must equal those of a run that was never interrupted, bit for bit.

Runs are child processes forked from a forkserver that has imported sprout once, so a restart costs
milliseconds instead of seconds of imports. A child logs events to a file (one short O_APPEND write
each, which a kill cannot tear): `step N` after each optimizer step (its checkpoint is already
written: on_step runs after saving) and `mid-save` from inside its n-th save when asked to stop
there: after the weights file is written and before the optimizer and trainer state are, where it
then waits to be killed.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path

from safetensors.torch import load_file

from sprout.train.checkpoint import latest_checkpoint

STEPS = 40  # enough that 12 kills (each after a few steps of progress) come before the end
KILLS = 12


def _cfg(data: Path, out: Path, resume: bool):
    from sprout.config import TrainConfig

    return TrainConfig(
        stage="pretrain",
        data=str(data),
        out=str(out),
        preset="tiny",
        seq_len=32,
        batch_size=4,
        max_steps=STEPS,
        save_every=1,
        eval_every=4,
        eval_batches=1,
        log_every=1,
        val_fraction=0.05,
        device="cpu",
        dtype="fp32",
        seed=7,
        resume=resume,
    )


def _child(data: str, out: str, resume: bool, events: str, hang_in_save: int | None) -> None:
    """One training run (in a forked process): the real engine; with hang_in_save=n its n-th save
    stops halfway (weights written, the rest not) until the parent kills it."""
    import torch

    from sprout.train import checkpoint as ckpt
    from sprout.train.engine import train

    torch.set_num_threads(1)
    fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    def emit(line: str) -> None:
        os.write(fd, (line + "\n").encode())

    write_weights = ckpt.save_safetensors_model
    saves = 0

    def weights_then_hang(model, filename, *a, **k):
        nonlocal saves
        write_weights(model, filename, *a, **k)
        saves += 1
        if saves == hang_in_save:
            emit("mid-save")
            time.sleep(120)  # the parent kills it here

    ckpt.save_safetensors_model = weights_then_hang
    train(_cfg(Path(data), Path(out), resume), on_step=lambda info: emit(f"step {info['step']}"))
    emit("done")


def _events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _after_step(k: int, delay: float):
    """A kill condition: `delay` seconds after the child reported its k-th step in this run. Counting
    steps first keeps each round's progress small on a fast machine too; the delay puts the kill at a
    random point of what follows (the next step, its save, an evaluation, logging)."""
    seen: list[float] = []

    def ready(events: list[str]) -> bool:
        if not seen and sum(e.startswith("step") for e in events) >= k:
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay

    return ready


def _run(
    ctx, data: Path, out: Path, events: Path, kill_when=None, hang_in_save: int | None = None, timeout: float = 120.0
) -> bool:
    """Start a child; kill it with SIGKILL once kill_when(events) is true. Returns True if it was killed."""
    events.unlink(missing_ok=True)
    resume = latest_checkpoint(out / "checkpoints") is not None
    p = ctx.Process(target=_child, args=(str(data), str(out), resume, str(events), hang_in_save))
    p.start()
    deadline = time.monotonic() + timeout
    killed = False
    while p.is_alive() and time.monotonic() < deadline:
        if kill_when is not None and kill_when(_events(events)):
            os.kill(p.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    p.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not p.is_alive(), "a training child hung"
    if killed:
        assert p.exitcode == -signal.SIGKILL
    else:
        assert p.exitcode == 0 and _events(events)[-1:] == ["done"], f"child failed with exit code {p.exitcode}"
    return killed


def test_sigkill_at_random_moments_and_inside_saves_then_resume_is_bit_identical(tmp_path: Path) -> None:
    data = tmp_path / "pre.jsonl"
    data.write_text(
        "".join(
            json.dumps({"text": f"policy {i} covers fire, flood and theft in zone {i % 7}."}) + "\n" for i in range(300)
        )
    )
    ctx = mp.get_context("forkserver")
    # torch._dynamo is imported lazily by the first optimizer step (seconds): import it once, here.
    ctx.set_forkserver_preload(
        [
            "sprout.train.engine",
            "sprout.train.objectives.lm",
            "sprout.data.tokenized",
            "sprout.tokenizer",
            "torch._dynamo",
        ]
    )

    ref = tmp_path / "reference"
    _run(ctx, data, ref, tmp_path / "ref.events")

    out = tmp_path / "killed"
    rng = random.Random(0)
    inside_save = kills = 0
    reached: list[int] = []
    while kills < KILLS:
        if kills % 2 == 0:
            # Inside a save: the second one this run (the first completed, so every round makes progress).
            killed = _run(ctx, data, out, tmp_path / "events", lambda ev: "mid-save" in ev, hang_in_save=2)
            if killed:
                assert any(p.name.startswith(".tmp-step_") for p in (out / "checkpoints").iterdir())
                inside_save += 1
        else:
            # At a random moment after 1-3 steps: inside a step, a save, an evaluation or logging.
            killed = _run(ctx, data, out, tmp_path / "events", _after_step(rng.randint(1, 3), rng.uniform(0, 0.1)))
        if not killed:
            break  # the run finished before the kill point came
        kills += 1
        reached.append(int(latest_checkpoint(out / "checkpoints").name.split("_")[1]))
    print(f"last complete checkpoint after each kill: {reached}")
    assert kills == KILLS and inside_save == KILLS // 2
    assert all(a < b for a, b in itertools.pairwise(reached))  # every resume made progress from the last one
    _run(ctx, data, out, tmp_path / "events")  # the last resume runs to the end

    ref_w, got_w = load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert ref_w.keys() == got_w.keys()
    for name in ref_w:
        assert ref_w[name].equal(got_w[name]), name
    steps = [
        json.loads(x)["step"]
        for x in (out / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in x and '"split"' not in x
    ]
    assert max(steps) == STEPS

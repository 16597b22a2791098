"""The engine under DDP: 2 CPU processes (gloo, torchrun) take the same steps and keep identical weights
under a time budget (each rank's own clock would end it at different steps, and the run would hang)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def _torchrun(out: Path, budget: dict) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "ddp_probe.py"),
        str(out),
        json.dumps(budget),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _checksums(out: Path, rank: int) -> list[float]:
    return [json.loads(line)["checksum"] for line in (out / f"rank{rank}.jsonl").read_text().splitlines()]


def test_two_ranks_take_the_same_steps_with_identical_weights(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _torchrun(out, {"max_steps": 40, "max_minutes": 0.04})  # whichever ends first, both ranks must agree on it
    r0, r1 = _checksums(out, 0), _checksums(out, 1)
    assert 1 <= len(r0) == len(r1) <= 40
    assert r0 == r1  # gradients were all-reduced: the same update on both ranks, bit for bit
    # the saved model is rank 0's weights after the last step
    saved = load_file(str(out / "model.safetensors"))
    assert sum(float(t.double().abs().sum()) for t in saved.values()) == pytest.approx(r0[-1], rel=1e-9)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if "loss" in x]
    assert steps and steps[-1] <= len(r0)

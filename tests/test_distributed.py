"""Data parallelism against one process: 2 gloo CPU processes with the same global batch (batch_size x processes
x grad_accum) take the same steps as one process, and a run moves 2 -> 1 -> 2 processes through --resume.

"Same" is up to floating-point summation order: the all-reduce averages two half-batch gradients where one
process averages the whole batch at once, so weights agree to ~1e-6, not bit for bit."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

HERE = Path(__file__).resolve().parent
GLOBAL = 8  # examples per micro-batch over all processes (grad_accum=2 on top)


def _launch(out: Path, nproc: int, expect_ok: bool = True, **options) -> str:
    """Run tests/ddp_probe.py on `nproc` processes; its output (it must exit 0 unless expect_ok=False)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    options = {"batch_size": GLOBAL // nproc, "max_steps": 12, "log_every": 1, **options}
    r = subprocess.run(
        [*launcher, str(HERE / "ddp_probe.py"), str(out), json.dumps(options)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (r.returncode == 0) == expect_ok, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr


def _records(out: Path, key: str) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def _assert_same_run(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6, msg=k)
    for key in ("loss", "val_loss"):
        ra, rb = _records(a, key), _records(b, key)
        assert ra.keys() == rb.keys() and ra
        for step in ra:
            assert abs(ra[step] - rb[step]) < 1e-5 * max(1.0, abs(ra[step])), (key, step, ra[step], rb[step])


def test_ddp_gives_the_losses_and_weights_of_one_process(tmp_path: Path) -> None:
    _launch(tmp_path / "one", 1)
    _launch(tmp_path / "ddp", 2)
    _assert_same_run(tmp_path / "one", tmp_path / "ddp")


def test_resume_moves_from_two_processes_to_one_and_back(tmp_path: Path) -> None:
    _launch(tmp_path / "ref", 1)
    run = tmp_path / "moved"
    _launch(run, 2, stop_at=3, save_every=100)  # Ctrl-C: stops (and checkpoints) at the step all ranks agree on
    first = max(_records(run, "loss"))
    _launch(run, 1, stop_at=first + 3, save_every=100, resume=True)
    second = max(_records(run, "loss"))
    assert first < second < 12
    _launch(run, 2, resume=True)
    _assert_same_run(tmp_path / "ref", run)


def test_fsdp2_gives_the_losses_and_weights_of_one_process_and_resumes(tmp_path: Path) -> None:
    _launch(tmp_path / "one", 1)
    run = tmp_path / "fsdp"
    _launch(run, 2, distributed="fsdp", stop_at=5, save_every=100)  # sharded checkpoint written on Ctrl-C
    assert max(_records(run, "loss")) < 12
    # the sharded path wrote it: optimizer state gathered and keyed by parameter name (DDP's is keyed by index)
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)["state"]
    name = "model.layers.0.mlp.down_proj.weight"
    assert name in state and "exp_avg_sq" in state[name]
    _launch(run, 2, distributed="fsdp", resume=True)
    _assert_same_run(tmp_path / "one", run)


NAN_AT = 7  # the first micro-batch of step 4 has a NaN loss: that step is skipped (and counted)


@pytest.fixture(scope="module")
def one_process_with_a_nan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    _launch(out, 1, nan_at=NAN_AT)
    return out


@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed (pip install 'sprout[deepspeed]')"
)
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_gives_the_losses_and_weights_of_one_process_and_resumes(
    tmp_path: Path, one_process_with_a_nan: Path, stage: int
) -> None:
    """DeepSpeed's engine (our AdamW groups, its ZeRO partitions, clipping and step) on 2 gloo processes, with a
    NaN loss that DeepSpeed must skip, stopped at step 5 and resumed from its sharded checkpoint, ends where one
    process without DeepSpeed does; the final folder (weights consolidated from the shards) loads in stock
    transformers."""
    run = tmp_path / f"zero{stage}"
    options = {"distributed": "deepspeed", "zero_stage": stage}
    _launch(run, 2, stop_at=5, save_every=100, nan_at=NAN_AT, **options)  # Ctrl-C: DeepSpeed's shards saved
    assert max(_records(run, "loss")) < 12
    assert _records(run, "skipped_steps")[5] == _records(one_process_with_a_nan, "skipped_steps")[5] == 1
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    # every rank wrote its partition of the optimizer state; optimizer.pt is only a marker
    assert len(list((ckpt / "deepspeed" / "zero").glob("*optim_states.pt"))) == 2
    assert torch.load(ckpt / "optimizer.pt", weights_only=True) == {"deepspeed": {"zero_stage": stage, "world": 2}}
    # the partitions belong to 2 ranks: one process refuses them with advice
    refused = _launch(run, 1, expect_ok=False, resume=True, **options)
    assert f"checkpoint {ckpt} was written with distributed=deepspeed; resume it the same way" in refused
    _launch(run, 2, resume=True, **options)
    _assert_same_run(one_process_with_a_nan, run)
    hf = AutoModelForCausalLM.from_pretrained(run)
    saved = load_file(str(run / "model.safetensors"))
    torch.testing.assert_close(hf.lm_head.weight, saved["model.embed_tokens.weight"])  # tied, as saved

"""`sprout bench train`: training throughput (tokens/s), model FLOP/s and MFU of a preset at each precision.

Speed goals live here, not in tests: the numbers depend on the machine. Results are printed as a
markdown table to paste into docs/BENCHMARKS.md together with the machine and the command.

The step is the training engine's: the pretraining objective's loss (so `ce_chunk` takes the chunked path), the
engine's optimizer (`optimizer=adamw|muon`), `grad_checkpoint` and `compile` applied as the engine applies them,
all read from a TrainConfig built from the flags. Model FLOPs exclude the forward that grad_checkpoint recomputes
(the usual MFU convention), so its MFU drops by what the recompute costs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, cast

from ..config import TrainConfig
from .common import fmt_rate, machine, peak_memory_bytes, peaks, print_json_last, train_flops_per_token

OPTIONS = ("ce_chunk", "optimizer", "grad_checkpoint", "compile")  # reported in every row


def bench_config(
    preset: str,
    seq_len: int,
    batch_size: int,
    device: str = "auto",
    ce_chunk: int = 0,
    optimizer: str = "adamw",
    grad_checkpoint: bool = False,
    compile: bool = False,
) -> TrainConfig:
    """The TrainConfig the benchmark's steps read (the dtype is set per row)."""
    return TrainConfig(
        stage="pretrain",
        preset=preset,
        seq_len=seq_len,
        batch_size=batch_size,
        device=device,
        ce_chunk=ce_chunk,
        optimizer=optimizer,
        grad_checkpoint=grad_checkpoint,
        compile=compile,
        lr=1e-3,
    )


def bench_train(cfg: TrainConfig, dtypes: list[str], steps: int) -> list[dict]:
    import torch

    from ..models import build_model, model_preset
    from ..train.device import select_device, select_precision
    from ..train.objectives import build_objective
    from ..train.optim import build_optimizer

    dev = select_device(cfg.device)
    pk = peaks(dev)
    rows = []
    for dtype in dtypes:
        torch.manual_seed(0)
        mcfg = model_preset(cfg.preset)
        model = build_model(mcfg).to(dev)
        model.train()
        cast(Any, model).gradient_checkpointing = cfg.grad_checkpoint  # as the engine sets it
        if cfg.compile:  # as the engine does, on every device
            cast(Any, model).forward = torch.compile(model.forward)
        objective = build_objective(dataclasses.replace(cfg, dtype=dtype))
        precision = select_precision(dev, dtype)
        opt = build_optimizer(
            model, cfg.lr, cfg.weight_decay, cfg.betas, dev, model.named_parameters(), cfg.optimizer, cfg.muon_lr
        )
        x = torch.randint(0, mcfg.vocab_size, (cfg.batch_size, cfg.seq_len + 1), device=dev)
        batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
        for i in range(steps + 1):
            if i == 1:  # step 0 warms up allocators and kernels (and compiles)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            with precision.autocast():
                loss, _ = objective.loss(model, batch)  # fp32 cross-entropy, chunked when ce_chunk > 0
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
        tps = cfg.batch_size * cfg.seq_len / dt
        flops = tps * train_flops_per_token(model, cfg.seq_len)
        peak = pk["peak_fp32_flops"] if precision.name == "fp32" else pk["peak_bf16_flops"]
        rows.append(
            {
                "preset": cfg.preset,
                "dtype": precision.name,
                "device": str(dev),
                "seq_len": cfg.seq_len,
                "batch_size": cfg.batch_size,
                **{k: getattr(cfg, k) for k in OPTIONS},
                "tokens_per_s": tps,
                "step_s": dt,
                "model_flops_per_s": flops,
                "mfu": flops / peak,
                "peak_flops": peak,
                "peak_source": pk["peak_source"],
                "peak_memory_bytes": peak_memory_bytes(dev),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    m = machine()
    print(f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, load average {m.get('load_avg_1m')}")
    print("| preset | device | precision | options | seq_len × batch | step (s) | tokens/s | model FLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['device']} | {r['dtype']} | {_options(r)} | {r['seq_len']} × {r['batch_size']} "
            f"| {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {fmt_rate(r['model_flops_per_s'])} "
            f"| {r['mfu']:.0%} of {r['peak_source']} |"
        )
    print_json_last({"bench": "train", "machine": m, "rows": rows})


def _options(row: dict) -> str:
    """The training options that differ from the defaults, as key=value (or `-`)."""
    default = TrainConfig()
    changed = [f"{k}={row[k]}" for k in OPTIONS if row[k] != getattr(default, k)]
    return " ".join(changed) or "-"

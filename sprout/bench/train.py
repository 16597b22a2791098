"""`sprout bench train`: training throughput (tokens/s), model FLOP/s and MFU of a preset at each precision.

Speed goals live here, not in tests: the numbers depend on the machine. Results are printed as a
markdown table to paste into docs/BENCHMARKS.md together with the machine and the command.

The step is the training engine's: the pretraining objective's loss (so `ce_chunk` takes the chunked path), the
engine's optimizer (`optimizer=adamw|muon`), `grad_checkpoint` and `compile` applied as the engine applies them,
all read from a TrainConfig built from the flags. `data` chooses the tokens: random ids ("synthetic", one batch
reused), or real text ("builtin", or a .jsonl file / data folder of pretraining records) tokenised with sprout's
tokenizer and packed back to back as the engine packs it, a fresh batch every step; tokens/s counts only positions
with a target, so it is real tokens/s whatever the data. Model FLOPs exclude the forward that grad_checkpoint recomputes
(the usual MFU convention), so its MFU drops by what the recompute costs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, cast

from ..config import TrainConfig
from ..errors import UserError
from .common import (
    best_peaks,
    corpus_texts,
    fmt_rate,
    machine,
    peak_memory_bytes,
    peaks,
    print_json_last,
    train_flops_per_token,
)

if TYPE_CHECKING:
    import torch

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
    skip_invalid: bool = False,
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
        skip_invalid=skip_invalid,
        lr=1e-3,
    )


def make_batches(
    data: str, vocab_size: int, batch_size: int, seq_len: int, n: int, skip_invalid: bool = False
) -> list[dict[str, torch.Tensor]]:
    """n training batches of [batch_size, seq_len]: one of random ids reused n times ("synthetic"), or n distinct
    batches of real text cut from documents packed back to back with their separators (every position real)."""
    import torch

    if data == "synthetic":
        x = torch.randint(0, vocab_size, (batch_size, seq_len + 1))
        return [{"input_ids": x[:, :-1], "labels": x[:, 1:]}] * n
    from ..tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    if tok.vocab_size > vocab_size:
        raise UserError(
            f"sprout's tokenizer has {tok.vocab_size} tokens, more than this preset's vocab_size {vocab_size}",
            advice="use a preset with vocab_size >= 6400, or --data synthetic",
        )
    need = n * batch_size * (seq_len + 1)
    stream: list[int] = []
    for text in corpus_texts(data, skip_invalid):
        stream += tok.encode(text)
        stream.append(tok.doc_sep_id)
        if len(stream) >= need:
            break
    else:
        raise UserError(
            f"{len(stream):,} tokens of text, fewer than the {need:,} that {n} batches of "
            f"{batch_size} x {seq_len + 1} need",
            file=data,
            advice="give more text, or fewer --steps, a smaller --batch-size or --seq-len",
        )
    x = torch.tensor(stream[:need]).view(n, batch_size, seq_len + 1)
    return [{"input_ids": b[:, :-1], "labels": b[:, 1:]} for b in x]


def bench_train(cfg: TrainConfig, dtypes: list[str], steps: int, data: str = "synthetic") -> list[dict]:
    import torch

    from ..data.datasets import IGNORE_INDEX
    from ..models import build_model, model_preset
    from ..train.device import select_device, select_precision
    from ..train.objectives import build_objective
    from ..train.optim import build_optimizer

    dev = select_device(cfg.device)
    pk_before = peaks(dev)
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
        batches = [
            {k: t.to(dev) for k, t in b.items()}
            for b in make_batches(data, mcfg.vocab_size, cfg.batch_size, cfg.seq_len, steps + 1, cfg.skip_invalid)
        ]
        real = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches[1:])  # the timed steps' targets
        for i, batch in enumerate(batches):
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
        tps = real / steps / dt
        flops = tps * train_flops_per_token(model, cfg.seq_len)
        rows.append(
            {
                "preset": cfg.preset,
                "data": data,
                "dtype": precision.name,
                "device": str(dev),
                "seq_len": cfg.seq_len,
                "batch_size": cfg.batch_size,
                **{k: getattr(cfg, k) for k in OPTIONS},
                "tokens_per_s": tps,
                "step_s": dt,
                "model_flops_per_s": flops,
                "peak_memory_bytes": peak_memory_bytes(dev),
            }
        )
    pk = best_peaks(pk_before, peaks(dev))  # measured again after the steps: MFU against the higher
    for r in rows:
        r["peak_flops"] = pk["peak_fp32_flops"] if r["dtype"] == "fp32" else pk["peak_bf16_flops"]
        r.update(mfu=r["model_flops_per_s"] / r["peak_flops"], peak_source=pk["peak_source"])
        r["peak_spread"] = pk["peak_spread"]
    return rows


def print_table(rows: list[dict]) -> None:
    m = machine()
    print(f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, load average {m.get('load_avg_1m')}")
    print(
        "| preset | data | device | precision | options | seq_len × batch "
        "| step (s) | real tokens/s | model FLOP/s | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['data']} | {r['device']} | {r['dtype']} | {_options(r)} "
            f"| {r['seq_len']} × {r['batch_size']} "
            f"| {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {fmt_rate(r['model_flops_per_s'])} "
            f"| {r['mfu']:.0%} of {r['peak_source']} |"
        )
    if rows and rows[0]["peak_spread"] > 0.15:
        print(
            f"note: the measured peak moved {rows[0]['peak_spread']:.0%} between the measurements before and after "
            "the steps, so the machine was not quiet; MFU is against the higher one"
        )
    print_json_last({"bench": "train", "machine": m, "rows": rows})


def _options(row: dict) -> str:
    """The training options that differ from the defaults, as key=value (or `-`)."""
    default = TrainConfig()
    changed = [f"{k}={row[k]}" for k in OPTIONS if row[k] != getattr(default, k)]
    return " ".join(changed) or "-"

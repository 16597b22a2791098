"""`sprout bench train`: training throughput (tokens/s), model FLOP/s and MFU of a preset at each precision.

Speed goals live here, not in tests: the numbers depend on the machine. Results are printed as a
markdown table to paste into docs/BENCHMARKS.md together with the machine and the command.
"""

from __future__ import annotations

import time

from .common import fmt_rate, machine, peak_memory_bytes, peaks, print_json_last, train_flops_per_token


def bench_train(
    preset: str, dtypes: list[str], seq_len: int, batch_size: int, steps: int, device: str = "auto"
) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from ..models import build_model, model_preset
    from ..train.device import select_device, select_precision
    from ..train.optim import build_optimizer

    dev = select_device(device)
    pk = peaks(dev)
    rows = []
    for dtype in dtypes:
        torch.manual_seed(0)
        cfg = model_preset(preset)
        model = build_model(cfg).to(dev)
        precision = select_precision(dev, dtype)
        opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), dev, model.named_parameters())
        x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), device=dev)
        for i in range(steps + 1):
            if i == 1:  # step 0 warms up allocators and kernels
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
            with precision.autocast():
                logits = model(x[:, :-1]).logits  # the training objectives' loss: fp32 cross-entropy
                loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / steps
        tps = batch_size * seq_len / dt
        flops = tps * train_flops_per_token(model, seq_len)
        peak = pk["peak_fp32_flops"] if precision.name == "fp32" else pk["peak_bf16_flops"]
        rows.append(
            {
                "preset": preset,
                "dtype": precision.name,
                "device": str(dev),
                "seq_len": seq_len,
                "batch_size": batch_size,
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
    print("| preset | device | precision | seq_len × batch | step (s) | tokens/s | model FLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['device']} | {r['dtype']} | {r['seq_len']} × {r['batch_size']} "
            f"| {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | {fmt_rate(r['model_flops_per_s'])} "
            f"| {r['mfu']:.0%} of {r['peak_source']} |"
        )
    print_json_last({"bench": "train", "machine": m, "rows": rows})

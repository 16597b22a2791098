"""What every `sprout bench` verb shares: the machine, its peak throughputs, model FLOPs per token, MFU.

Peaks. On a CPU nothing published is trustworthy (turbo, shared cores, AVX-512 down-clocking), so the peak is
*measured* here: the best of a few large matmuls (fp32 and bf16: the compute ceiling) and a large fp32 matvec
(every weight byte read once per 2 FLOPs: the memory-bandwidth ceiling that batch-1 decoding lives under). On a
GPU the table below holds the vendors' dense (no sparsity) tensor-core numbers.

FLOPs per token (N = weights that enter a matmul: every Linear, lm_head included, the embedding lookup not):
    training  6·N + 12·L·d_attn·T     (forward 2N, backward 4N; attention scores and mixing, context T)
    decoding  2·N +  4·L·d_attn·t     (one forward at context t; QKᵀ and AV are 2·d_attn·t FLOPs each)
with L layers and d_attn = heads × head_dim. MFU = achieved model FLOP/s ÷ peak FLOP/s.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn

from ..models.config import ModelConfig

# Dense peaks: (bf16 tensor FLOP/s, fp32 FLOP/s without TF32, memory bandwidth B/s), from the vendors' sheets.
GPU_PEAKS: dict[str, tuple[float, float, float]] = {
    "3090": (71e12, 35.6e12, 936e9),
    "4090": (165.2e12, 82.6e12, 1008e9),
    "A100": (312e12, 19.5e12, 2039e9),  # SXM 80 GB
    "H100": (989e12, 67e12, 3350e9),  # SXM
    "H200": (989e12, 67e12, 4800e9),
}


def corpus_texts(kind: str, skip_invalid: bool = False) -> Iterator[str]:
    """Real text for a benchmark: the built-in pretraining corpus ("builtin") or the `text` of every record in a
    .jsonl file or data folder (the pretraining reader, so its errors name file and line; `skip_invalid` skips
    malformed records instead, as training does)."""
    if kind == "builtin":
        from ..data.builtin import pretrain_texts

        yield from pretrain_texts()
        return
    from ..data.readers import read_records

    yield from (r["text"] for r in read_records(kind, "pretrain", skip_invalid=skip_invalid))


def machine() -> dict:
    """A one-line description of where the numbers came from."""
    d: dict[str, object] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    d["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name()
    try:
        d["load_avg_1m"] = round(os.getloadavg()[0], 2)  # > cores means the machine was shared
    except OSError:
        pass
    return d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_time(fn, device: torch.device, reps: int) -> float:
    fn()  # warm-up: allocators, kernels, thread pools
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peaks(device: torch.device, n: int = 2048, reps: int = 5) -> dict:
    """Measured matmul FLOP/s (fp32, bf16) and matvec bandwidth (B/s) on this device (best of `reps`)."""
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device, dtype=dt)
        b = torch.randn(n, n, device=device, dtype=dt)
        out[f"matmul_{name}_flops"] = 2 * n**3 / _best_time(lambda a=a, b=b: a @ b, device, reps)
    # 256 MB of fp32 weights: far larger than any cache, so the matvec streams it from memory.
    rows = (256 << 20) // 4 // 4096
    w = torch.randn(rows, 4096, device=device)
    x = torch.randn(4096, device=device)
    out["bandwidth_Bps"] = w.numel() * 4 / _best_time(lambda: w @ x, device, reps)
    return out


def peaks(device: torch.device, measure: bool = True) -> dict:
    """Peaks for MFU: published ones for a known GPU (plus measured, when asked), measured ones otherwise."""
    got = measure_peaks(device) if measure else {}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (bf16, fp32, bw) in GPU_PEAKS.items():
            if key in name:
                got.update(peak_bf16_flops=bf16, peak_fp32_flops=fp32, peak_bandwidth_Bps=bw, peak_source=key)
                return got
    got.update(
        peak_bf16_flops=got.get("matmul_bf16_flops"),
        peak_fp32_flops=got.get("matmul_fp32_flops"),
        peak_bandwidth_Bps=got.get("bandwidth_Bps"),
        peak_source="measured",
    )
    return got


def best_peaks(before: dict, after: dict) -> dict:
    """The higher of two measurements of each measured peak (taken before and after a benchmark), with how far
    they were apart: on a shared CPU one measurement can land in a slow moment and halve every MFU."""
    out = dict(after)
    spread = 0.0
    for key in ("peak_bf16_flops", "peak_fp32_flops", "peak_bandwidth_Bps"):
        a, b = before.get(key), after.get(key)
        if a and b and before.get("peak_source") == "measured":
            out[key] = max(a, b)
            spread = max(spread, 1 - min(a, b) / max(a, b))
    out["peak_spread"] = spread
    return out


def matmul_params(model: nn.Module) -> int:
    """Weights that enter a matmul once per token: every Linear (lm_head included; a tied embedding counts
    once, as the head). MoE counts every expert, which overstates FLOPs by the unrouted experts."""
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel()
    return n


def _attn_width(model: nn.Module) -> tuple[int, int]:
    c = cast(ModelConfig, model.config)
    assert c.head_dim is not None  # filled in by the config from hidden_size / heads when not given
    return c.num_hidden_layers, c.num_attention_heads * c.head_dim


def train_flops_per_token(model: nn.Module, seq_len: int) -> float:
    L, d = _attn_width(model)
    return 6 * matmul_params(model) + 12 * L * d * seq_len


def decode_flops_per_token(model: nn.Module, context: float) -> float:
    L, d = _attn_width(model)
    return 2 * matmul_params(model) + 4 * L * d * context


def weight_bytes(model: nn.Module) -> int:
    """Bytes read per decoding step at batch 1: the matmul weights (the cache read is small next to them)."""
    seen, n = set(), 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and id(m.weight) not in seen:
            seen.add(id(m.weight))
            n += m.weight.numel() * m.weight.element_size()
    return n


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA's allocator peak on a GPU, the resident-set peak on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def print_json_last(result: dict) -> None:
    """The machine-readable result: always the last line of output, one JSON object."""
    print(json.dumps(result, default=float))


def fmt_rate(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} "

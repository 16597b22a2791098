"""Device and precision selection: every device-specific decision of training lives here.

    device "auto": cuda > mps > cpu
    dtype  "auto": bf16 autocast on CUDA when the GPU supports it, else fp16 autocast + GradScaler;
                   fp32 on CPU and MPS (their low-precision kernels are often slower or less exact).
    dtype  "fast": like auto, but bf16 autocast also on CPUs that compute bf16 natively
                   (AVX512-BF16 or AMX: ~1.8x faster training on a 2-core EPYC), fp32 on other CPUs.
    explicit "fp32" | "bf16" | "fp16" is honoured (bf16 autocast also works on CPU).

Weights and optimizer state stay fp32 in every mode; autocast only lowers the precision of
the matmuls, so checkpoints are identical in layout whatever the precision.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def select_device(name: str = "auto") -> torch.device:
    """Resolve "auto" to the best available accelerator; under torchrun pick this rank's GPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device=cuda was requested but CUDA is not available (use device=auto or cpu)")
    return device


@dataclass(frozen=True)
class Precision:
    """How the forward pass runs: `autocast()` wraps it, `scaler` (fp16 only) wraps backward/step."""

    device: torch.device
    name: str  # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None  # None = plain fp32

    @property
    def needs_scaler(self) -> bool:
        # fp16 has a narrow exponent range: small gradients underflow unless the loss is scaled.
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.needs_scaler else None


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions; without them bf16 is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:  # not Linux: be conservative
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_precision(device: torch.device, dtype: str = "auto") -> Precision:
    if dtype == "fast":
        dtype = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "auto"
    if dtype == "auto":
        if device.type == "cuda":
            dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            dtype = "fp32"
    if dtype not in _DTYPES:
        raise SystemExit(f"dtype must be one of auto, fast, {', '.join(_DTYPES)}; got {dtype!r}")
    if dtype == "fp16" and device.type == "cpu":
        raise SystemExit("dtype=fp16 is not supported on CPU; use bf16 or fp32")
    return Precision(device, dtype, None if dtype == "fp32" else _DTYPES[dtype])


def configure_backend(device: torch.device, num_threads: int | None) -> None:
    """Process-wide settings: CPU thread count, TF32 matmuls on CUDA (fp32 runs get tensor cores)."""
    if num_threads:
        torch.set_num_threads(num_threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

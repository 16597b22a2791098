"""Key/value cache for incremental decoding.

Keys and values of past positions are kept in preallocated tensors so each new token costs
one attention row instead of a full forward pass over the prefix.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, max_len: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (batch, num_kv_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.length = 0  # positions filled (same for every row; padding is handled by the mask)
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's k/v ([B, H, T, D]) for `layer`; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full ({self.max_len} positions); raise max_len")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Called by the model once every layer has written its `n` new positions."""
        self.length += n

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. after some sequences finished)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]

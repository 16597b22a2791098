"""The cache protocol: what generation, chat, eval and the server may do with a model's decoding cache.

Every family's cache (dense KV, MLA latent, hybrid conv + recurrent state + KV) is a `Cache`. A cache holds,
per layer, two kinds of tensors, batch rows first:

* column tensors: one column per cached position (keys/values, MLA latents). All rows have the same number of
  columns, `length`; a row that is shorter is left-padded with columns that the attention mask hides.
* state tensors: one fixed-size summary per row (the conv window and delta-rule state of a linear-attention
  layer). They have no columns: left-padding a row, or trimming columns, leaves them alone.

Continuous batching needs, between two forward passes:
    concat(other)     add rows (another cache of the same length)
    select_rows(idx)  remove rows (keep those listed)
    left_pad(n)       insert n hidden columns at the left, so rows of different lengths line up when merged
    drop_left(n)      trim n columns at the left that every row no longer needs
    reserve(n)        make room for n more columns (columns also grow on demand)
Moving a column is free because RoPE is applied before a key is cached: its position travels in the key.

The model writes into the cache during forward (`update` methods of the concrete classes) and calls
`advance(T)` once every layer has written its T new columns.
"""

from __future__ import annotations

import torch

GROW = 128  # columns added at a time when a cache runs out of room


class Cache:
    """Per-layer column tensors (time at dim `time_dim[name]`) and per-row state tensors, by name and layer."""

    time_dim: dict[str, int] = {}  # column tensor name -> the dim that holds positions

    def __init__(self, columns: dict[str, dict[int, torch.Tensor]], states: dict[str, dict[int, torch.Tensor]]):
        self.columns, self.states = columns, states
        self.length = 0  # columns filled (the same for every row)

    # ---- what the model calls ---------------------------------------------------------------------
    def write(self, name: str, layer: int, new: torch.Tensor) -> torch.Tensor:
        """Store `new` (its columns along time_dim) after the filled ones; return all columns so far."""
        d = self.time_dim[name]
        start, end = self.length, self.length + new.shape[d]
        self._room(end)
        t = self.columns[name][layer]
        t.narrow(d, start, end - start).copy_(new)
        return t.narrow(d, 0, end)

    def advance(self, n: int) -> None:
        """Called by the model once every layer has written its `n` new columns."""
        self.length += n

    # ---- what batching calls ----------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        for group in (*self.columns.values(), *self.states.values()):
            for t in group.values():
                return t.shape[0]
        return 0

    @property
    def capacity(self) -> int:
        for name, group in self.columns.items():
            for t in group.values():
                return t.shape[self.time_dim[name]]
        return 1 << 62  # state only: no columns to run out of

    def reserve(self, n: int) -> None:
        """Make room for n more columns."""
        self._room(self.length + n)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (e.g. after some sequences finished)."""
        self._map(lambda name, t: t[rows], lambda t: t[rows])

    def concat(self, other: Cache) -> None:
        """Append other's rows below ours. Both must hold the same number of columns (left_pad the shorter)."""
        if type(other) is not type(self) or other.length != self.length:
            raise ValueError(
                f"concat needs two {type(self).__name__}s of equal length, got "
                f"{type(other).__name__} with {other.length} columns and {self.length}"
            )
        for name, group in self.columns.items():
            d = self.time_dim[name]
            for i, t in group.items():
                o = other.columns[name][i]
                group[i] = torch.cat([t.narrow(d, 0, self.length), o.narrow(d, 0, self.length)], 0)
        for name, sgroup in self.states.items():
            for i, t in sgroup.items():
                sgroup[i] = torch.cat([t, other.states[name][i]], 0)

    def left_pad(self, n: int) -> None:
        """Insert n zero columns at the left of every row; the caller's attention mask must hide them.
        State tensors are untouched: the padding is never fed through the recurrence."""
        if n <= 0:
            return

        def pad(name: str, t: torch.Tensor) -> torch.Tensor:
            d = self.time_dim[name]
            shape = list(t.shape)
            shape[d] = n
            return torch.cat([t.new_zeros(shape), t.narrow(d, 0, self.length)], d)

        self._map(pad, lambda t: t)
        self.length += n

    def drop_left(self, n: int) -> None:
        """Remove the n leftmost columns (padding that no remaining row needs)."""
        if n <= 0:
            return
        if n > self.length:
            raise ValueError(f"cannot drop {n} columns from a cache holding {self.length}")
        self._map(lambda name, t: t.narrow(self.time_dim[name], n, t.shape[self.time_dim[name]] - n), lambda t: t)
        self.length -= n

    # ---- helpers ------------------------------------------------------------------------------------
    def _map(self, on_columns, on_states) -> None:
        for name, group in self.columns.items():
            for i in group:
                group[i] = on_columns(name, group[i])
        for sgroup in self.states.values():
            for i in sgroup:
                sgroup[i] = on_states(sgroup[i])

    def _room(self, end: int) -> None:
        """Grow every column tensor to at least `end` columns (GROW at a time, keeping the filled ones)."""
        if end <= self.capacity:
            return
        extra = max(GROW, end - self.capacity)

        def grow(name: str, t: torch.Tensor) -> torch.Tensor:
            d = self.time_dim[name]
            shape = list(t.shape)
            shape[d] = t.shape[d] + extra
            out = t.new_zeros(shape)
            out.narrow(d, 0, self.length).copy_(t.narrow(d, 0, self.length))
            return out

        self._map(grow, lambda t: t)


class KVCache(Cache):
    """Dense attention: keys and values [B, H_kv, S, D] per layer (all layers, or those listed in `layers`)."""

    time_dim = {"k": 2, "v": 2}

    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
        layers: list[int] | None = None,
        states: dict[str, dict[int, torch.Tensor]] | None = None,
    ):
        shape = (batch, num_kv_heads, max_len, head_dim)
        ids = list(range(num_layers)) if layers is None else layers
        columns = {n: {i: torch.zeros(shape, device=device, dtype=dtype) for i in ids} for n in ("k", "v")}
        super().__init__(columns, states or {})

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's k/v ([B, H, T, D]) for `layer`; return all keys/values so far."""
        return self.write("k", layer, k), self.write("v", layer, v)

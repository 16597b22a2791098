"""Continuous batching: one background thread decodes every running request together.

Each request owns one row of a shared, left-padded cache that the model made (`model.new_cache`); the loop
uses only the cache protocol of sprout.models.cache (concat, select_rows, left_pad, drop_left, reserve), so
every family is served the same way: dense KV, MLA latents, or conv + recurrent state. The scheduler loop,
once per tick:

1. admits waiting requests (up to `max_batch` rows), prefills their prompts in one forward pass
   (left-padded among themselves) and samples their first token;
2. merges the new rows into the running batch: the shorter side is left-padded with masked
   columns so every row ends at the same cache column (RoPE is applied before keys are cached,
   so a key's position lives in the key itself, not in its column — moving it is free; a
   recurrent state has no columns and is not touched);
3. runs one decode step for all rows: one token per row, per-row sampling settings;
4. drops rows that finished (stop token, max tokens, context end), were cancelled (client gone,
   stop string found) or ran past their deadline, and trims cache columns that are padding for
   every remaining row.

The engine thread only produces token ids (`emit` hands each one to the request's own queue); turning them
into text, stop strings, tool calls and SSE chunks happens on the HTTP side, off the decode critical path. A
decode step allocates nothing per token: the attention mask has spare columns that are already 1 (the step
passes a view one column longer), and rows without a penalty keep no token history.

A row's tokens therefore do not depend on which other requests share its batch (greedy gives
the same tokens as decoding alone; tested).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..models.cache import GROW, Cache
from .generate import SamplingConfig, sample_next

if TYPE_CHECKING:
    from ..models.dense import SproutForCausalLM

log = logging.getLogger("sprout.serve")


@dataclass
class GenRequest:
    """One generation job. `emit` is called from the engine thread: emit(token) for each new token,
    then exactly once emit(None, finish_reason) with reason in stop|length|cancelled|timeout|error."""

    prompt: list[int]
    sampling: SamplingConfig
    emit: Callable[..., None]
    deadline: float | None = None  # time.monotonic() after which the request is abandoned
    cancelled: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def cancel(self) -> None:
        self.cancelled.set()


def require_cache_protocol(model: nn.Module, name: str = "model") -> None:
    """Fail at load time, with a clear message, when a model's cache cannot do what continuous batching needs
    (add, remove, left-pad and trim rows: sprout.models.cache.Cache), instead of a 500 in the middle of a request."""
    new_cache = getattr(model, "new_cache", None)
    cache = new_cache(1, 1) if callable(new_cache) else None
    if not isinstance(cache, Cache):
        kind = type(cache).__name__ if cache is not None else "no new_cache()"
        raise ValueError(
            f"{name}: {type(model).__name__} cannot be served with continuous batching: its cache "
            f"({kind}) does not implement sprout.models.cache.Cache"
        )


@dataclass
class _Row:
    req: GenRequest
    gen: torch.Generator | None
    seen: torch.Tensor | None  # [V] bool, for the repetition penalty (None: the row has no penalty)
    counts: torch.Tensor | None  # [V] float, tokens generated so far, for frequency/presence penalties
    generated: int = 0
    max_new: int = 0
    stops: frozenset = frozenset()

    @property
    def greedy(self) -> bool:
        return self.req.sampling.temperature <= 0 and self.seen is None


class BatchEngine:
    """Owns one model and a scheduler thread. `submit` is thread-safe and returns at once."""

    def __init__(
        self, model: SproutForCausalLM, max_batch: int = 32, context_len: int | None = None, name: str = "model"
    ):
        require_cache_protocol(model, name)
        self.model, self.max_batch, self.name = model, max_batch, name
        self.device = next(model.parameters()).device
        self.context_len = context_len or model.config.max_position_embeddings
        self.pad = model.config.pad_token_id
        self._waiting: deque[GenRequest] = deque()
        self._cv = threading.Condition()
        self._rows: list[_Row] = []
        self._cache: Cache | None = None
        # [B, W >= cache length] 1 = real token; columns past the cache length are spare and already 1
        self._mask: torch.Tensor | None = None
        self._pos: torch.Tensor | None = None  # [B] position of the next token
        self._last: torch.Tensor | None = None  # [B] last sampled token
        self._stop = False
        self.steps = 0  # decode steps run (for tests / stats)
        self.max_rows_seen = 0  # largest batch decoded together
        self._thread = threading.Thread(target=self._loop, name=f"sprout-engine-{name}", daemon=True)
        self._thread.start()

    # -- public API -------------------------------------------------------------------------------
    def submit(self, req: GenRequest) -> None:
        with self._cv:
            self._waiting.append(req)
            self._cv.notify()

    @property
    def load(self) -> int:
        """Requests waiting or running."""
        return len(self._waiting) + len(self._rows)

    def shutdown(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=5)

    # -- the loop -------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._rows:
                    self._cv.wait()
                if self._stop:
                    for r in self._rows:
                        self._finish(r, "cancelled")
                    for q in self._waiting:
                        self._safe_emit(q, None, "cancelled")
                    return
                room = self.max_batch - len(self._rows)
                new = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            try:
                with torch.inference_mode():
                    self._tick(new)
            except Exception as exc:  # a failing step must not kill the server: fail the batch, start over
                log.exception("engine %s: step failed", self.name)
                for r in self._rows:
                    r.req.error = f"{type(exc).__name__}: {exc}"
                    self._finish(r, "error")
                for q in new:
                    if not any(r.req is q for r in self._rows):
                        q.error = f"{type(exc).__name__}: {exc}"
                        self._safe_emit(q, None, "error")
                self._rows, self._cache = [], None

    def _tick(self, new: list[GenRequest]) -> None:
        now = time.monotonic()
        new = [q for q in new if self._admit_ok(q, now)]
        self._reap(now)
        if new:
            self._prefill(new)
            self._reap(time.monotonic())
        if self._rows:
            self._decode_step()
            self._reap(time.monotonic())

    def _admit_ok(self, q: GenRequest, now: float) -> bool:
        if q.cancelled.is_set():
            self._safe_emit(q, None, "cancelled")
            return False
        if q.deadline is not None and now > q.deadline:
            self._safe_emit(q, None, "timeout")
            return False
        return True

    @staticmethod
    def _safe_emit(req: GenRequest, tok: int | None, reason: str | None = None) -> None:
        try:
            req.emit(tok, reason)
        except Exception:  # a broken consumer must not break the batch
            log.exception("emit failed")
            req.cancel()

    def _finish(self, row: _Row, reason: str) -> None:
        row.max_new = -1  # marks the row as done
        self._safe_emit(row.req, None, reason)

    @staticmethod
    def _sample(logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        """logits [B, V] fp32 -> one token per row with that row's own settings and generator.
        Greedy rows without penalties (the common case) share one argmax over the whole batch."""
        out = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            if not r.greedy:
                seen = r.seen[None] if r.seen is not None else None
                counts = r.counts[None] if r.counts is not None else None
                out[i] = int(sample_next(logits[i : i + 1], r.req.sampling, seen, r.gen, counts)[0])
        return out

    def _emit_tokens(self, rows: list[_Row], toks: list[int]) -> None:
        for r, t in zip(rows, toks):
            r.generated += 1
            if r.seen is not None and r.counts is not None:  # both kept only for rows with penalties
                r.seen[t] = True
                r.counts[t] += 1
            self._safe_emit(r.req, t)
            if t in r.stops:
                self._finish(r, "stop")
            elif r.generated >= r.max_new:
                self._finish(r, "length")

    def _prefill(self, new: list[GenRequest]) -> None:
        B, L = len(new), max(len(q.prompt) for q in new)
        ids = torch.full((B, L), self.pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((B, L), dtype=torch.long, device=self.device)
        for i, q in enumerate(new):
            ids[i, L - len(q.prompt) :] = torch.tensor(q.prompt, device=self.device)
            mask[i, L - len(q.prompt) :] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.model.new_cache(B, L + GROW)
        padded = bool((mask == 0).any())
        logits = (
            self.model(ids, position_ids=pos, attention_mask=mask if padded else None, cache=cache, last_only=True)
            .logits[:, -1]
            .float()
        )
        rows = []
        V = self.model.config.vocab_size
        for q in new:
            sc = q.sampling
            seen = counts = None
            if sc.repetition_penalty != 1.0 or sc.frequency_penalty != 0.0 or sc.presence_penalty != 0.0:
                seen = torch.zeros(V, dtype=torch.bool, device=self.device)
                seen[torch.tensor(q.prompt, device=self.device)] = True
                counts = torch.zeros(V, device=self.device)
            gen = torch.Generator(device=self.device).manual_seed(sc.seed) if sc.seed is not None else None
            room = self.context_len - len(q.prompt)
            rows.append(
                _Row(
                    q,
                    gen,
                    seen,
                    counts,
                    max_new=max(1, min(sc.max_new_tokens, room)),
                    stops=frozenset(sc.stop_token_ids or ()),
                )
            )
        toks = self._sample(logits, rows)
        # Merge: right-align the new rows with the running ones.
        if self._rows:
            assert (
                self._cache is not None and self._mask is not None and self._pos is not None and self._last is not None
            )  # rows are running
            S = self._cache.length
            self._mask = self._mask[:, :S]  # spare columns are re-made by the next step
            if L < S:
                cache.left_pad(S - L)
                mask = torch.cat([mask.new_zeros(B, S - L), mask], 1)
            elif L > S:
                self._cache.left_pad(L - S)
                self._mask = torch.cat([self._mask.new_zeros(len(self._rows), L - S), self._mask], 1)
            self._cache.concat(cache)
            self._mask = torch.cat([self._mask, mask], 0)
            self._pos = torch.cat([self._pos, pos[:, -1] + 1])
            self._last = torch.cat([self._last, torch.zeros(B, dtype=torch.long, device=self.device)])
        else:
            self._cache, self._mask, self._pos = cache, mask, pos[:, -1] + 1
            self._last = torch.zeros(B, dtype=torch.long, device=self.device)
        assert self._last is not None
        self._last[len(self._rows) :] = torch.tensor(toks, device=self.device)
        self._rows += rows
        self._emit_tokens(rows, toks)

    def _decode_step(self) -> None:
        assert (
            self._cache is not None and self._mask is not None and self._pos is not None and self._last is not None
        )  # rows are running
        B = len(self._rows)
        self.max_rows_seen = max(self.max_rows_seen, B)
        self._cache.reserve(1)
        S = self._cache.length + 1
        if self._mask.shape[1] < S:  # out of spare columns: add GROW of them at once, not one per step
            self._mask = torch.cat([self._mask, self._mask.new_ones(B, S - self._mask.shape[1] + GROW - 1)], 1)
        logits = (
            self.model(
                self._last[:, None],
                position_ids=self._pos[:, None],
                attention_mask=self._mask[:, :S],
                cache=self._cache,
            )
            .logits[:, -1]
            .float()
        )
        self._pos += 1
        toks = self._sample(logits, self._rows)
        self.steps += 1
        self._emit_tokens(self._rows, toks)
        self._last = torch.tensor(toks, device=self.device)

    def _reap(self, now: float) -> None:
        """Remove finished / cancelled / timed-out rows and trim all-padding cache columns."""
        keep = []
        for i, r in enumerate(self._rows):
            if r.max_new >= 0:
                if r.req.cancelled.is_set():
                    self._finish(r, "cancelled")
                elif r.req.deadline is not None and now > r.req.deadline:
                    self._finish(r, "timeout")
            if r.max_new >= 0:
                keep.append(i)
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask, self._pos, self._last = [], None, None, None, None
            return
        assert (
            self._cache is not None and self._mask is not None and self._pos is not None and self._last is not None
        )  # rows are running
        idx = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        self._cache.select_rows(idx)
        self._mask, self._pos, self._last = self._mask[idx], self._pos[idx], self._last[idx]
        self._mask = self._mask[:, : self._cache.length]
        lead = int(self._mask.any(0).long().argmax())  # first column some row still uses
        if lead > 0:
            self._cache.drop_left(lead)
            self._mask = self._mask[:, lead:]

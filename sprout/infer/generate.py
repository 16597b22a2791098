"""Autoregressive decoding with the model's cache: sampling, streaming and batched prompts.

One prefill pass over the (left-padded) prompts fills the cache (`model.new_cache`, any family: keys/values,
MLA latents or a recurrent state); every later step feeds one token per row and reads the cache, so a step
costs O(length) instead of a full forward pass over the whole prefix.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ..models.dense import SproutForCausalLM


@dataclass
class SamplingConfig:
    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages tokens already in the context (prompt included)
    frequency_penalty: float = 0.0  # OpenAI-style: logit -= f * (times the token was generated so far)
    presence_penalty: float = 0.0  # OpenAI-style: logit -= p if the token was generated at least once
    stop_token_ids: list[int] | None = None  # None: ChatSession fills in the tokenizer's stop_ids; [] = none
    seed: int | None = None


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty: a token already in the context has its logit divided by `penalty`
    if positive and multiplied if negative, so it always becomes less likely."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_frequency_presence(
    logits: torch.Tensor, counts: torch.Tensor, frequency: float, presence: float
) -> torch.Tensor:
    """Penalise tokens by how often this reply has already produced them (the prompt is not counted,
    so words of the question stay available). Breaks loops such as digit runs that a small model
    falls into, which the prompt-wide repetition penalty cannot target."""
    if frequency == 0.0 and presence == 0.0:
        return logits
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set whose probability reaches top_p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass *before* it already reaches top_p (the best token always survives).
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(
    logits: torch.Tensor,
    sc: SamplingConfig,
    seen: torch.Tensor | None,
    gen: torch.Generator | None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits [B, V] (fp32) -> next token ids [B], for the whole batch at once. seen [B, V]: tokens in the
    context, counts [B, V]: tokens generated so far per row (both may be None when no penalty is set)."""
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, sc.repetition_penalty)
    if counts is not None:
        logits = apply_frequency_presence(logits, counts, sc.frequency_penalty, sc.presence_penalty)
    if sc.temperature <= 0:
        return logits.argmax(-1)
    logits = filter_top_k_top_p(logits / sc.temperature, sc.top_k, sc.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


def _penalised(sc: SamplingConfig) -> bool:
    """Whether sampling needs the per-row token history (`seen`, `counts`); without it a step skips two
    scatters over [B, V]."""
    return sc.repetition_penalty != 1.0 or sc.frequency_penalty != 0.0 or sc.presence_penalty != 0.0


# One compiled step per model (and wrapper kind), kept as long as the model lives.
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[bool, Callable[..., torch.Tensor]]] = weakref.WeakKeyDictionary()


def decode_step_fn(
    model: SproutForCausalLM, compile_step: bool, cpp_wrapper: bool = True
) -> Callable[..., torch.Tensor]:
    """One decoding step: (tokens [B], positions [B], mask [B, S] | None, cache) -> fp32 logits [B, V].

    With `compile_step` the step is compiled once per model (torch.compile): the dozens of small per-layer
    kernels of a one-token forward become a few fused ones, which is where a small model's decoding time goes.
    What is left is calling them: on CUDA "reduce-overhead" mode replays the step as a CUDA graph; on a CPU
    `cpp_wrapper` has inductor call its kernels from generated C++ instead of Python, the CPU's nearest
    equivalent (docs/BENCHMARKS.md: the same tokens, 1.13x the Python-wrapped step at batch 1)."""

    def step(tok: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None, cache) -> torch.Tensor:
        return model(tok[:, None], position_ids=pos[:, None], attention_mask=mask, cache=cache).logits[:, -1].float()

    if not compile_step:
        return step
    per_model = _COMPILED.setdefault(model, {})
    compiled = per_model.get(cpp_wrapper)
    if compiled is None:
        # dynamic=True: the cache grows by one column a step; without it every length would recompile.
        if next(model.parameters()).device.type == "cuda":
            compiled = torch.compile(step, dynamic=True, mode="reduce-overhead")
        else:
            compiled = torch.compile(step, dynamic=True, options={"cpp_wrapper": cpp_wrapper})
        per_model[cpp_wrapper] = compiled  # reused by later calls on the same model
    return compiled


@torch.no_grad()
def generate_stream(
    model: SproutForCausalLM,
    prompts: list[list[int]],
    sc: SamplingConfig,
    should_stop: Callable[[], bool] | None = None,
    compile_step: bool = False,
) -> Iterator[list[int | None]]:
    """Yield, once per decoding step, the new token of every row (None for rows already finished).

    Prompts of different lengths are left-padded; the padding is hidden from attention by the
    mask and the positions of each row start at 0 on its first real token, so a row's result
    does not depend on what it is batched with.

    A step allocates nothing that grows with the step count: the cache has room for every position up
    front, and the attention mask is one preallocated [B, prompt + max_new] tensor of which each step passes
    a longer view (the columns not yet reached are already 1, and are not looked at before they are).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    B, longest = len(prompts), max(len(p) for p in prompts)
    total = longest + sc.max_new_tokens
    pad = model.config.pad_token_id
    ids = torch.full((B, longest), pad, dtype=torch.long, device=device)
    mask = torch.ones((B, total), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :] = torch.tensor(p, device=device)
        mask[i, : longest - len(p)] = 0
    positions = (mask[:, :longest].cumsum(-1) - 1).clamp(min=0)
    padded = any(len(p) < longest for p in prompts)
    penalised = _penalised(sc)
    seen = counts = None
    if penalised:
        seen = torch.zeros((B, model.config.vocab_size), dtype=torch.bool, device=device)
        seen.scatter_(1, ids, mask[:, :longest].bool())
        counts = torch.zeros((B, model.config.vocab_size), device=device)

    gen = None
    if sc.seed is not None:
        gen = torch.Generator(device=device).manual_seed(sc.seed)
    stops = torch.tensor(sc.stop_token_ids, device=device) if sc.stop_token_ids else None
    # Rows with the same prompt (a GRPO group: several replies to one prompt) share one prefill: each distinct
    # prompt runs once and its cache rows are copied, so a group of 8 costs one prompt's forward pass.
    distinct: dict[tuple[int, ...], int] = {}  # prompt -> its first row
    row_of = torch.tensor([distinct.setdefault(tuple(p), i) for i, p in enumerate(prompts)], device=device)
    firsts, row_of = torch.unique(row_of, return_inverse=True)  # first rows in order; each row's index among them
    cache = model.new_cache(len(distinct), total)
    logits = (
        model(
            ids[firsts],
            position_ids=positions[firsts],
            attention_mask=mask[firsts, :longest] if padded else None,
            cache=cache,
            last_only=True,
        )
        .logits[:, -1]
        .float()
    )
    if len(distinct) < B:
        cache.select_rows(row_of)
        logits = logits[row_of]
    step = decode_step_fn(model, compile_step)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    any_finished = False
    rows = torch.arange(B, device=device)
    next_pos = positions[:, -1] + 1
    for _ in range(sc.max_new_tokens):
        tok = sample_next(logits, sc, seen if penalised else None, gen, counts)
        if any_finished:
            tok = torch.where(finished, torch.full_like(tok, pad), tok)
        toks = tok.tolist()  # the one host sync of a step: the caller needs the ids
        yield [None if f else t for t, f in zip(toks, finished.tolist())] if any_finished else toks
        if seen is not None and counts is not None:
            seen[rows, tok] = True
            counts[rows, tok] += 1
        if stops is not None:
            finished |= torch.isin(tok, stops)
            any_finished = bool(finished.any())
            if any_finished and bool(finished.all()):
                return
        if should_stop is not None and should_stop():
            return
        step_mask = mask[:, : cache.length + 1] if padded else None
        logits = step(tok, next_pos, step_mask, cache)
        next_pos += 1


def generate(
    model: SproutForCausalLM,
    prompts: list[list[int]],
    sc: SamplingConfig,
    include_stop: bool = False,
    compile_step: bool = False,
) -> list[list[int]]:
    """Batched generation; returns the new tokens of each prompt (stop token dropped unless include_stop)."""
    out: list[list[int]] = [[] for _ in prompts]
    for step in generate_stream(model, prompts, sc, compile_step=compile_step):
        for i, t in enumerate(step):
            if t is not None:
                out[i].append(t)
    stops = set(sc.stop_token_ids or ())
    if not include_stop:
        out = [o[:-1] if o and o[-1] in stops else o for o in out]
    return out


class TextDecoder:
    """Turns a growing list of token ids into text pieces for streaming, in O(1) work per token.

    Byte-level BPE can split one UTF-8 character (e.g. a Chinese character) across two tokens; the
    decoder holds text back while it ends in an incomplete character (U+FFFD). Only a short window is
    decoded each time: the ids since the last complete piece, after a few ids of context before it (a
    token's text can depend on its neighbour, e.g. a leading space), so a long reply costs no more per
    token than a short one."""

    CONTEXT = 4  # ids decoded before the new ones, and then cut off again

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode, self.ids = decode, list[int]()
        self.start = 0  # first id of the context window
        self.done = 0  # ids whose text has been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.decode(self.ids[self.start : self.done])
        text = self.decode(self.ids[self.start :])
        if text.endswith("\ufffd") or not text.startswith(before):
            return ""
        piece = text[len(before) :]
        self.done = len(self.ids)
        self.start = max(0, self.done - self.CONTEXT)
        return piece

"""Autoregressive decoding with the model's cache: sampling, streaming and batched prompts.

One prefill pass over the (left-padded) prompts fills the cache (`model.new_cache`, any family: keys/values,
MLA latents or a recurrent state); every later step feeds one token per row and reads the cache, so a step
costs O(length) instead of a full forward pass over the whole prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn


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


def apply_frequency_presence(logits: torch.Tensor, counts: torch.Tensor, frequency: float, presence: float) -> torch.Tensor:
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


def sample_next(logits: torch.Tensor, sc: SamplingConfig, seen: torch.Tensor, gen: torch.Generator | None,
                counts: torch.Tensor | None = None) -> torch.Tensor:
    """logits [B, V] (fp32) -> next token ids [B]. counts [B, V]: tokens generated so far per row."""
    logits = apply_repetition_penalty(logits, seen, sc.repetition_penalty)
    if counts is not None:
        logits = apply_frequency_presence(logits, counts, sc.frequency_penalty, sc.presence_penalty)
    if sc.temperature <= 0:
        return logits.argmax(-1)
    logits = filter_top_k_top_p(logits / sc.temperature, sc.top_k, sc.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate_stream(
    model: nn.Module,
    prompts: list[list[int]],
    sc: SamplingConfig,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[list[int | None]]:
    """Yield, once per decoding step, the new token of every row (None for rows already finished).

    Prompts of different lengths are left-padded; the padding is hidden from attention by the
    mask and the positions of each row start at 0 on its first real token, so a row's result
    does not depend on what it is batched with.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    B, longest = len(prompts), max(len(p) for p in prompts)
    pad = model.config.pad_token_id
    ids = torch.full((B, longest), pad, dtype=torch.long, device=device)
    mask = torch.zeros((B, longest), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p, device=device)
        mask[i, longest - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    seen = torch.zeros((B, model.config.vocab_size), dtype=torch.bool, device=device)
    seen.scatter_(1, ids, mask.bool())

    gen = None
    if sc.seed is not None:
        gen = torch.Generator(device=device).manual_seed(sc.seed)
    stops = torch.tensor(sc.stop_token_ids or [-1], device=device)
    cache = model.new_cache(B, longest + sc.max_new_tokens)
    padded = bool((mask == 0).any())
    logits = model(ids, position_ids=positions, attention_mask=mask if padded else None,
                   cache=cache, last_only=True).logits[:, -1].float()
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    counts = torch.zeros((B, model.config.vocab_size), device=device)
    rows = torch.arange(B, device=device)
    next_pos = positions[:, -1] + 1
    for _ in range(sc.max_new_tokens):
        tok = sample_next(logits, sc, seen, gen, counts)
        tok = torch.where(finished, torch.full_like(tok, pad), tok)
        yield [None if f else int(t) for t, f in zip(tok.tolist(), finished.tolist())]
        seen[rows, tok] = True
        counts[rows, tok] += 1
        finished |= torch.isin(tok, stops)
        if bool(finished.all()) or (should_stop is not None and should_stop()):
            return
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
        logits = model(tok[:, None], position_ids=next_pos[:, None], attention_mask=mask if padded else None,
                       cache=cache).logits[:, -1].float()
        next_pos = next_pos + 1


def generate(model: nn.Module, prompts: list[list[int]], sc: SamplingConfig, include_stop: bool = False) -> list[list[int]]:
    """Batched generation; returns the new tokens of each prompt (stop token dropped unless include_stop)."""
    out: list[list[int]] = [[] for _ in prompts]
    for step in generate_stream(model, prompts, sc):
        for i, t in enumerate(step):
            if t is not None:
                out[i].append(t)
    stops = set(sc.stop_token_ids or ())
    if not include_stop:
        out = [o[:-1] if o and o[-1] in stops else o for o in out]
    return out


class TextDecoder:
    """Turns a growing list of token ids into text pieces for streaming.

    Byte-level BPE can split one UTF-8 character (e.g. a Chinese character) across two tokens; the
    decoder holds text back while it ends in an incomplete character (U+FFFD)."""

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode, self.ids, self.emitted = decode, [], 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[self.emitted:], len(text)
        return piece

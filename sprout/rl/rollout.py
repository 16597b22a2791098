"""Rollouts: sample completions from the current policy and lay them out for the loss.

A `Trajectory` is a prompt followed by pieces of tokens, each marked as written by the policy
(trained) or not (tool outputs fed back in an agentic rollout: they are context, never targets).
`pack` right-pads a list of trajectories into tensors; because padding sits at the end, a plain
causal forward pass over the padded rows gives every real token the same log-probability it had
alone, so no attention mask is needed.

Who generates is a `RolloutBackend`: `LocalBackend` decodes in-process with the KV cache of
sprout/infer/generate.py; `OpenAIBackend` asks an OpenAI-compatible server (sprout serve, vLLM,
SGLang, llama.cpp's server) through /v1/completions with token-id prompts, and calls a weight-sync
hook after each optimizer step so the server samples from the current policy. Either way the
trainer recomputes log-probabilities itself, so the backend only has to return tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from ..infer.generate import SamplingConfig, generate

if TYPE_CHECKING:
    from ..models.dense import SproutForCausalLM


@dataclass
class Trajectory:
    prompt: list[int]
    pieces: list[tuple[list[int], bool]] = field(default_factory=list)  # (tokens, written by the policy?)
    final_text: str = ""  # the last reply's answer text (what rewards look at)
    tool_calls: int = 0  # tool calls made and executed during the rollout

    @property
    def generated(self) -> int:
        return sum(len(t) for t, own in self.pieces if own)

    def continuation(self) -> list[int]:
        """Every token after the prompt: the policy's replies and what was fed back between them."""
        return [t for toks, _ in self.pieces for t in toks]

    def ids(self) -> list[int]:
        return self.prompt + self.continuation()


class RolloutBackend(Protocol):
    def complete(self, prompts: list[list[int]], sc: SamplingConfig) -> list[list[int]]:
        """New tokens per prompt, the stop token included when one was produced."""

    def sync(self, model: SproutForCausalLM) -> None:
        """Make the backend sample from `model`'s current weights (called after each optimizer step)."""


class LocalBackend:
    """In-process sampling from the policy itself (always in sync)."""

    def __init__(self, model: SproutForCausalLM):
        self.model = model

    def complete(self, prompts: list[list[int]], sc: SamplingConfig) -> list[list[int]]:
        return generate(self.model, prompts, sc, include_stop=True)

    def sync(self, model: SproutForCausalLM) -> None:
        self.model = model


class OpenAIBackend:
    """Rollouts from an OpenAI-compatible server's /v1/completions (prompt = token ids, text back).

    The completion text is re-encoded with the policy's tokenizer; the stop token (<|im_end|>) is
    appended when the server reports finish_reason "stop". `on_sync(model)` is the weight-sync hook
    (e.g. `DiskSync`): without one the server's weights drift from the policy's as training goes on.
    `client` is any httpx.Client-like object (tests pass a TestClient of sprout serve's app).
    """

    def __init__(
        self,
        base_url: str,
        model_name: str,
        tokenizer: Any,
        stop_id: int = 2,
        on_sync: Callable[[SproutForCausalLM], None] | None = None,
        client: Any = None,
        timeout: float = 300,
    ):
        import httpx

        self.model_name, self.tokenizer, self.stop_id, self.on_sync = model_name, tokenizer, stop_id, on_sync
        self.client = client if client is not None else httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)

    def complete(self, prompts: list[list[int]], sc: SamplingConfig) -> list[list[int]]:
        out = []
        for p in prompts:  # one request per prompt; a batching server runs them concurrently when threaded
            body = {
                "model": self.model_name,
                "prompt": p,
                "max_tokens": sc.max_new_tokens,
                "temperature": sc.temperature,
                "top_p": sc.top_p,
            }
            r = self.client.post("/v1/completions", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"rollout server answered {r.status_code}: {r.text[:300]}")
            choice = r.json()["choices"][0]
            toks = self.tokenizer.encode(choice["text"])[: sc.max_new_tokens]
            if choice.get("finish_reason") == "stop" and len(toks) < sc.max_new_tokens:
                toks.append(self.stop_id)
            out.append(toks)
        return out

    def sync(self, model: SproutForCausalLM) -> None:
        if self.on_sync is not None:
            self.on_sync(model)


class DiskSync:
    """Weight-sync hook: write the policy as an HF folder and, if `url` is set, POST {"model_path": folder}
    there (SGLang's /update_weights_from_disk; vLLM and llama.cpp need a reload of that folder instead)."""

    def __init__(self, folder: str | Path, url: str | None = None):
        self.folder, self.url = Path(folder), url

    def __call__(self, model: SproutForCausalLM) -> None:
        import httpx

        from ..models import save_model

        save_model(model, self.folder)
        if self.url:
            httpx.post(self.url, json={"model_path": str(self.folder)}, timeout=600).raise_for_status()


def sample(backend: RolloutBackend, prompts: list[list[int]], sc: SamplingConfig) -> list[Trajectory]:
    """One policy reply per prompt (single-turn rollouts)."""
    return [Trajectory(p, [(c, True)]) for p, c in zip(prompts, backend.complete(prompts, sc))]


def pack(trajs: list[Trajectory], pad_id: int, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """input_ids [N, T] right-padded; loss_mask [N, T-1]: 1 where target token t+1 was written by the policy."""
    seqs = [t.ids() for t in trajs]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    own = torch.zeros((len(seqs), T), dtype=torch.bool)
    for r, (traj, s) in enumerate(zip(trajs, seqs)):
        ids[r, : len(s)] = torch.tensor(s)
        pos = len(traj.prompt)
        for toks, mine in traj.pieces:
            own[r, pos : pos + len(toks)] = mine
            pos += len(toks)
    return {"input_ids": ids.to(device), "loss_mask": own[:, 1:].float().to(device)}


@dataclass
class SharedPrompts:
    """Replies that share a prompt, laid out with the prompt once per row (GRPO's groups).

    `pack` repeats the prompt in every reply's row, so a group of G replies to a 300-token prompt
    computes that prompt G times. Here a row holds one prompt followed by each of its replies, and a
    whole [L, L] mask lets a reply's tokens see the prompt and the earlier tokens of their own reply
    only, at the positions they would have alone (the reply starts at len(prompt)). A reply token's
    hidden state is then the one `pack`'s layout gives, up to float rounding; `source` says where each
    of `pack`'s predicting positions sits in this layout, so the log-probabilities come out in `pack`'s
    [N, T-1] shape and every loss stays as written."""

    input_ids: torch.Tensor  # [R, L]: R distinct prompts, each followed by its replies, right-padded
    position_ids: torch.Tensor  # [R, L]
    attention: torch.Tensor  # [R, 1, L, L] bool: True where a query may attend to a key
    source: torch.Tensor  # [N, T-1]: row * L + position of the hidden state predicting pack's target t


def pack_shared(trajs: list[Trajectory], pad_id: int, device: torch.device | str = "cpu") -> SharedPrompts:
    """The SharedPrompts layout of `trajs`; consecutive trajectories with the same prompt share a row."""
    groups: list[list[int]] = []
    for i, t in enumerate(trajs):
        if groups and trajs[groups[-1][0]].prompt == t.prompt:
            groups[-1].append(i)
        else:
            groups.append([i])
    conts = [t.continuation() for t in trajs]
    L = max(len(trajs[g[0]].prompt) + sum(len(conts[i]) for i in g) for g in groups)
    T = max(len(t.prompt) + len(c) for t, c in zip(trajs, conts))
    ids = torch.full((len(groups), L), pad_id, dtype=torch.long)
    pos = torch.zeros((len(groups), L), dtype=torch.long)
    doc = torch.full((len(groups), L), -1, dtype=torch.long)  # 0 = the prompt, j + 1 = reply j, -1 = padding
    source = torch.zeros((len(trajs), T - 1), dtype=torch.long)
    at = torch.arange(T - 1)  # pack's positions; position t predicts token t + 1
    for r, g in enumerate(groups):
        prompt = trajs[g[0]].prompt
        P = len(prompt)
        ids[r, :P] = torch.tensor(prompt)
        pos[r, :P] = torch.arange(P)
        doc[r, :P] = 0
        start = P
        for j, i in enumerate(g):
            n = len(conts[i])
            ids[r, start : start + n] = torch.tensor(conts[i], dtype=torch.long)
            pos[r, start : start + n] = torch.arange(P, P + n)
            doc[r, start : start + n] = j + 1
            # prompt positions map to themselves, reply position P + m to start + m (positions past
            # the reply's end are never selected)
            source[i] = r * L + torch.where(at < P, at, (start + at - P).clamp(max=L - 1))
            start += n
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    same = (doc[:, :, None] == doc[:, None, :]) | (doc[:, None, :] == 0)  # own reply, or the shared prompt
    return SharedPrompts(ids.to(device), pos.to(device), (causal & same).unsqueeze(1).to(device), source.to(device))


def token_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    shared: SharedPrompts | None = None,
) -> torch.Tensor:
    """log p(input_ids[:, t+1] | prefix) for every t: [N, T-1], under the sampling temperature.

    With `mask` ([N, T-1]) the vocabulary projection runs only where mask > 0 (elsewhere the result
    is 0): an agentic prompt with every tool listed is ~450 tokens and the reply ~60, so this skips
    most of the [N, T, V] logits, the largest tensor of the step. With `shared` as well (the same
    trajectories in `pack_shared`'s layout) each prompt is computed once for all its replies; a model
    whose token mixers ignore masks (Qwen3-Next) takes `input_ids` as they are."""
    from ..models.dense import SproutForCausalLM

    if mask is not None and isinstance(model, SproutForCausalLM):
        sel = mask > 0
        if shared is not None and model.mask_isolates_tokens:
            x, _ = model.trunk(shared.input_ids, shared.position_ids, attention_mask=shared.attention)
            hidden = x.flatten(0, 1)[shared.source[sel]]
        else:
            x, _ = model.trunk(input_ids[:, :-1])
            hidden = x[sel]
        return selected_logps(model.lm_head, model.model.norm(hidden), input_ids[:, 1:], sel, temperature)
    logits = model(input_ids[:, :-1]).logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    target = input_ids[:, 1:]
    # log_softmax gathered at the target, without materialising a second [N, T, V] tensor
    return logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def selected_logps(
    head: nn.Module, hidden: torch.Tensor, target: torch.Tensor, sel: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Log-probabilities of target[sel] from the hidden states of the selected positions ([n_sel, H])."""
    logits = head(hidden).float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, target[sel].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    return torch.zeros(target.shape, dtype=picked.dtype, device=picked.device).masked_scatter(sel, picked)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


# ---- agentic (multi-turn, tool-calling) rollouts ------------------------------------------------
def tool_turn_text(results: list[str], thinking: bool = False) -> str:
    """What the chat template puts between an assistant turn's <|im_end|> and the next reply: the tool
    results in one user turn, then the generation prompt (sprout/tokenizer_chat.py's layout)."""
    from ..tokenizer_chat import EMPTY_THINK

    body = "".join(f"\n<tool_response>\n{r}\n</tool_response>" for r in results)
    return "\n<|im_start|>user" + body + "<|im_end|>\n<|im_start|>assistant\n" + ("" if thinking else EMPTY_THINK)


def agent_rollouts(
    backend: RolloutBackend,
    tokenizer: Any,
    prompts: list[list[int]],
    sc: SamplingConfig,
    max_tool_rounds: int = 1,
    run_tool: Callable[[str, Any], str] | None = None,
) -> list[Trajectory]:
    """Multi-turn rollouts: each reply's <tool_call> blocks are executed with the real tools, their
    results appended (not trained on), and the policy replies again, up to `max_tool_rounds` rounds
    (as `sprout chat` does). Rows advance together; finished rows drop out of later rounds."""
    from ..infer.chat import split_thinking
    from ..tools import parse_tool_calls
    from ..tools import run_tool as default_run_tool

    run = run_tool or default_run_tool
    stops = set(sc.stop_token_ids or ())
    trajs = [Trajectory(p) for p in prompts]
    active = list(range(len(trajs)))
    for round_ in range(max_tool_rounds + 1):
        if not active:
            break
        outs = backend.complete([trajs[i].ids() for i in active], sc)
        still = []
        for i, toks in zip(active, outs):
            traj = trajs[i]
            traj.pieces.append((toks, True))
            text = tokenizer.decode([t for t in toks if t not in stops], skip_special_tokens=False)
            answer = split_thinking(text)[1]
            traj.final_text = answer
            calls = parse_tool_calls(answer)
            stopped = bool(toks) and toks[-1] in stops
            if not calls or round_ == max_tool_rounds or not stopped:
                continue
            results = [c.get("error") or run(c["name"], c["arguments"]) for c in calls]
            traj.tool_calls += len(calls)
            traj.final_text = ""  # a reply that only calls tools is not an answer yet
            traj.pieces.append((tokenizer.encode(tool_turn_text(results)), False))
            still.append(i)
        active = still
    return trajs


def dump_samples(trajs: list[Trajectory], tokenizer: Any, rewards: list[float], path: Path, n: int = 4) -> None:
    """Append a few decoded rollouts with their rewards to a jsonl (what a run's samples looked like)."""
    with open(path, "a", encoding="utf-8") as f:
        for t, r in list(zip(trajs, rewards))[:n]:
            text = tokenizer.decode(t.continuation(), skip_special_tokens=False)
            f.write(json.dumps({"reward": r, "completion": text}, ensure_ascii=False) + "\n")

"""`sprout eval rl MODEL --recipe grpo`: a model's mean reward on an RL task's held-out prompts.

The same prompts, rollouts (tool calls included) and reward components as the training run that the
recipe and KEY=VALUE overrides describe, so "reward before" and "reward after" a run are measured on
one footing and on more prompts than the run's own `val_reward` (32 greedy prompts, too few to tell a
10-point change from noise). Two numbers:

  greedy   one reply per prompt at temperature 0 (what a user of the model sees);
  sampled  `samples` replies per prompt at the recipe's temperature (what the run optimises).

The 95% interval is 1.96 standard errors of the per-prompt mean reward (replies to one prompt are
not independent, so the prompt is the unit). `--compare BEFORE.json` adds the change against an earlier
evaluation of the same prompts, with a paired interval.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..config import TrainConfig
from ..errors import UserError
from ..train.objectives import build_objective
from ..train.objectives.rl import PromptDataset, RLObjective


def interval(per_prompt: list[float]) -> dict[str, float]:
    """Mean and its 95% normal-approximation interval over prompts."""
    n = len(per_prompt)
    mean = sum(per_prompt) / n
    var = sum((x - mean) ** 2 for x in per_prompt) / (n - 1) if n > 1 else 0.0
    half = 1.96 * math.sqrt(var / n)
    return {"mean": round(mean, 4), "low": round(mean - half, 4), "high": round(mean + half, 4)}


def rl_reward_eval(cfg: TrainConfig, samples: int = 4, batch: int = 16) -> dict[str, Any]:
    """Greedy and sampled mean reward of cfg.model on the `val_prompts` held-out prompts of cfg's task."""
    obj = build_objective(cfg)
    if not isinstance(obj, RLObjective):
        raise SystemExit(f"stage {cfg.stage!r} is not an RL stage; use grpo, ppo, spo or agent")
    tok = obj.load_tokenizer()
    policy = obj.build_lm(tok).eval()
    obj.kl_coef = 0.0  # no frozen reference copy: nothing is trained here
    obj.setup(policy, torch.device("cpu"))  # the rollout backend and, when the recipe has one, the reward model
    _, val = obj.datasets(tok)
    assert isinstance(val, PromptDataset)  # what every RL objective's datasets() returns
    torch.manual_seed(cfg.seed)
    greedy: list[float] = []
    sampled: list[float] = []
    parts: dict[str, list[float]] = {}
    for start in range(0, len(val), batch):
        rows = [val[i] for i in range(start, min(start + batch, len(val)))]
        items = [obj.items[r["idx"]] for r in rows]
        prompts = [r["prompt"] for r in rows]
        greedy += obj.scored_rollouts(items, prompts, greedy=True)[2].tolist()
        _, _, rewards, comps = obj.scored_rollouts(items, prompts, samples)
        sampled += rewards.view(len(prompts), samples).mean(1).tolist()
        for name, v in comps.items():
            parts.setdefault(name, []).extend(v.tolist())
    return {
        "model": cfg.model,
        "stage": cfg.stage,
        "task": (cfg.objective_args or {}).get("task", "calc"),
        "prompts": len(greedy),
        "samples": samples,
        "temperature": obj.sampling.temperature,
        "greedy": interval(greedy),
        "sampled": interval(sampled),
        "sampled_components": {k: round(sum(v) / len(v), 4) for k, v in parts.items()},
        "per_prompt": {"greedy": [round(x, 4) for x in greedy], "sampled": [round(x, 4) for x in sampled]},
    }


def check_comparable(
    before: dict[str, Any], after: dict[str, Any], keys: tuple[str, ...], before_file: str | None = None
) -> None:
    """Stop when two evaluations differ in what makes their per-prompt rewards pair up."""
    for key in keys:
        if before.get(key) != after.get(key):
            raise UserError(
                f"the two evaluations differ in {key} ({before.get(key)!r} vs {after.get(key)!r})",
                file=before_file,
                field="--compare",
                advice="run both with the same --recipe, -n, --samples and overrides",
            )


def paired_change(after: dict[str, Any], before: dict[str, Any], before_file: str | None = None) -> dict[str, Any]:
    """After minus before, prompt by prompt (the same held-out prompts), with a paired 95% interval: far
    tighter than comparing two unpaired intervals, since most of the spread is between prompts."""
    check_comparable(before, after, ("stage", "task", "prompts", "samples"), before_file)
    out: dict[str, Any] = {"before": before.get("model")}
    for kind in ("greedy", "sampled"):
        a, b = after["per_prompt"][kind], before["per_prompt"][kind]
        out[kind] = interval([x - y for x, y in zip(a, b)])
    return out

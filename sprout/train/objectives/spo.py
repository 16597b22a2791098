"""`sprout train spo`: single-stream policy optimisation — one reply per prompt, an adaptive baseline.

GRPO needs G replies per prompt and learns nothing from a group whose replies all score the same.
SPO samples one reply and measures it against a tracked value of its prompt class (the task kind
for built-in tasks, the prompt itself for a file; a Beta-style running mean of past rewards):
    A = r - v(key),  then normalised across the batch:  A <- (A - mean A) / (std A + 1e-4)
    L = -mean_t[A * log pi(a_t | s)] + beta * mean_t[k3_t]
and v is updated with a forgetting factor that adapts to how far the policy has moved:
    rho = clip(2^(-D / kl_half), rho_min, rho_max),  D = |KL_now - KL_at_last_visit| (policy vs reference)
    num <- rho * num + sum(r),  den <- rho * den + count,  v = num / den
so a baseline forgets old rewards quickly while the policy changes fast, and averages long when it
is stable. The tracker lives in the checkpoint (exact resume).
objective_args: kl_half (0.05), rho_min (0.5), rho_max (0.96), baseline_key (kind | prompt), plus rl.py's.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from ...rl.rollout import Trajectory, masked_mean, pack, token_logps
from . import register
from .rl import RLObjective, k3_kl


class ValueTracker:
    """Per-key running reward mean with an adaptive forgetting factor (see module docstring)."""

    def __init__(self, kl_half: float = 0.05, rho_min: float = 0.5, rho_max: float = 0.96):
        self.kl_half, self.rho_min, self.rho_max = kl_half, rho_min, rho_max
        self.table: dict[str, list[float]] = {}  # key -> [num, den, kl at last update]

    def value(self, key: str, fallback: float) -> float:
        e = self.table.get(key)
        return e[0] / e[1] if e and e[1] > 0 else fallback

    def rho(self, key: str, kl_now: float) -> float:
        e = self.table.get(key)
        drift = abs(kl_now - e[2]) if e else 0.0
        return min(self.rho_max, max(self.rho_min, 2.0 ** (-drift / self.kl_half)))

    def update(self, key: str, rewards: list[float], kl_now: float) -> None:
        rho = self.rho(key, kl_now)
        num, den, _ = self.table.get(key, [0.0, 0.0, kl_now])
        self.table[key] = [rho * num + sum(rewards), rho * den + len(rewards), kl_now]


def spo_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.04,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level REINFORCE with a baseline: -mean over policy tokens of A * log pi, plus beta * k3."""
    per_token = -advantages.unsqueeze(1) * logps
    metrics: dict[str, torch.Tensor] = {}
    if beta != 0.0 and ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl, mask).detach()
    return masked_mean(per_token, mask), metrics


def normalise(adv: torch.Tensor) -> torch.Tensor:
    return (adv - adv.mean()) / (adv.std() + 1e-4) if adv.numel() > 1 else adv


@register
class SPOObjective(RLObjective):
    name = "spo"

    def __init__(self, cfg):
        super().__init__(cfg)
        a = self.args
        self.tracker = ValueTracker(
            float(a.get("kl_half", 0.05)), float(a.get("rho_min", 0.5)), float(a.get("rho_max", 0.96))
        )
        self.key_by = a.get("baseline_key", "prompt" if cfg.data else "kind")
        self.last_kl = 0.0

    def _key(self, item: dict) -> str:
        return item["kind"] if self.key_by == "kind" else json.dumps(item["messages"], ensure_ascii=False)

    def policy_loss(
        self, model: nn.Module, items: list[dict], trajs: list[Trajectory], rewards: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = pack(trajs, self.tokenizer.pad_id, self.device)
        r = rewards.float().tolist()
        keys = [self._key(it) for it in items]
        batch_mean = sum(r) / len(r)
        base = torch.tensor([self.tracker.value(k, batch_mean) for k in keys], device=self.device)
        adv = normalise(rewards.float() - base)
        ids, mask = batch["input_ids"], batch["loss_mask"]
        logps = token_logps(model, ids, self.sampling.temperature, mask)
        loss, m = spo_loss(logps, self.ref_logps(ids, mask), adv, mask, self.kl_coef)
        kl_now = float(m["kl"]) if "kl" in m else self.last_kl
        m["baseline"] = base.mean()
        m["rho"] = sum(self.tracker.rho(k, kl_now) for k in set(keys)) / len(set(keys))
        for k in set(keys):
            self.tracker.update(k, [x for x, kk in zip(r, keys) if kk == k], kl_now)
        self.last_kl = kl_now
        return loss, m

    def state_dict(self) -> dict[str, Any]:
        table = json.dumps(self.tracker.table)  # a string: checkpoints load with weights_only=True
        return {**super().state_dict(), "tracker": table, "last_kl": self.last_kl}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tracker.table = json.loads(state.get("tracker", "{}"))
        self.last_kl = float(state.get("last_kl", 0.0))

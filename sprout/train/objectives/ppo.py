"""`sprout train ppo`: proximal policy optimisation with a critic (value head), GAE and a KL penalty.

The critic is a linear value head on the policy's last hidden state (one trunk, two heads: half the
memory of a separate critic). Per rollout of `batch_size` prompts:
    per-token reward  r_t = -kl_coef * (log pi_old - log pi_ref)  (+ the reply's reward on its last token)
    GAE               delta_t = r_t + gamma * V_{t+1} - V_t,  A_t = sum_k (gamma * lam)^k delta_{t+k},
                      R_t = A_t + V_t; A whitened over the batch's policy tokens
then `ppo_epochs` passes over the rollout in `minibatches` shuffled minibatches, one engine step each:
    policy  -min(rho A, clip(rho, 1 - eps, 1 + eps) A),  rho = pi / pi_old
    value   0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)   (value clipping)
    loss    policy + vf_coef * value (token means)
A rollout's remaining minibatches are dropped when a minibatch's approximate KL to pi_old exceeds
1.5 * target_kl (early stop). The rollout buffer is objective state, saved in checkpoints, so a
resumed run continues mid-rollout exactly; prompts the engine hands in while the buffer is not
empty are not used. Tool outputs (agentic rollouts) are skipped by GAE like padding.
objective_args: ppo_epochs (2), minibatches (2), gamma (1.0), lam (0.95), epsilon (0.2),
value_clip (0.2), vf_coef (0.1), target_kl (0.1), plus rl.py's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...models import SproutForCausalLM, save_model
from ...rl.rollout import masked_mean, pack, selected_logps
from . import register
from .rl import RLObjective


class ActorCritic(nn.Module):
    """The policy plus a value head on its final hidden state; `policy` is what gets saved."""

    def __init__(self, policy: SproutForCausalLM):
        super().__init__()
        self.policy = policy
        self.value_head = nn.Linear(policy.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self, input_ids: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p of each next token [N, T-1], value of each prefix [N, T-1]), computed where mask > 0."""
        x, _ = self.policy.trunk(input_ids[:, :-1])
        h = self.policy.model.norm(x)
        sel = mask > 0
        hs = h[sel]  # the trained positions' hidden states, for both heads
        logps = selected_logps(self.policy.lm_head, hs, input_ids[:, 1:], sel, temperature)
        values = torch.zeros_like(logps).masked_scatter(sel, self.value_head(hs).squeeze(-1).float())
        return logps, values


def actor_critic(model: nn.Module) -> ActorCritic:
    """The model the engine hands a hook, as the ActorCritic that PPO's build_model made."""
    if not isinstance(model, ActorCritic):
        raise TypeError(f"expected the PPO actor-critic, got {type(model).__name__}")
    return model


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns [N, T]; positions with mask 0 (prompt, tool output, padding) are skipped,
    so a policy token's next value is that of the next *policy* token."""
    N, T = rewards.shape
    adv = torch.zeros_like(rewards)
    last = torch.zeros(N, device=rewards.device)
    next_v = torch.zeros(N, device=rewards.device)
    for t in reversed(range(T)):
        m = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        a = delta + gamma * lam * last
        last = torch.where(m, a, last)
        next_v = torch.where(m, values[:, t], next_v)
        adv[:, t] = torch.where(m, a, torch.zeros_like(a))
    return adv, (adv + values) * mask


def ppo_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    values: torch.Tensor,
    old_values: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    epsilon: float = 0.2,
    value_clip: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(policy loss, value loss, metrics), token means over mask."""
    ratio = torch.exp(logps - old_logps)
    pg = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages)
    v_clipped = old_values + torch.clamp(values - old_values, -value_clip, value_clip)
    vf = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
    metrics = {
        "approx_kl": masked_mean(old_logps - logps, mask).detach(),
        "clip_ratio": masked_mean(((ratio - 1).abs() > epsilon).float(), mask).detach(),
    }
    return masked_mean(pg, mask), masked_mean(vf, mask), metrics


def last_token_mask(mask: torch.Tensor) -> torch.Tensor:
    """1 at each row's last policy token."""
    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask > 0, idx, torch.full_like(idx, -1)).max(1).values
    out = torch.zeros_like(mask)
    rows = torch.nonzero(last >= 0).squeeze(1)
    out[rows, last[rows]] = 1.0
    return out


@register
class PPOObjective(RLObjective):
    name = "ppo"

    def __init__(self, cfg):
        super().__init__(cfg)
        a = self.args
        self.epochs, self.n_mb = int(a.get("ppo_epochs", 2)), int(a.get("minibatches", 2))
        self.buffer: dict[str, torch.Tensor] = {}  # the current rollout, and the minibatch order left to do
        self.reward_log: dict[str, float] = {}

    def build_model(self, tokenizer: Any) -> nn.Module:
        return ActorCritic(self.build_lm(tokenizer))

    def policy_of(self, model: nn.Module) -> SproutForCausalLM:
        return actor_critic(model).policy

    def save(self, model: nn.Module, tokenizer: Any, out) -> None:
        save_model(actor_critic(model).policy, out)  # the value head is a training-only part
        if tokenizer is not None:
            tokenizer.save(out)

    @torch.no_grad()
    def _fill(self, model: nn.Module, items: list[dict], prompts: list[list[int]]) -> None:
        """Sample, score, and compute old log-probs, values, GAE; queue the minibatches."""
        _, trajs, rewards, comps = self.scored_rollouts(items, prompts)
        self._maybe_dump(trajs, rewards)
        b = pack(trajs, self.tokenizer.pad_id, self.device)
        mask = b["loss_mask"]
        old_logps, old_values = model(b["input_ids"], mask, self.sampling.temperature)
        ref = self.ref_logps(b["input_ids"], mask)
        per_tok = torch.zeros_like(old_logps)
        if ref is not None:
            per_tok = -self.kl_coef * (old_logps - ref) * mask
        per_tok = per_tok + last_token_mask(mask) * rewards.to(self.device).unsqueeze(1).float()
        a = self.args
        adv, ret = gae(per_tok, old_values, mask, float(a.get("gamma", 1.0)), float(a.get("lam", 0.95)))
        mu = masked_mean(adv, mask)
        std = ((adv - mu) ** 2 * mask).sum() / mask.sum().clamp(min=1)
        adv = (adv - mu) / (std.sqrt() + 1e-8) * mask
        n = len(trajs)
        order = torch.cat([torch.randperm(n) for _ in range(self.epochs)])  # global RNG: restored on resume
        self.buffer = {
            "input_ids": b["input_ids"],
            "mask": mask,
            "old_logps": old_logps,
            "old_values": old_values,
            "adv": adv,
            "ret": ret,
            "order": order,
            "pos": torch.tensor(0),
            "mb": torch.tensor(max(1, n // self.n_mb)),
        }
        self.reward_log = {k: float(v) for k, v in self.reward_metrics(rewards, comps, trajs).items()}
        if ref is not None:
            self.reward_log["kl"] = float(masked_mean(old_logps - ref, mask))

    def train_loss(
        self, model: nn.Module, items: list[dict], prompts: list[list[int]]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if not self.buffer:
            self._fill(model, items, prompts)
        buf = self.buffer
        pos, mb = int(buf["pos"]), int(buf["mb"])
        rows = buf["order"][pos : pos + mb].to(self.device)
        ids = buf["input_ids"][rows]
        mask = buf["mask"][rows]
        logps, values = model(ids, mask, self.sampling.temperature)
        pg, vf, m = ppo_losses(
            logps,
            buf["old_logps"][rows],
            values,
            buf["old_values"][rows],
            buf["adv"][rows],
            buf["ret"][rows],
            mask,
            float(self.args.get("epsilon", 0.2)),
            float(self.args.get("value_clip", 0.2)),
        )
        loss = pg + float(self.args.get("vf_coef", 0.1)) * vf
        buf["pos"] = torch.tensor(pos + mb)
        early = float(m["approx_kl"]) > 1.5 * float(self.args.get("target_kl", 0.1))
        if early or pos + mb >= len(buf["order"]) or pos + 2 * mb > len(buf["order"]):
            self.buffer = {}  # rollout used up (or the policy moved too far from it): sample afresh next step
        metrics: dict[str, Any] = {
            **m,
            "policy_loss": pg.detach(),
            "value_loss": vf.detach(),
            "early_stop": float(early),
        }
        metrics.update(self.reward_log)
        return loss, metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "buffer": {k: v.cpu() for k, v in self.buffer.items()},
            "reward_log": dict(self.reward_log),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.buffer = {
            k: v.to(self.device) if k not in ("order", "pos", "mb") else v for k, v in state.get("buffer", {}).items()
        }
        self.reward_log = dict(state.get("reward_log", {}))

"""`sprout train grpo`: group relative policy optimisation (and CISPO) on verifiable rewards.

For each prompt G replies are sampled; a reply's advantage is its reward against its group,
    A_i = (r_i - mean(r_group)) / (std(r_group) + 1e-4)          (scale_rewards=false: no division)
and every policy token t of reply i is pushed along A_i with a clipped ratio rho = pi / pi_old:
    grpo:    l_it = -min(rho * A_i, clip(rho, 1 - eps_low, 1 + eps_high) * A_i) + beta * k3_it
    cispo:   l_it = -sg(min(rho, eps_high)) * A_i * log pi_it + beta * k3_it      (the weight is clipped,
             not the gradient: no token's gradient is dropped; MiniMax's CISPO)
    k3 = exp(ref - logp) - (ref - logp) - 1,  the KL estimate to the frozen reference.
Normalisation (loss_type): grpo averages tokens per reply then replies; bnpo averages over all
tokens of the batch (token-level, as DAPO); dr_grpo divides by replies x max_new_tokens; cispo is
token-level. These match TRL's GRPOTrainer (tests/test_rl.py compares with its code).
Each rollout batch gets one optimizer update, so pi_old = pi (the ratio is 1 in value, its
gradient is the policy gradient); the clipping matters for rollouts from a server's stale weights.
objective_args: group_size (8), loss_type (grpo | bnpo | dr_grpo | cispo), epsilon (0.2),
epsilon_high (eps, cispo: 5.0), scale_rewards (true), plus the shared ones in rl.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...rl.rollout import Trajectory, masked_mean, pack, pack_shared, token_logps
from . import register
from .rl import RLObjective, k3_kl

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "cispo")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """[N] rewards, consecutive groups of `group_size` -> [N] advantages (std is the unbiased one, as TRL)."""
    r = rewards.view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if scale:
        adv = adv / (r.std(1, keepdim=True) + 1e-4) if group_size > 1 else adv
    return adv.reshape(-1)


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.04,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy loss over [N, T] per-token log-probs (mask = policy tokens) and [N] advantages."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown GRPO loss_type {loss_type!r}; choose one of {', '.join(LOSS_TYPES)}")
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    if loss_type == "cispo":
        per_token = -torch.clamp(ratio, max=epsilon_high).detach() * adv * logps
        clipped = (ratio > epsilon_high) & (adv > 0)
    else:
        per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv)
        clipped = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    metrics: dict[str, torch.Tensor] = {"clip_ratio": masked_mean(clipped.float(), mask).detach()}
    if beta != 0.0 and ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        per_token = per_token + beta * kl
        metrics["kl"] = masked_mean(kl, mask).detach()
    if loss_type == "grpo":
        loss = masked_mean(per_token, mask, dim=1).mean()
    elif loss_type == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.size(0) * (max_completion_length or per_token.size(1)))
    else:  # bnpo, cispo: every token of the batch weighs the same
        loss = masked_mean(per_token, mask)
    return loss, metrics


@register
class GRPOObjective(RLObjective):
    name = "grpo"

    def __init__(self, cfg):
        super().__init__(cfg)
        a = self.args
        self.loss_type = a.get("loss_type", "grpo")
        if self.loss_type not in LOSS_TYPES:
            raise SystemExit(f"objective_args.loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        self.eps_low = float(a.get("epsilon", 0.2))
        self.eps_high = float(a.get("epsilon_high", 5.0 if self.loss_type == "cispo" else self.eps_low))
        self.group = int(a.get("group_size", 8))
        if self.group < 2:
            raise SystemExit("GRPO needs group_size >= 2 (advantages are relative to the group); SPO takes one reply")

    @property
    def samples_per_prompt(self) -> int:
        return self.group

    def policy_loss(
        self, model: nn.Module, items: list[dict], trajs: list[Trajectory], rewards: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        adv = group_advantages(rewards.float(), self.group, bool(self.args.get("scale_rewards", True)))
        # groups whose replies all scored the same teach nothing: worth watching on an easy or hard task
        zero_std = (rewards.view(-1, self.group).std(1) == 0).float().mean()
        keep, scale = informative_rows(trajs, adv, self.kl_coef, self.loss_type)
        rows = [trajs[i] for i in keep]
        batch = pack(rows, self.tokenizer.pad_id, self.device)
        ids, mask = batch["input_ids"], batch["loss_mask"]
        # each prompt once for its whole group (a ~300-token prompt, ~130 tokens per reply)
        shared = pack_shared(rows, self.tokenizer.pad_id, self.device)
        logps = token_logps(model, ids, self.sampling.temperature, mask, shared)
        loss, m = grpo_loss(
            logps,
            logps.detach(),
            self.ref_logps(ids, mask, shared),
            adv[keep].to(logps.device),
            mask,
            self.kl_coef,
            self.eps_low,
            self.eps_high,
            self.loss_type,
            self.sampling.max_new_tokens,
        )
        m["zero_std_groups"] = zero_std
        return loss * scale, m


def informative_rows(
    trajs: list[Trajectory], adv: torch.Tensor, kl_coef: float, loss_type: str
) -> tuple[list[int], float]:
    """Rows worth a forward and backward pass, and the factor that restores the full batch's normalisation.

    Without the KL term a reply with advantage 0 (every reply of its group scored the same) adds exactly
    nothing to the loss or the gradient, only to the denominator of the average. So those rows are left
    out and the loss over the rest is rescaled to the full batch's denominator: per reply (grpo, dr_grpo)
    n_kept / N, per token (bnpo, cispo) kept tokens / all tokens. The value and gradient are unchanged
    (tests/test_rl.py); a step where every group is uniform costs one row, weighted 0."""
    n = len(trajs)
    keep = list(range(n)) if kl_coef != 0.0 else [i for i in range(n) if adv[i] != 0]
    if not keep:
        return [0], 0.0
    if len(keep) == n:
        return keep, 1.0
    if loss_type in ("bnpo", "cispo"):
        return keep, sum(trajs[i].generated for i in keep) / max(sum(t.generated for t in trajs), 1)
    return keep, len(keep) / n

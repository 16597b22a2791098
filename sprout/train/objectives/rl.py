"""What every RL stage shares (grpo, ppo, spo, agent): prompts, rollouts, rewards, the reference model.

The dataset yields prompts (built-in verifiable tasks or an rlaif / agent_rl file, see
sprout/rl/tasks.py). `loss(model, batch)` samples replies from the current policy without
gradients, scores them, and hands trajectories and rewards to the subclass's `policy_loss`.
Sampling draws on the global torch RNG, which checkpoints restore, so a resumed run samples
exactly what the uninterrupted one would have.

Under the engine's evaluation (no gradients) the same prompts-in, rewards-out path runs greedily
on held-out prompts, so `val_reward` is held-out accuracy at temperature 0.

objective_args (all optional):
  task (calc | unit | date | add, a list to mix equally or a {task: share} mapping; default calc),
  tools (all | needed | none),
  n_prompts (2000), val_prompts (32), max_prompt_tokens (seq_len), max_new_tokens (64),
  temperature (1.0), top_k (0), thinking (false), rewards ({answer: 1.0}: component -> weight, see
  sprout/rl/rewards.py), min_tokens / max_tokens (length window), reward_model (folder of a
  sequence-classification model; adds component `model`), kl_coef (0.04), ref_model (folder;
  default the starting model), max_tool_rounds (0 = single turn; agent: 1), backend (local | openai),
  server_url, server_model, sync_dir (openai backend: folder the policy is written to after each step),
  sync_url (POSTed {"model_path": sync_dir} after writing).
  With data=FILE the prompts come from that rlaif (or agent_rl, when it has `gt`) file.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ...infer.generate import SamplingConfig
from ...models import SproutForCausalLM, load_model
from ...rl import rewards as R
from ...rl.rollout import (
    DiskSync,
    LocalBackend,
    OpenAIBackend,
    RolloutBackend,
    SharedPrompts,
    Trajectory,
    agent_rollouts,
    dump_samples,
    sample,
    token_logps,
)
from .base import Objective, sprout_model


class PromptDataset(Dataset):
    """Items index into the objective's prompt list; the collate keeps them as plain lists."""

    def __init__(self, ids: list[list[int]], offset: int = 0):
        self.ids, self.offset = ids, offset

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"idx": self.offset + i, "prompt": self.ids[i]}


class RLObjective(Objective):
    """Subclasses implement `policy_loss(model, items, trajs, rewards, parts)`; `samples_per_prompt`
    replies are drawn for each prompt (GRPO's group size)."""

    default_tool_rounds = 0

    @property
    def args(self) -> dict[str, Any]:
        return self.cfg.objective_args or {}

    def __init__(self, cfg):
        super().__init__(cfg)
        a = self.args
        self.kl_coef = float(a.get("kl_coef", 0.04))
        self.weights = {k: float(v) for k, v in (a.get("rewards") or {"answer": 1.0}).items()}
        if a.get("reward_model"):
            self.weights.setdefault("model", 1.0)
        elif "model" in self.weights:
            raise SystemExit("rewards.model needs objective_args.reward_model=FOLDER")
        R.score("", {}, 0, self.weights)  # unknown component names fail now, not after the first rollout
        self.tool_rounds = int(a.get("max_tool_rounds", self.default_tool_rounds))
        self.sampling = SamplingConfig(
            max_new_tokens=int(a.get("max_new_tokens", 64)),
            temperature=float(a.get("temperature", 1.0)),
            top_k=int(a.get("top_k", 0)),
            repetition_penalty=1.0,
        )
        self.items: list[dict] = []
        self.ref_model: nn.Module | None = None
        self.reward_scorer = None
        self.calls = 0  # loss() calls with gradients: drives the sample dump, kept in checkpoints

    @property
    def samples_per_prompt(self) -> int:
        return 1

    def build_lm(self, tokenizer: Any) -> SproutForCausalLM:
        if not self.cfg.model:
            raise SystemExit(f"{self.name} starts from a trained chat model: give model=DIR")
        return super().build_lm(tokenizer)

    # ---- setup -------------------------------------------------------------------------------
    def policy_of(self, model: nn.Module) -> SproutForCausalLM:
        """The causal LM inside what build_model returned (PPO wraps it with a value head)."""
        return sprout_model(model)

    def setup(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        policy = self.policy_of(model)
        if self.kl_coef > 0:
            ref = (
                load_model(self.args["ref_model"], device=device)
                if self.args.get("ref_model")
                else copy.deepcopy(policy)
            )
            self.ref_model = ref.eval().requires_grad_(False)  # no gradients, never updated
        if self.args.get("reward_model"):
            from ...rl.reward_model import RewardScorer

            self.reward_scorer = RewardScorer(self.args["reward_model"], device)
        self.backend = self._backend(policy)

    def _backend(self, policy: SproutForCausalLM) -> RolloutBackend:
        kind = self.args.get("backend", "local")
        if kind == "local":
            return LocalBackend(policy)
        if kind == "openai":
            if not self.args.get("server_url"):
                raise SystemExit("backend=openai needs objective_args.server_url (e.g. http://127.0.0.1:8000)")
            sync = DiskSync(self.args["sync_dir"], self.args.get("sync_url")) if self.args.get("sync_dir") else None
            return OpenAIBackend(
                self.args["server_url"],
                self.args.get("server_model", "sprout"),
                self.tokenizer,
                stop_id=self.sampling.stop_token_ids[0],
                on_sync=sync,
            )
        raise SystemExit(f"objective_args.backend must be local or openai, got {kind!r}")

    def on_optimizer_step(self, model: nn.Module) -> None:
        self.backend.sync(self.policy_of(model))

    # ---- data --------------------------------------------------------------------------------
    def load_tokenizer(self) -> Any:
        self.tokenizer = super().load_tokenizer()
        self.sampling.stop_token_ids = list(self.tokenizer.stop_ids)
        return self.tokenizer

    def _items(self, heldout: bool) -> list[dict]:
        from ...rl.tasks import builtin_items, file_items

        a = self.args
        if self.cfg.data:
            items = file_items(self.cfg.data, "rlaif", self.cfg.skip_invalid)
            n_val = int(a.get("val_prompts", 32))
            return items[:n_val] if heldout else items[n_val:]
        shares = task_shares(a.get("task", "calc"))
        kinds = list(shares)
        n = int(a.get("val_prompts", 32)) if heldout else int(a.get("n_prompts", 2000))
        per = split_count(n, list(shares.values()))
        items = [
            it
            for k, m in zip(kinds, per)
            for it in builtin_items(k, m, seed=self.cfg.seed, tools=a.get("tools", "all"), heldout=heldout)
        ]
        if len(kinds) > 1:  # interleave so every batch mixes the tasks
            import random

            random.Random(self.cfg.seed).shuffle(items)
        return items

    def _encode(self, item: dict) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            item["messages"],
            tools=item["tools"],
            add_generation_prompt=True,
            enable_thinking=bool(self.args.get("thinking", False)),
        )
        return self.tokenizer.encode(text)

    def datasets(self, tokenizer: Any) -> tuple[Dataset, Dataset | None]:
        limit = int(self.args.get("max_prompt_tokens", self.cfg.seq_len))
        out = []
        for heldout in (False, True):
            items = self._items(heldout)
            ids = [self._encode(it) for it in items]
            keep = [i for i, x in enumerate(ids) if len(x) <= limit]
            if not keep:
                raise SystemExit(f"every prompt is longer than max_prompt_tokens={limit}; raise it (or seq_len)")
            out.append(([items[i] for i in keep], [ids[i] for i in keep]))
        (train_items, train_ids), (val_items, val_ids) = out
        self.items = train_items + val_items
        return PromptDataset(train_ids), PromptDataset(val_ids, offset=len(train_items))

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"idx": torch.tensor([it["idx"] for it in items]), "prompts": [it["prompt"] for it in items]}

    def count_tokens(self, batch: dict[str, Any]) -> int:
        """Prompt tokens (the generated ones are only known after sampling; they are logged as gen_tokens)."""
        return sum(len(p) for p in batch["prompts"])

    # ---- rollouts and rewards -----------------------------------------------------------------
    @torch.no_grad()
    def rollouts(self, prompts: list[list[int]], greedy: bool = False) -> list[Trajectory]:
        sc = copy.copy(self.sampling)
        if greedy:
            sc.temperature = 0.0
        if self.tool_rounds > 0:
            return agent_rollouts(self.backend, self.tokenizer, prompts, sc, self.tool_rounds)
        trajs = sample(self.backend, prompts, sc)
        stops = set(sc.stop_token_ids or ())
        for t in trajs:
            toks = [x for x in t.pieces[0][0] if x not in stops]
            t.final_text = self._answer_text(self.tokenizer.decode(toks, skip_special_tokens=False))
        return trajs

    def _answer_text(self, text: str) -> str:
        """With thinking on, rewards see the whole reply (format checks need the think block)."""
        if self.args.get("thinking", False):
            return text.strip()
        from ...infer.chat import split_thinking

        return split_thinking(text)[1]

    def score(self, items: list[dict], trajs: list[Trajectory]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Rewards [N] and each component [N] (weighted sum = reward)."""
        a = self.args
        totals: list[float] = []
        parts: dict[str, list[float]] = {}
        for it, t in zip(items, trajs):
            total, p = R.score(
                t.final_text, it, t.generated, self.weights, int(a.get("min_tokens", 1)), int(a.get("max_tokens", 64))
            )
            totals.append(total)
            for k, v in p.items():
                parts.setdefault(k, []).append(v)
        rewards = torch.tensor(totals)
        comps = {k: torch.tensor(v) for k, v in parts.items()}
        if self.reward_scorer is not None:
            rm = self.reward_scorer.score(
                [it["messages"] + [{"role": "assistant", "content": t.final_text}] for it, t in zip(items, trajs)]
            ).cpu()
            comps["model"] = rm
            rewards = rewards + self.weights["model"] * rm
        return rewards, comps

    def scored_rollouts(
        self, items: list[dict], prompts: list[list[int]], k: int = 1, greedy: bool = False
    ) -> tuple[list[dict], list[Trajectory], torch.Tensor, dict[str, torch.Tensor]]:
        """k replies to each prompt (rows grouped by prompt), scored: (items repeated k times, trajectories,
        rewards [N * k], components)."""
        items = [it for it in items for _ in range(k)]
        trajs = self.rollouts([p for p in prompts for _ in range(k)], greedy=greedy)
        rewards, comps = self.score(items, trajs)
        return items, trajs, rewards, comps

    def reward_metrics(
        self, rewards: torch.Tensor, comps: dict[str, torch.Tensor], trajs: list[Trajectory]
    ) -> dict[str, Any]:
        m: dict[str, Any] = {"reward": rewards.mean(), "reward_std": rewards.std() if len(rewards) > 1 else 0.0}
        m.update({f"reward_{k}": v.mean() for k, v in comps.items()})
        m["gen_tokens"] = sum(t.generated for t in trajs) / len(trajs)
        # replies cut by max_new_tokens before their stop token: a cap below the task's reply length
        # (e.g. a tool call cut before </tool_call>) scores 0 whatever the policy does
        stops, cap = set(self.tokenizer.stop_ids), self.sampling.max_new_tokens
        own = [[toks for toks, mine in t.pieces if mine] for t in trajs]
        m["truncated"] = sum(bool(o) and len(o[-1]) >= cap and o[-1][-1] not in stops for o in own) / len(trajs)
        if self.tool_rounds > 0:
            m["tool_calls"] = sum(t.tool_calls for t in trajs) / len(trajs)
        return m

    # ---- the step ------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        items = [self.items[i] for i in batch["idx"].tolist()]
        if not torch.is_grad_enabled():  # the engine's evaluation: greedy replies to held-out prompts
            _, trajs, rewards, comps = self.scored_rollouts(items, batch["prompts"], greedy=True)
            return -rewards.mean(), self.reward_metrics(rewards, comps, trajs)
        return self.train_loss(model, items, batch["prompts"])

    def train_loss(
        self, model: nn.Module, items: list[dict], prompts: list[list[int]]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Sample `samples_per_prompt` replies per prompt, score them, and return the policy loss."""
        items, trajs, rewards, comps = self.scored_rollouts(items, prompts, self.samples_per_prompt)
        self._maybe_dump(trajs, rewards)
        loss, metrics = self.policy_loss(model, items, trajs, rewards.to(self.device))
        metrics.update(self.reward_metrics(rewards, comps, trajs))
        return loss, metrics

    def policy_loss(
        self, model: nn.Module, items: list[dict], trajs: list[Trajectory], rewards: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        raise NotImplementedError

    def _maybe_dump(self, trajs: list[Trajectory], rewards: torch.Tensor) -> None:
        """Every 10th rollout batch, a few decoded replies go to OUT/samples.jsonl (to read what is rewarded)."""
        if self.calls % 10 == 0:
            Path(self.cfg.out).mkdir(parents=True, exist_ok=True)
            dump_samples(trajs, self.tokenizer, rewards.tolist(), Path(self.cfg.out) / "samples.jsonl", n=2)
        self.calls += 1

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state.get("calls", 0))

    def ref_logps(
        self, input_ids: torch.Tensor, mask: torch.Tensor, shared: SharedPrompts | None = None
    ) -> torch.Tensor | None:
        if self.ref_model is None:
            return None
        with torch.no_grad():
            return token_logps(self.ref_model, input_ids, self.sampling.temperature, mask, shared)


def task_shares(task: Any) -> dict[str, float]:
    """objective_args.task as {kind: share}: a name, a list (equal shares) or a mapping (e.g. {calc: 3,
    unit: 1}, to spend the rollouts where the model is still wrong)."""
    if isinstance(task, str):
        return {task: 1.0}
    items = task.items() if isinstance(task, dict) else ((k, 1.0) for k in task)
    shares = {str(k): v for k, v in items}
    if not shares or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in shares.values()):
        raise SystemExit(f"objective_args.task needs at least one task with a positive share; got {task!r}")
    return {k: float(v) for k, v in shares.items()}


def split_count(n: int, shares: list[float]) -> list[int]:
    """n split in proportion to shares, summing to n exactly (largest remainders get the leftovers)."""
    exact = [n * s / sum(shares) for s in shares]
    out = [int(x) for x in exact]
    for i in sorted(range(len(shares)), key=lambda i: out[i] - exact[i])[: n - sum(out)]:
        out[i] += 1
    return out


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate k3 = exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased, low variance)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1

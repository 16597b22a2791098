"""RL: losses on hand-computed tensors, GRPO against TRL's own loss code, rewards, rollout masks,
the reward model read back by transformers, rollouts from sprout serve's app, and exact resume."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import FAMILIES, ctrl_c_at, save_tiny_chat_model, tiny_family_model, tiny_model
from safetensors.torch import load_file

from sprout.config import TrainConfig
from sprout.rl import rewards as R
from sprout.rl.rollout import (
    LocalBackend,
    OpenAIBackend,
    Trajectory,
    agent_rollouts,
    pack,
    pack_shared,
    token_logps,
    tool_turn_text,
)
from sprout.train.engine import train
from sprout.train.objectives.grpo import group_advantages, grpo_loss, informative_rows
from sprout.train.objectives.ppo import gae, last_token_mask, ppo_losses
from sprout.train.objectives.spo import ValueTracker, spo_loss


# ---- GRPO ---------------------------------------------------------------------------------------
def test_group_advantages_by_hand() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 3)
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # unbiased std of (1, 0, 0)
    assert torch.allclose(adv[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (std + 1e-4))
    assert torch.equal(adv[3:], torch.zeros(3))  # a group that all scored the same: no signal
    assert torch.allclose(group_advantages(r, 3, scale=False)[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]))


def test_grpo_loss_by_hand() -> None:
    # one reply, two tokens, ratio 1.5 on the first (clipped at 1.2 for A > 0) and 1 on the second
    logp = torch.log(torch.tensor([[0.3, 0.5]]))
    old = torch.log(torch.tensor([[0.2, 0.5]]))
    mask = torch.ones(1, 2)
    loss, m = grpo_loss(logp, old, None, torch.tensor([2.0]), mask, beta=0.0)
    assert loss.item() == pytest.approx(-(1.2 * 2 + 1.0 * 2) / 2)
    assert m["clip_ratio"].item() == pytest.approx(0.5)
    # k3 KL at logp = ref is 0; at ref = logp + log 2: 2 - log 2 - 1
    ref = logp + math.log(2.0)
    loss_kl, m = grpo_loss(logp, logp, ref, torch.tensor([0.0]), mask, beta=0.1)
    assert m["kl"].item() == pytest.approx(1 - math.log(2.0))
    assert loss_kl.item() == pytest.approx(0.1 * (1 - math.log(2.0)))


def _trl_stub(loss_type: str, beta: float, eps_high: float, logps: torch.Tensor, T: int):
    """The attributes GRPOTrainer._compute_loss reads, for one process, no accumulation; the model's
    per-token log-probs are handed in directly."""
    acc = SimpleNamespace(
        gather=lambda x: x,
        gather_for_metrics=lambda x: x,
        reduce=lambda x, reduction="sum": x,
        num_processes=1,
        sync_gradients=True,
    )
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        loss_type=loss_type,
        epsilon_low=0.2,
        epsilon_high=eps_high,
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=T,
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        accelerator=acc,
    )


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "cispo"])
def test_grpo_loss_equals_trl(loss_type: str) -> None:
    """Same value and same gradient as TRL's GRPOTrainer._compute_loss on identical tensors."""
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    g = torch.Generator().manual_seed(0)
    N, T = 6, 7
    base = torch.randn(N, T, generator=g) * 0.3 - 1.5
    old = base + torch.randn(N, T, generator=g) * 0.3  # ratios well outside [0.8, 1.2]: clipping matters
    ref = base + torch.randn(N, T, generator=g) * 0.2
    mask = (torch.rand(N, T, generator=g) > 0.25).float()
    mask[:, 0] = 1
    adv = group_advantages(torch.rand(N, generator=g), 3)
    eps_high = 1.3 if loss_type == "cispo" else 0.28

    ours_in = base.clone().requires_grad_(True)
    ours, _ = grpo_loss(
        ours_in,
        old,
        ref,
        adv,
        mask,
        beta=0.04,
        epsilon_low=0.2,
        epsilon_high=eps_high,
        loss_type=loss_type,
        max_completion_length=T,
    )
    ours.backward()

    trl_in = base.clone().requires_grad_(True)
    inputs = {
        "prompt_ids": torch.ones(N, 2, dtype=torch.long),
        "prompt_mask": torch.ones(N, 2, dtype=torch.long),
        "completion_ids": torch.ones(N, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    theirs = trl_grpo.GRPOTrainer._compute_loss(_trl_stub(loss_type, 0.04, eps_high, trl_in, T), None, inputs)
    theirs.backward()
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(ours_in.grad, trl_in.grad, atol=1e-7)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "cispo"])
def test_uniform_groups_are_skipped_without_changing_loss_or_gradient(loss_type: str) -> None:
    """Without KL, the rows of groups that all scored the same are left out of the forward pass; the
    rescaled loss over the rest equals the full batch's in value and gradient."""
    g = torch.Generator().manual_seed(1)
    N, T, G = 9, 6, 3
    logps = torch.randn(N, T, generator=g) * 0.3 - 1.5
    mask = (torch.rand(N, T, generator=g) > 0.3).float()
    mask[:, 0] = 1
    old = logps + torch.randn(N, T, generator=g) * 0.3  # ratios away from 1: the loss has a real value
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0])  # group 2 uniform
    adv = group_advantages(rewards, G)
    trajs = [Trajectory([5], [([7] * int(mask[i].sum()), True)]) for i in range(N)]
    full_in = logps.clone().requires_grad_(True)
    full, _ = grpo_loss(full_in, old, None, adv, mask, 0.0, loss_type=loss_type, max_completion_length=T)
    full.backward()
    keep, scale = informative_rows(trajs, adv, 0.0, loss_type)
    assert keep == [0, 1, 2, 6, 7, 8]
    part_in = logps.clone().requires_grad_(True)
    sel = part_in[keep]
    part, _ = grpo_loss(sel, old[keep], None, adv[keep], mask[keep], 0.0, loss_type=loss_type, max_completion_length=T)
    (part * scale).backward()
    assert (part * scale).item() == pytest.approx(full.item(), rel=1e-6)
    assert torch.allclose(part_in.grad, full_in.grad, atol=1e-7)
    assert informative_rows(trajs, adv, 0.04, loss_type) == (list(range(N)), 1.0)  # KL: every row counts
    assert informative_rows(trajs, torch.zeros(N), 0.0, loss_type) == ([0], 0.0)


def test_replies_cut_by_the_token_cap_are_counted() -> None:
    """`truncated`: the policy's last reply hit max_new_tokens without its stop token."""
    from types import SimpleNamespace

    from sprout.train.objectives.rl import RLObjective

    me = SimpleNamespace(
        tokenizer=SimpleNamespace(stop_ids=[2]), sampling=SimpleNamespace(max_new_tokens=3), tool_rounds=1
    )
    trajs = [
        Trajectory([1], [([5, 6, 7], True)]),  # cut at the cap
        Trajectory([1], [([5, 2], True)]),  # stopped early
        Trajectory([1], [([5, 6, 2], True), ([9] * 4, False), ([5, 6, 7], True)]),  # the answer after the tool is cut
        Trajectory([1], [([5, 6, 2], True)]),  # stopped exactly at the cap
    ]
    m = RLObjective.reward_metrics(me, torch.ones(4), {}, trajs)
    assert m["truncated"] == 0.5
    assert m["tool_calls"] == 0.0


def test_task_shares_split_the_prompts_in_proportion(tmp_path: Path) -> None:
    """objective_args.task={calc: 3, unit: 1}: three arithmetic prompts to one unit prompt, interleaved."""
    from sprout.train.objectives.rl import RLObjective, split_count

    assert split_count(10, [1.0, 1.0, 1.0]) == [4, 3, 3] and split_count(32, [3.0, 1.0]) == [24, 8]
    cfg = TrainConfig(
        stage="agent", out=str(tmp_path), objective_args={"task": {"calc": 3, "unit": 1}, "n_prompts": 40}
    )
    items = RLObjective(cfg)._items(heldout=False)
    kinds = [it["kind"] for it in items]
    assert kinds.count("calc") == 30 and kinds.count("unit") == 10 and kinds[:10] != sorted(kinds[:10])
    with pytest.raises(SystemExit, match="positive share"):
        RLObjective(TrainConfig(stage="agent", objective_args={"task": {"calc": 0}}))._items(heldout=False)
    with pytest.raises(SystemExit, match="positive share"):
        RLObjective(TrainConfig(stage="agent", objective_args={"task": {"calc": "lots"}}))._items(heldout=False)


# ---- PPO ----------------------------------------------------------------------------------------
def test_gae_by_hand_skips_masked_positions() -> None:
    # positions: prompt(0) | a(1) | tool(0) | b(1); reward 1 on b; gamma 1, lam 0.5
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    v = torch.tensor([[9.0, 0.2, 9.0, 0.5]])  # values at masked positions must not matter
    mask = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    adv, ret = gae(r, v, mask, gamma=1.0, lam=0.5)
    d_b = 1.0 - 0.5  # r + V_next(0) - V
    d_a = 0.0 + 0.5 - 0.2  # next policy token's value is b's, not the tool token's
    assert torch.allclose(adv, torch.tensor([[0.0, d_a + 0.5 * d_b, 0.0, d_b]]))
    assert torch.allclose(ret, torch.tensor([[0.0, d_a + 0.5 * d_b + 0.2, 0.0, d_b + 0.5]]))
    assert torch.equal(last_token_mask(mask), torch.tensor([[0.0, 0.0, 0.0, 1.0]]))


def test_ppo_value_clipping_and_ratio_clipping_by_hand() -> None:
    mask = torch.ones(1, 1)
    logp, old = torch.log(torch.tensor([[0.6]])), torch.log(torch.tensor([[0.4]]))  # ratio 1.5
    values, old_values, ret = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]])
    pg, vf, m = ppo_losses(logp, old, values, old_values, torch.tensor([[1.0]]), ret, mask, 0.2, 0.2)
    assert pg.item() == pytest.approx(-1.2)
    # unclipped (1 - 2)^2 = 1, clipped (0.2 - 2)^2 = 3.24: the max is taken
    assert vf.item() == pytest.approx(0.5 * 3.24)
    assert m["approx_kl"].item() == pytest.approx(math.log(0.4) - math.log(0.6))


# ---- SPO ----------------------------------------------------------------------------------------
def test_spo_loss_and_tracker_by_hand() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    loss, _ = spo_loss(logp, None, torch.tensor([1.0, -2.0]), mask, beta=0.0)
    want = -(1 * math.log(0.5) + 1 * math.log(0.25) - 2 * math.log(0.5)) / 3
    assert loss.item() == pytest.approx(want)

    t = ValueTracker(kl_half=0.1, rho_min=0.5, rho_max=0.9)
    t.update("calc", [1.0, 0.0], kl_now=0.0)
    assert t.value("calc", 0.0) == pytest.approx(0.5)
    assert t.rho("calc", 0.0) == pytest.approx(0.9)  # no drift: the slowest forgetting allowed
    assert t.rho("calc", 0.1) == pytest.approx(0.5)  # drift of one half-life: 2^-1
    t.update("calc", [1.0], kl_now=0.1)  # rho 0.5: num 0.5 * 1 + 1, den 0.5 * 2 + 1
    assert t.value("calc", 0.0) == pytest.approx(1.5 / 2.0)
    assert t.value("other", 0.3) == 0.3


# ---- rewards ------------------------------------------------------------------------------------
def test_rule_rewards() -> None:
    assert R.answer_matches("7 * 6 = 42. The answer is 42.", ["42"])
    assert not R.answer_matches("42 is 40 + 2, so the answer is 41", ["42"])  # the last number counts
    assert R.answer_matches("答案是 3.5。", "3.50")
    assert R.answer_matches("2021-01-31 + 30 days = 2021-03-02.", ["2021-03-02"])
    assert not R.answer_matches("2021-03-02", ["2021-03-03"])
    assert R.think_format("<think>\n6*7\n</think>\n\n42") == 1.0
    assert R.think_format("<think>\n\n</think>\n\n42") == 0.0  # empty thinking
    assert R.think_format("42 <think>x</think>") == 0.0
    assert R.length_window(10, 1, 64) == 1.0 and R.length_window(96, 1, 64) == 0.5 and R.length_window(200, 1, 64) == 0
    assert R.repetition("a b c a b c a b c") == pytest.approx(-(1 - 3 / 7))
    total, parts = R.score("The answer is 12.", {"gt": ["12"]}, 5, {"answer": 1.0, "length": 0.5, "number": 0.1})
    assert parts == {"answer": 1.0, "length": 1.0, "number": 1.0} and total == pytest.approx(1.6)
    with pytest.raises(SystemExit):
        R.score("", {}, 0, {"bogus": 1.0})


# ---- rollouts -----------------------------------------------------------------------------------
class _Scripted:
    """A backend that replies with fixed texts, in turn (stands in for the policy)."""

    def __init__(self, tok, replies: list[str]):
        self.tok, self.replies = tok, list(replies)

    def complete(self, prompts, sc):
        return [self.tok.encode(self.replies.pop(0)) + [2] for _ in prompts]

    def sync(self, model):
        pass


def test_agent_rollout_runs_the_tool_and_masks_its_output() -> None:
    from sprout.infer.generate import SamplingConfig
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "128 * 37"}}\n</tool_call>'
    prompt = tok.encode(
        tok.apply_chat_template(
            [{"role": "user", "content": "128*37?"}], add_generation_prompt=True, enable_thinking=False
        )
    )
    (traj,) = agent_rollouts(
        _Scripted(tok, [call, "The answer is 4736."]), tok, [prompt], SamplingConfig(stop_token_ids=tok.stop_ids), 1
    )
    assert traj.tool_calls == 1 and traj.final_text == "The answer is 4736."
    (gen1, own1), (tool, own2), (gen2, own3) = traj.pieces
    assert (own1, own2, own3) == (True, False, True)
    assert tok.decode(tool) == tool_turn_text(["4736"])  # the real calculator's output was fed back
    # the whole rollout is token for token what the chat template renders for this conversation
    conv = [
        {"role": "user", "content": "128*37?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"name": "calculator", "arguments": {"expression": "128 * 37"}}],
        },
        {"role": "tool", "content": "4736"},
        {"role": "assistant", "content": "The answer is 4736."},
    ]
    assert tok.decode(traj.ids()) == tok.apply_chat_template(conv).rstrip("\n")
    batch = pack([traj, Trajectory(prompt[:3], [([5, 6], True)])], pad_id=0)
    m = batch["loss_mask"]
    start = len(prompt)
    assert m[0, start - 1 : start - 1 + len(gen1)].eq(1).all()
    assert m[0, start - 1 + len(gen1) : start - 1 + len(gen1) + len(tool)].eq(0).all()
    assert m[0].sum() == len(gen1) + len(gen2)
    assert m[1].tolist()[:4] == [0, 0, 1, 1] and m[1].sum() == 2  # padding is never a target


def test_masked_token_logps_equal_the_full_projection() -> None:
    from sprout.rl.rollout import token_logps

    model = tiny_model(0)
    ids = torch.randint(3, 512, (3, 9))
    mask = (torch.rand(3, 8) > 0.5).float()
    with torch.no_grad():
        full = token_logps(model, ids, 0.7)
        part = token_logps(model, ids, 0.7, mask)
    assert torch.allclose(part, full * mask, atol=1e-6)
    want = torch.log_softmax(model(ids).logits[0, 2] / 0.7, -1)[ids[0, 3]]
    assert full[0, 2].item() == pytest.approx(want.item(), abs=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shared_prompt_layout_gives_the_same_logps_and_gradients(family: str) -> None:
    """Groups of replies (with a tool output between two policy turns) to two prompts, plus a lone
    reply: the prompt-once layout gives pack's log-probabilities and parameter gradients, in every
    family (Qwen3-Next, whose linear layers ignore masks, takes pack's rows instead)."""
    model = tiny_family_model(family)
    g = torch.Generator().manual_seed(1)

    def toks(n: int) -> list[int]:
        return torch.randint(3, 512, (n,), generator=g).tolist()

    trajs = []
    for P in (5, 9):
        prompt = toks(P)
        for k in range(3):
            trajs.append(Trajectory(prompt, [(toks(2 + k), True), (toks(3), False), (toks(1 + 2 * k), True)]))
    trajs.append(Trajectory(toks(4), [(toks(6), True)]))
    b = pack(trajs, 0)
    ids, mask = b["input_ids"], b["loss_mask"]
    shared = pack_shared(trajs, 0)
    assert shared.input_ids.shape[0] == 3  # one row per distinct prompt
    assert shared.input_ids.numel() < ids.numel()
    params = [p for p in model.parameters() if p.requires_grad]
    plain = token_logps(model, ids, 0.7, mask)
    once = token_logps(model, ids, 0.7, mask, shared)
    assert torch.equal(once != 0, mask > 0)
    assert torch.allclose(once, plain, atol=1e-5)
    g_plain = torch.autograd.grad(plain.sum(), params, allow_unused=True)
    g_once = torch.autograd.grad(once.sum(), params, allow_unused=True)
    for a, b_ in zip(g_plain, g_once):
        assert (a is None) == (b_ is None)
        if a is not None:
            assert torch.allclose(a, b_, atol=1e-5)


def test_openai_backend_against_sprout_serve_app() -> None:
    """Rollouts from sprout serve's app (in-process) equal local sampling with the same weights; the
    weight-sync hook is what makes the server follow the policy."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from sprout.infer.generate import SamplingConfig
    from sprout.infer.server import ModelRegistry, ServeSettings, create_app
    from sprout.tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(default_tokenizer_dir())
    served, policy = tiny_model(1, vocab_size=tok.vocab_size), tiny_model(2, vocab_size=tok.vocab_size)
    with torch.no_grad():
        for p in list(served.parameters()) + list(policy.parameters()):
            if p.dim() == 2:
                p.mul_(20)  # lively: greedy decoding wanders instead of repeating one token
    registry = ModelRegistry(ServeSettings())
    registry.add("tiny", served, tok)

    def synced(m):  # in-process weight sync
        served.load_state_dict(m.state_dict())

    prompts = [tok.encode("Hello there"), tok.encode("Count: 1 2 3")]
    sc = SamplingConfig(max_new_tokens=6, temperature=0.0)
    with TestClient(create_app(registry)) as client:
        backend = OpenAIBackend("http://test", "tiny", tok, on_sync=synced, client=client)
        before = backend.complete(prompts, sc)
        backend.sync(policy)
        after = backend.complete(prompts, sc)
    local = LocalBackend(policy).complete(prompts, sc)
    assert after == local and before != after
    assert all(0 < len(x) <= 6 for x in after)


# ---- reward model -------------------------------------------------------------------------------
def test_reward_model_folder_loads_in_transformers(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from sprout.rl.reward_model import RewardModel, RewardScorer

    _, tok = save_tiny_chat_model(tmp_path / "lm")
    from sprout.models import load_model

    rm = RewardModel(load_model(tmp_path / "lm")).eval()
    rm.save(tmp_path / "rm")
    tok.save(tmp_path / "rm")
    convs = [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    ]
    ids = [tok.encode(tok.apply_chat_template(c)) for c in convs]
    T = max(map(len, ids))
    x = torch.tensor([i + [0] * (T - len(i)) for i in ids])
    att = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])
    with torch.no_grad():
        ours = rm(x, att)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        theirs = hf(input_ids=x, attention_mask=att).logits[:, 0]
    assert type(hf).__name__ == "Qwen3ForSequenceClassification"
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.allclose(RewardScorer(tmp_path / "rm").score(convs), theirs, atol=1e-5)
    assert ours[0] != ours[1]


# ---- exact resume -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rl_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny policy, and a random tiny reward model so that rewards vary between rollouts."""
    from sprout.models import load_model
    from sprout.rl.reward_model import RewardModel

    root = tmp_path_factory.mktemp("rl")
    _, tok = save_tiny_chat_model(root / "lm")
    RewardModel(load_model(root / "lm")).save(root / "rm")
    tok.save(root / "rm")
    return {"policy": root / "lm", "rm": root / "rm"}


@pytest.mark.parametrize("stage", ["grpo", "ppo", "spo", "agent"])
def test_rl_stop_and_resume_matches_uninterrupted(stage: str, rl_models: dict, tmp_path: Path) -> None:
    args = {
        "task": "add",
        "tools": "none",
        "n_prompts": 16,
        "val_prompts": 2,
        "max_new_tokens": 6,
        "group_size": 2,
        "reward_model": str(rl_models["rm"]),
        "rewards": {"model": 1.0},
        "kl_coef": 0.1,
        "ppo_epochs": 2,
        "minibatches": 2,
        "target_kl": 100.0,
    }
    if stage == "agent":
        args.update(task="calc", tools="needed")

    def cfg(out: Path, **kw) -> TrainConfig:
        return TrainConfig(
            stage=stage,
            model=str(rl_models["policy"]),
            out=str(out),
            seq_len=512,
            batch_size=2,
            max_steps=6,
            eval_every=0,
            log_every=1,
            save_every=0,
            lr=1e-3,
            seed=3,
            device="cpu",
            dtype="fp32",
            objective_args=dict(args),
            **kw,
        )

    straight = tmp_path / "straight"
    train(cfg(straight))
    resumed = tmp_path / "resumed"
    train(cfg(resumed), on_step=ctrl_c_at(3))  # PPO: stops in the middle of a rollout's minibatches
    train(cfg(resumed, resume=True))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    start = load_file(str(rl_models["policy"] / "model.safetensors"))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the policy did move
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ---- sprout eval rl ------------------------------------------------------------------------------
def test_eval_rl_interval_by_hand() -> None:
    from sprout.eval.rl_reward import interval

    got = interval([1.0, 0.0, 1.0, 0.0])
    half = 1.96 * math.sqrt((4 * 0.25 / 3) / 4)
    assert got == {"mean": 0.5, "low": round(0.5 - half, 4), "high": round(0.5 + half, 4)}


def test_eval_rl_greedy_and_sampled_on_held_out_prompts(rl_models: dict, tmp_path: Path, capsys) -> None:
    import json

    from sprout.cli import main

    def run(*extra: str) -> dict:
        main(
            ["eval", "rl", str(rl_models["policy"]), "-n", "6", "--samples", "3", "--batch", "4", "seq_len=512"]
            + ["objective_args.task=add", "objective_args.tools=none", "objective_args.max_tool_rounds=0"]
            + ["objective_args.max_new_tokens=6", f"objective_args.reward_model={rl_models['rm']}"]
            + ["objective_args.rewards={model: 1.0}", *extra]
        )
        return json.loads(capsys.readouterr().out)

    hot = run("--out", str(tmp_path / "hot.json"))
    assert hot["prompts"] == 6 and hot["samples"] == 3 and hot["stage"] == "grpo"
    assert hot["greedy"]["low"] <= hot["greedy"]["mean"] <= hot["greedy"]["high"]
    assert hot["sampled"]["mean"] != hot["greedy"]["mean"]  # temperature 1 replies differ from greedy ones
    saved = json.loads((tmp_path / "hot.json").read_text())
    assert len(saved["per_prompt"]["sampled"]) == 6
    assert sum(saved["per_prompt"]["greedy"]) / 6 == pytest.approx(hot["greedy"]["mean"], abs=1e-3)
    # sampling at temperature 0 is greedy decoding; greedy does not depend on the temperature
    cold = run("objective_args.temperature=0", "--compare", str(tmp_path / "hot.json"))
    assert cold["sampled"]["mean"] == pytest.approx(cold["greedy"]["mean"], abs=1e-4)
    assert cold["greedy"] == hot["greedy"]
    assert cold["change"]["greedy"] == {"mean": 0.0, "low": 0.0, "high": 0.0}  # same prompts, same replies
    diffs = [c - h for c, h in zip(saved["per_prompt"]["greedy"], saved["per_prompt"]["sampled"])]
    assert cold["change"]["sampled"]["mean"] == pytest.approx(sum(diffs) / 6, abs=1e-3)


def test_eval_rl_compare_rejects_other_files(rl_models: dict, tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "notes.json"
    bad.write_text('{"greedy": 0.5}')
    r = subprocess.run(
        [sys.executable, "-m", "sprout.cli", "eval", "rl", str(rl_models["policy"]), "--compare", str(bad)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{bad}: not a `sprout eval rl --out` file" in r.stderr


def test_eval_rl_compare_mismatch_stops_before_evaluating(tmp_path: Path) -> None:
    """A --compare file with another sample count is refused before any model is loaded (the model
    folder here does not even exist), with the key that differs."""
    import json
    import subprocess
    import sys

    before = tmp_path / "before.json"
    per_prompt = {"greedy": [1.0], "sampled": [0.5]}
    saved = {"stage": "grpo", "task": "calc", "samples": 4, "prompts": 1, "per_prompt": per_prompt}
    before.write_text(json.dumps(saved))
    cmd = [sys.executable, "-m", "sprout.cli", "eval", "rl", str(tmp_path / "no-model"), "--recipe", "grpo"]
    r = subprocess.run([*cmd, "--samples", "2", "--compare", str(before)], capture_output=True, text=True)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"{before}: --compare: the two evaluations differ in samples (4 vs 2)" in r.stderr

"""Training stages by name, importable without torch (for `sprout train --help` and argument errors).

Each stage maps to the module under sprout/train/objectives/ whose `@register`ed Objective carries that
name, plus a one-line summary. A new stage is one line here and one Objective class there.
"""

from __future__ import annotations

STAGES: dict[str, tuple[str, str]] = {
    "pretrain": ("lm", "next-token prediction on plain text"),
    "sft": ("lm", "supervised fine-tuning on conversations (loss on assistant tokens)"),
    "lora": ("lora", "SFT of low-rank adapters on a frozen base model"),
    "dpo": ("dpo", "direct preference optimisation on chosen/rejected pairs"),
    "distill": ("distill", "white-box distillation: match a teacher's next-token distribution"),
    "reasoning": ("reasoning", "SFT with <think> blocks; the tag tokens can weigh more"),
    "tools": ("reasoning", "SFT on tool calls and tool results"),
    "reward": ("reward", "Bradley-Terry reward model (scalar head) from preference pairs"),
    "grpo": ("grpo", "RL: group-relative advantages, clipped ratio, k3 KL (loss_type=cispo too)"),
    "ppo": ("ppo", "RL: actor + value head, GAE, value clipping, minibatch epochs, KL early stop"),
    "spo": ("spo", "RL: one reply per prompt against an adaptive value baseline"),
    "agent": ("agent", "RL with multi-turn rollouts that call the real tools"),
}


def stages_help() -> str:
    """The stage list as `name: summary` lines, for argparse help."""
    return "\n".join(f"  {name:<10} {summary}" for name, (_, summary) in STAGES.items())

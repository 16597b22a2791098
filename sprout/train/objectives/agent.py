"""`sprout train agent`: agentic RL — multi-turn rollouts in which the policy calls the real tools.

A rollout is what `sprout chat --tools` does: the policy replies; each <tool_call> block in the reply
is executed with sprout.tools (calculator, unit_convert, date_calc), the results go back as a tool
turn, and the policy writes its answer (up to max_tool_rounds rounds). The tool turns are context,
not actions: their tokens are masked out of the loss. The reward compares the final answer with the
ground truth (`gt`: the last number must equal it, a date must appear verbatim). The update is
GRPO's (group-relative advantages, clipped ratio, k3 KL to the reference; grpo.py).
Prompts: built-in tool questions (task: [calc, unit] by default, every tool listed, the held-out eval
questions never used) or data=FILE in MiniMind's agent_rl format (conversations, tools on the system
message, gt). objective_args as grpo, with max_tool_rounds (1) and task / tools.
"""

from __future__ import annotations

from . import register
from .grpo import GRPOObjective


@register
class AgentObjective(GRPOObjective):
    name = "agent"
    default_tool_rounds = 1

    def __init__(self, cfg):
        cfg.objective_args = {"task": ["calc", "unit"], "tools": "all", **(cfg.objective_args or {})}
        super().__init__(cfg)
        if self.tool_rounds < 1:
            raise SystemExit("agent rollouts need max_tool_rounds >= 1 (use grpo for single-turn replies)")

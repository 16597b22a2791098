"""A folder of one's own data in MiniMind's layout: which file feeds which stage.

MiniMind's dataset release (and a user's copy of its layout) names files by their job:

    pretrain_hq.jsonl            -> pretrain     {"text"}
    sft_mini_512.jsonl, sft_*    -> sft          {"conversations"}   (sft_mini_512 first, then 512/1024/2048)
    dpo.jsonl                    -> dpo          {"chosen", "rejected"}
    r1_mix_1024.jsonl            -> reasoning    conversations with <think> blocks
    rlaif-mini.jsonl             -> rl_prompts   prompts for the RL stages
    lora_*.jsonl                 -> lora         (lora_identity first)

`stage_files` finds them anywhere under the folder (first match in sorted order wins per name).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

# stage -> file-name patterns, most preferred first
STAGE_PATTERNS: dict[str, tuple[str, ...]] = {
    "pretrain": ("pretrain_hq.jsonl", "pretrain*.jsonl"),
    "sft": ("sft_mini_512.jsonl", "sft_512.jsonl", "sft_1024.jsonl", "sft_2048.jsonl", "sft_*.jsonl"),
    "dpo": ("dpo.jsonl", "dpo*.jsonl"),
    "reasoning": ("r1_mix_1024.jsonl", "r1_mix*.jsonl"),
    "rl_prompts": ("rlaif-mini.jsonl", "rlaif*.jsonl"),
    "lora": ("lora_identity.jsonl", "lora_*.jsonl"),
}


def stage_files(data_dir: str | Path) -> dict[str, Path]:
    """{stage: file} for every stage whose file is in `data_dir` (searched recursively)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise SystemExit(f"--data-dir {root}: not a folder")
    files = sorted(p for p in root.rglob("*.jsonl") if p.is_file())
    found: dict[str, Path] = {}
    for stage, patterns in STAGE_PATTERNS.items():
        for pattern in patterns:
            hit = next((f for f in files if fnmatch.fnmatch(f.name, pattern)), None)
            if hit:
                found[stage] = hit
                break
    return found


def require(found: dict[str, Path], data_dir: str | Path, stages: tuple[str, ...]) -> dict[str, Path]:
    """The files of `stages`, or a message saying which are missing and how to get them."""
    missing = [s for s in stages if s not in found]
    if missing:
        want = ", ".join(f"{s} ({STAGE_PATTERNS[s][0]})" for s in missing)
        raise SystemExit(
            f"{data_dir}: no file for {want}. Put your own jsonl there under that name, or get "
            f"MiniMind's with `sprout data download minimind --out {data_dir}` (see docs/data.md)"
        )
    return {s: found[s] for s in stages}

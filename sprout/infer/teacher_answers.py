"""Black-box distillation: a teacher model answers prompts and the answers become an SFT file.

    sprout distill generate --teacher DIR --prompts FILE|builtin:domain --out answers.jsonl [--lora ADAPTER]

Each prompt is a conversation whose last message is from the user (an SFT record whose trailing
assistant turn, if any, is dropped) or a plain `{"prompt": "..."}` line. The teacher's reply is
appended as the assistant turn and the record written in the normal SFT format, which
`sprout train sft --data answers.jsonl` consumes. Prompts are generated in batches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .generate import SamplingConfig, generate


def _prompt_messages(rec: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "prompt" in rec:
        return [{"role": "user", "content": str(rec["prompt"])}]
    msgs = rec.get("conversations", rec.get("messages"))
    if not isinstance(msgs, list):
        return None
    msgs = [dict(m) for m in msgs]
    while msgs and msgs[-1].get("role") == "assistant":
        msgs.pop()
    return msgs if msgs and msgs[-1].get("role") == "user" else None


def load_prompts(source: str, limit: int | None = None) -> list[list[dict[str, Any]]]:
    """Prompts from a jsonl file, or `builtin:NAME` (a set of sprout.data.builtin_sets)."""
    if source.startswith("builtin:"):
        from ..data.builtin_sets import BUILDERS

        records: Iterable[dict] = BUILDERS[source.split(":", 1)[1]]()
    else:
        with open(source, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    out = []
    for rec in records:
        msgs = _prompt_messages(rec)
        if msgs:
            out.append(msgs)
        if limit and len(out) >= limit:
            break
    return out


def generate_sft(
    model,
    tokenizer,
    prompts: list[list[dict[str, Any]]],
    out: str | Path,
    sampling: SamplingConfig,
    batch_size: int = 16,
    enable_thinking: bool = False,
    progress=print,
) -> Path:
    """Write one SFT record per prompt: the prompt messages plus the teacher's answer."""
    from ..infer.chat import split_thinking

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if sampling.stop_token_ids is None:  # stop where the teacher's tokenizer ends a turn
        sampling = replace(sampling, stop_token_ids=tokenizer.stop_ids)
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as f, torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            chunk = prompts[s : s + batch_size]
            ids = [
                tokenizer.encode(
                    tokenizer.apply_chat_template(m, add_generation_prompt=True, enable_thinking=enable_thinking)
                )
                for m in chunk
            ]
            for msgs, new in zip(chunk, generate(model, ids, sampling)):
                reasoning, answer = split_thinking(tokenizer.decode(new, skip_special_tokens=False))
                if not answer:
                    continue
                reply: dict[str, Any] = {"role": "assistant", "content": answer}
                if reasoning:
                    reply["reasoning_content"] = reasoning
                f.write(json.dumps({"conversations": msgs + [reply]}, ensure_ascii=False) + "\n")
                written += 1
            if progress:
                progress(f"{min(s + batch_size, len(prompts))}/{len(prompts)} prompts answered")
    os.replace(tmp, out)
    if progress:
        progress(f"wrote {written} SFT records to {out}")
    return out

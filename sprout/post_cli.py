"""Command-line pieces of the post-training stages, for sprout/cli.py to mount:

    sprout export merge-lora --model BASE --lora ADAPTER --out DIR   (gguf / ollama: sprout/export/cli.py)
    sprout distill generate --teacher DIR --prompts FILE|builtin:NAME --out FILE
    sprout chat ... --lora ADAPTER --tools [calculator,unit_convert,date_calc]
"""
from __future__ import annotations

import argparse


def cmd_merge_lora(a: argparse.Namespace) -> None:
    from .export.merge_lora import merge_lora_folder

    out = merge_lora_folder(a.model, a.lora, a.out)
    print(f"merged {a.lora} into {a.model}: {out}")


def cmd_distill_generate(a: argparse.Namespace) -> None:
    from .infer.chat import load_chat_model
    from .infer.teacher_answers import generate_sft, load_prompts
    from .infer.generate import SamplingConfig

    model, tok = load_chat_model(a.teacher, a.lora, a.device)
    prompts = load_prompts(a.prompts, a.limit)
    sampling = SamplingConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                              repetition_penalty=a.repetition_penalty, seed=a.seed)
    generate_sft(model, tok, prompts, a.out, sampling, batch_size=a.batch_size, enable_thinking=a.think)


def add_post_training_commands(sub: argparse._SubParsersAction) -> None:
    """Add `export merge-lora` and `distill generate` to sprout's top-level subparsers."""
    from .export.cli import add_export_commands

    ex = sub.add_parser("export", help="export models: merge a LoRA adapter, GGUF (llama.cpp), Ollama").add_subparsers(
        dest="action", required=True)
    add_export_commands(ex)
    p = ex.add_parser("merge-lora", help="fold a LoRA adapter into its base model (a standalone HF folder)")
    p.add_argument("--model", required=True, help="base model folder the adapter was trained on")
    p.add_argument("--lora", required=True, help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge_lora)

    ds = sub.add_parser("distill", help="black-box distillation").add_subparsers(dest="action", required=True)
    p = ds.add_parser("generate", help="a teacher answers prompts; writes an SFT jsonl for `sprout train sft`")
    p.add_argument("--teacher", required=True, help="teacher model folder")
    p.add_argument("--lora", help="optional adapter on the teacher")
    p.add_argument("--prompts", required=True, help="jsonl of SFT records / {'prompt': ...}, or builtin:NAME")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--think", action="store_true", help="let the teacher think (kept as reasoning_content)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_distill_generate)


def add_chat_flags(p: argparse.ArgumentParser) -> None:
    """--lora and --tools for `sprout chat`."""
    p.add_argument("--lora", help="LoRA adapter folder applied unmerged on top of --model")
    p.add_argument("--tools", nargs="?", const="all", default=None,
                   help="let the model call tools (comma-separated names; default all: calculator,unit_convert,date_calc)")


def chat_tools(value: str | None):
    """The --tools value -> tool specs for ChatSession(tools=...)."""
    if not value:
        return None
    from .tools import TOOLS, tool_specs

    names = list(TOOLS) if value == "all" else [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown tool(s) {', '.join(unknown)}; available: {', '.join(TOOLS)}")
    return tool_specs(names)

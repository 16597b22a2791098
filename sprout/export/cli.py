"""`sprout export gguf` and `sprout export ollama` (mounted on the `export` verb by sprout/post_cli.py)."""
from __future__ import annotations

import argparse


def cmd_gguf(a: argparse.Namespace) -> None:
    from .gguf_export import export_gguf

    out = export_gguf(a.model, a.out, a.dtype, a.lora)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB); run it with llama.cpp: llama-cli -m {out}")


def cmd_ollama(a: argparse.Namespace) -> None:
    from .ollama import export_ollama

    path, commands = export_ollama(a.model, a.out, a.dtype, a.lora, a.name)
    print(f"wrote {path} and {path.parent / 'model.gguf'}; then:\n{commands}")


def add_export_commands(ex: argparse._SubParsersAction) -> None:
    from .gguf_export import DTYPES

    for name, func, default, what in (("gguf", cmd_gguf, "f16", "FILE.gguf"),
                                      ("ollama", cmd_ollama, "q8_0", "a folder (model.gguf + Modelfile)")):
        p = ex.add_parser(name, help=f"write {what} for llama.cpp" + (" / Ollama" if name == "ollama" else ""))
        p.add_argument("--model", required=True, help="model folder, or a LoRA adapter folder (merged into its base)")
        p.add_argument("--lora", help="LoRA adapter folder to merge into --model first")
        p.add_argument("--out", required=True, help=what)
        p.add_argument("--dtype", default=default, choices=DTYPES, help=f"weight type (default {default})")
        if name == "ollama":
            p.add_argument("--name", help="model name for `ollama create` (default: the folder's name)")
        p.set_defaults(func=func)

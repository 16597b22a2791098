"""The `sprout` command: parse arguments, then call one function per verb.

Verbs import their implementation when they run; feature modules only register their arguments here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """The flags every training stage shares, spelled the same everywhere."""
    p.add_argument("--recipe", help="built-in recipe name or YAML file (see sprout/recipes/)")
    p.add_argument("--data", help="training data: a .jsonl/.parquet file or a folder of shards (default: built-in data)")
    p.add_argument("--data-dir", help="your data in MiniMind's layout: --data becomes the stage's file (docs/data.md)")
    p.add_argument("--model", help="start from this model folder (default: a fresh model of --preset)")
    p.add_argument("--preset", help="model preset for a fresh model: cpu, minimind2-small, minimind2, minimind3, "
                   "cpu-moe, minimind2-moe, minimind3-moe, mini-deepseekv3, mini-qwen3-next, ...")
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model's, else sprout's built-in tokenizer)")
    p.add_argument("--out", help="output folder (checkpoints, metrics, final model)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--max-tokens", type=int, help="stop after this many training tokens")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes (the LR schedule follows the clock)")
    p.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--resume", action="store_true", default=None, help="continue exactly from --out's latest checkpoint")
    p.add_argument("--skip-invalid", action="store_true", default=None, help="skip malformed records and report how many")
    # KEY=VALUE overrides may appear anywhere after the stage; main() collects them (see below).


def cmd_train(a: argparse.Namespace) -> None:
    from .config import build_train_config
    from .train.engine import train

    if a.data_dir and not a.data:
        from .data.data_dir import require, stage_files

        a.data = str(require(stage_files(a.data_dir), a.data_dir, (a.stage,))[a.stage])
    flags = {"data": a.data, "model": a.model, "preset": a.preset, "tokenizer": a.tokenizer, "out": a.out,
             "max_steps": a.max_steps, "max_tokens": a.max_tokens, "max_minutes": a.max_minutes, "epochs": a.epochs,
             "resume": a.resume, "skip_invalid": a.skip_invalid}
    cfg = build_train_config(a.recipe, a.stage, flags, a.overrides)
    train(cfg)


def cmd_tokenizer_train(a: argparse.Namespace) -> None:
    from .tokenizer import build_default_tokenizer, train_tokenizer_from_files

    if a.data:
        tok = train_tokenizer_from_files(a.data, a.vocab_size, a.out)
    else:
        tok = build_default_tokenizer(a.out, vocab_size=a.vocab_size)
    print(f"tokenizer with {tok.vocab_size} tokens written to {a.out}")


def cmd_data_download(a: argparse.Namespace) -> None:
    from .data.builtin import download_minimind

    download_minimind(a.out, a.files)


def cmd_data_validate(a: argparse.Namespace) -> None:
    from .data.readers import ReadStats, read_records

    stats = ReadStats()
    n = sum(1 for _ in read_records(a.path, a.kind, skip_invalid=a.skip_invalid, stats=stats))
    print(f"{a.path}: {n} valid {a.kind} records" + (f", {stats.skipped} invalid skipped" if stats.skipped else ""))
    for msg in stats.errors:
        print("  " + msg)


def cmd_chat(a: argparse.Namespace) -> None:
    from .infer.chat import ChatSession, load_chat_model, run_chat
    from .post_cli import chat_tools

    model, tok = load_chat_model(a.model, a.lora, a.device, a.rope_scaling)
    run_chat(ChatSession(model, tok, _sampling(a), system=a.system, thinking=a.think, tools=chat_tools(a.tools)))


def _sampling(a: argparse.Namespace):
    from .infer.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                          top_p=a.top_p, repetition_penalty=a.repetition_penalty,
                          frequency_penalty=a.frequency_penalty, seed=a.seed)


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="divide logits of tokens already in the context")
    p.add_argument("--frequency-penalty", type=float, default=0.3,
                   help="subtract this per earlier occurrence in the reply (breaks loops; 0 = off)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int)
    p.add_argument("--rope-scaling", help="extend the context at inference: KIND:FACTOR[:TRAINED_LEN], "
                                          "KIND in linear, ntk, yarn (e.g. yarn:4:512)")


def cmd_speedrun(a: argparse.Namespace) -> None:
    from .speedrun import speedrun

    speedrun(out=Path(a.out), recipe=a.recipe, data_dir=a.data_dir, minutes=a.minutes, tokenizer=a.tokenizer,
             max_steps=a.max_steps, eval_questions=a.eval_questions)


def build_parser() -> argparse.ArgumentParser:
    # Each feature module contributes its own subcommand (their imports are light: argparse only).
    from .bench import add_bench_command
    from .eval.report import add_report_command
    from .eval.run import add_eval_command
    from .infer.server import add_serve_command
    from .models.minimind import add_import_command
    from .post_cli import add_chat_flags, add_post_training_commands

    parser = argparse.ArgumentParser(prog="sprout", description="Train a small language model from nothing.")
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("speedrun", help="tokenizer -> pretrain -> SFT -> eval -> report, on built-in data")
    p.add_argument("--out", default="runs/speedrun")
    p.add_argument("--recipe", default="cpu", help="cpu (default, ~20 min on 2 cores) or minimind2-small etc. (GPU)")
    p.add_argument("--data-dir", help="your data in MiniMind's layout: pretrain_hq.jsonl, sft_*.jsonl, ... "
                   "(see docs/data.md); the tokenizer is trained on its pretraining text")
    p.add_argument("--tokenizer", help="use this tokenizer folder as it is (e.g. MiniMind's) instead of training one")
    p.add_argument("--minutes", type=float, help="total training minutes (default from the recipe)")
    p.add_argument("--max-steps", type=int, help="step limit for each training stage (a quick trial run)")
    p.add_argument("--eval-questions", type=int, help="questions per answer-selection task (default from the recipe)")
    p.set_defaults(func=cmd_speedrun)

    p = sub.add_parser("train", help="train one stage (pretrain, sft, ...)",
                       epilog="Any TrainConfig field can be set as KEY=VALUE, e.g. lr=3e-4 model_overrides.hidden_size=384")
    p.add_argument("stage", help="pretrain, sft, lora, dpo, distill, reasoning or tools")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    tk = sub.add_parser("tokenizer", help="train a BPE tokenizer").add_subparsers(dest="action", required=True)
    p = tk.add_parser("train", help="train byte-level BPE on jsonl text (default: the built-in corpus)")
    p.add_argument("--data", nargs="*", help="jsonl files with `text` or `conversations`")
    p.add_argument("--vocab-size", type=int, default=6400)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_tokenizer_train)

    dt = sub.add_parser("data", help="datasets: download, validate").add_subparsers(dest="action", required=True)
    p = dt.add_parser("download", help="fetch a public dataset (needs network)")
    p.add_argument("name", choices=["minimind"])
    p.add_argument("--out", default="data/minimind")
    p.add_argument("--files", nargs="*", default=["pretrain_hq.jsonl", "sft_mini_512.jsonl"])
    p.set_defaults(func=cmd_data_download)
    p = dt.add_parser("validate", help="check a data file and report malformed records as FILE:LINE")
    p.add_argument("path")
    p.add_argument("--kind", default="sft", choices=["pretrain", "sft", "dpo", "rlaif", "agent_rl"])
    p.add_argument("--skip-invalid", action="store_true")
    p.set_defaults(func=cmd_data_validate)

    p = sub.add_parser("chat", help="chat with a model in the terminal")
    p.add_argument("--model", required=True)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=False, help="let the model think first")
    p.add_argument("--device", default="auto")
    _add_sampling_flags(p)
    add_chat_flags(p)
    p.set_defaults(func=cmd_chat)


    add_serve_command(sub)
    add_eval_command(sub)
    add_report_command(sub)
    add_bench_command(sub)
    add_post_training_commands(sub)
    add_import_command(sub)

    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # argparse cannot interleave a variable-length positional with options, so KEY=VALUE
    # overrides (any TrainConfig field, e.g. lr=3e-4 batch_size=8) arrive as unknown arguments.
    args, extra = parser.parse_known_args(argv)
    overrides = [x for x in extra if "=" in x and not x.startswith("-")]
    rest = [x for x in extra if x not in overrides]
    if rest or (overrides and args.verb != "train"):
        parser.error(f"unrecognized arguments: {' '.join(rest or overrides)}")
    args.overrides = overrides
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The `sprout` command: one table of verbs, each a help line, an argument builder and a command.

    VERBS = {"tokenizer train": Verb("train a BPE tokenizer ...", _tokenizer_train_args, cmd_tokenizer_train), ...}

A key with a space is a sub-verb (`sprout tokenizer train`); GROUPS holds the help line of a word that only
groups sub-verbs (`tokenizer`). A verb may also have sub-verbs (`sprout eval --model DIR` and
`sprout eval skills ...`), as long as it takes no positional arguments itself.

Adding a verb is one entry in VERBS:
  1. `_x_args(p)` adds its flags with argparse only;
  2. `cmd_x(a)` imports its implementation *inside the function* and runs it;
  3. `"group x": Verb("one-line help", _x_args, cmd_x)` (a new group word also gets a line in GROUPS).
This module imports nothing but the standard library at module level, so `sprout --help` and argument
errors answer at once without torch, numpy, matplotlib or transformers (tests/test_cli_light.py checks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Verb:
    help: str
    args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    epilog: Callable[[], str] | None = None  # text after the flags in `sprout VERB --help` (built on demand)


# ---- shared flags ---------------------------------------------------------------------------------------
def _train_args(p: argparse.ArgumentParser) -> None:
    """The flags every training stage shares, spelled the same everywhere."""
    from .train.stages import STAGES

    p.add_argument("stage", choices=list(STAGES), metavar="STAGE", help="training stage (listed below)")
    p.add_argument("--recipe", help="built-in recipe name or YAML file (see sprout/recipes/)")
    p.add_argument(
        "--data", help="training data: a .jsonl/.parquet file or a folder of shards (default: built-in data)"
    )
    p.add_argument("--data-dir", help="your data in MiniMind's layout: --data becomes the stage's file (docs/data.md)")
    p.add_argument("--model", help="start from this model folder (default: a fresh model of --preset)")
    p.add_argument(
        "--preset",
        help="model preset for a fresh model: cpu, minimind2-small, minimind2, minimind3, "
        "cpu-moe, minimind2-moe, minimind3-moe, mini-deepseekv3, mini-qwen3-next, ...",
    )
    p.add_argument("--tokenizer", help="tokenizer folder (default: --model's, else sprout's built-in tokenizer)")
    p.add_argument("--out", help="output folder (checkpoints, metrics, final model)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--max-tokens", type=int, help="stop after this many training tokens")
    p.add_argument("--max-minutes", type=float, help="stop after this many minutes (the LR schedule follows the clock)")
    p.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument(
        "--resume", action="store_true", default=None, help="continue exactly from --out's latest checkpoint"
    )
    p.add_argument(
        "--skip-invalid", action="store_true", default=None, help="skip malformed records and report how many"
    )
    # KEY=VALUE overrides may appear anywhere after the stage; main() collects them (see below).


def _train_epilog() -> str:
    from .train.stages import stages_help

    return (
        "stages:\n" + stages_help() + "\n\nAny TrainConfig field can be set as KEY=VALUE, "
        "e.g. lr=3e-4 model_overrides.hidden_size=384"
    )


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="divide logits of tokens already in the context"
    )
    p.add_argument(
        "--frequency-penalty",
        type=float,
        default=0.3,
        help="subtract this per earlier occurrence in the reply (breaks loops; 0 = off)",
    )
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--rope-scaling",
        help="extend the context at inference: KIND:FACTOR[:TRAINED_LEN], KIND in linear, ntk, yarn (e.g. yarn:4:512)",
    )


def _sampling(a: argparse.Namespace) -> Any:
    from .infer.generate import SamplingConfig

    return SamplingConfig(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        repetition_penalty=a.repetition_penalty,
        frequency_penalty=a.frequency_penalty,
        seed=a.seed,
    )


def chat_tools(value: str | None) -> list[dict] | None:
    """The --tools value -> tool specs for ChatSession(tools=...)."""
    if not value:
        return None
    from .tools import TOOLS, tool_specs

    names = list(TOOLS) if value == "all" else [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise SystemExit(f"unknown tool(s) {', '.join(unknown)}; available: {', '.join(TOOLS)}")
    return tool_specs(names)


# ---- speedrun, train ------------------------------------------------------------------------------------
def _speedrun_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/speedrun")
    p.add_argument(
        "--recipe", default="cpu", help="cpu (default, 11–20 min on 2 cores with bf16) or minimind2-small etc. (GPU)"
    )
    p.add_argument(
        "--data-dir",
        help="your data in MiniMind's layout: pretrain_hq.jsonl, sft_*.jsonl, ... "
        "(see docs/data.md); the tokenizer is trained on its pretraining text",
    )
    p.add_argument("--tokenizer", help="use this tokenizer folder as it is (e.g. MiniMind's) instead of training one")
    p.add_argument(
        "--minutes",
        type=float,
        help="use a clock budget instead of the recipe's token budgets: minutes of pretraining and SFT, split "
        "between them as the recipe splits its tokens; DPO keeps its one pass (not reproducible on a busy machine)",
    )
    p.add_argument("--max-steps", type=int, help="step limit for each training stage (a quick trial run)")
    p.add_argument("--eval-questions", type=int, help="questions per answer-selection task (default from the recipe)")


def cmd_speedrun(a: argparse.Namespace) -> None:
    from .speedrun import speedrun

    speedrun(
        out=Path(a.out),
        recipe=a.recipe,
        data_dir=a.data_dir,
        minutes=a.minutes,
        tokenizer=a.tokenizer,
        max_steps=a.max_steps,
        eval_questions=a.eval_questions,
    )


def cmd_train(a: argparse.Namespace) -> None:
    from .config import build_train_config
    from .train.engine import train

    if a.data_dir and not a.data:
        from .data.data_dir import require, stage_files

        a.data = str(require(stage_files(a.data_dir), a.data_dir, (a.stage,))[a.stage])
    flags = {
        "data": a.data,
        "model": a.model,
        "preset": a.preset,
        "tokenizer": a.tokenizer,
        "out": a.out,
        "max_steps": a.max_steps,
        "max_tokens": a.max_tokens,
        "max_minutes": a.max_minutes,
        "epochs": a.epochs,
        "resume": a.resume,
        "skip_invalid": a.skip_invalid,
    }
    train(build_train_config(a.recipe, a.stage, flags, a.overrides))


# ---- tokenizer, data ------------------------------------------------------------------------------------
def _tokenizer_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="*", help="jsonl files with `text` or `conversations`")
    p.add_argument("--vocab-size", type=int, default=6400)
    p.add_argument("--out", required=True)


def cmd_tokenizer_train(a: argparse.Namespace) -> None:
    from .tokenizer import build_default_tokenizer, train_tokenizer_from_files

    if a.data:
        tok = train_tokenizer_from_files(a.data, a.vocab_size, a.out)
    else:
        tok = build_default_tokenizer(a.out, vocab_size=a.vocab_size)
    print(f"tokenizer with {tok.vocab_size} tokens written to {a.out}")


def _data_download_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["minimind"])
    p.add_argument("--out", default="data/minimind")
    p.add_argument("--files", nargs="*", default=["pretrain_hq.jsonl", "sft_mini_512.jsonl"])


def cmd_data_download(a: argparse.Namespace) -> None:
    from .data.builtin import download_minimind

    download_minimind(a.out, a.files)


def _data_validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path")
    p.add_argument(
        "--kind", default="sft", choices=["pretrain", "sft", "dpo", "reward", "rlaif", "agent_rl", "tokenizer"]
    )
    p.add_argument("--skip-invalid", action="store_true")


def cmd_data_validate(a: argparse.Namespace) -> None:
    from .data.readers import validate

    print(validate(a.path, a.kind, skip_invalid=a.skip_invalid))


# ---- chat, serve --------------------------------------------------------------------------------------------
def _chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--lora", help="LoRA adapter folder applied unmerged on top of --model")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=False, help="let the model think first")
    p.add_argument(
        "--tools",
        nargs="?",
        const="all",
        default=None,
        help="let the model call tools (comma-separated names; default all: calculator,unit_convert,date_calc)",
    )
    p.add_argument("--device", default="auto")
    _sampling_args(p)


def cmd_chat(a: argparse.Namespace) -> None:
    from .infer.chat import ChatSession, load_chat_model, run_chat

    model, tok = load_chat_model(a.model, a.lora, a.device, a.rope_scaling)
    run_chat(ChatSession(model, tok, _sampling(a), system=a.system, thinking=a.think, tools=chat_tools(a.tools)))


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="model folder to serve; repeat to serve several (the first is the default)",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=DIR[@BASE]",
        help="LoRA adapter served as model NAME on top of BASE (default: the first --model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 routes")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-batch", type=int, default=32, help="requests decoded together per model")
    p.add_argument("--max-concurrent", type=int, default=64, help="requests in flight before 429")
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask for")
    p.add_argument("--default-max-tokens", type=int, default=256)
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout in seconds")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (bigger: 413)")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads (default: all cores but one on a CPU, left to the HTTP side)"
    )


def cmd_serve(a: argparse.Namespace) -> None:
    from .infer.server import cmd_serve as serve

    serve(a)


# ---- eval, report, bench ----------------------------------------------------------------------------------
def _eval_args(p: argparse.ArgumentParser) -> None:
    from .eval.tasks import BUILTIN_TASKS, DEFAULT_TASKS

    p.add_argument("--model", help="model folder (required unless a sub-verb is given)")
    p.add_argument("--out", help="folder for eval.json / eval.md (default: MODEL/eval)")
    p.add_argument(
        "--data", help="text file (.txt, or jsonl with text or conversations) for loss / perplexity / bits per byte"
    )
    p.add_argument(
        "--tasks",
        nargs="*",
        default=DEFAULT_TASKS,
        help=f"built-in tasks: {', '.join(BUILTIN_TASKS)}, samples (pass none: --tasks)",
    )
    p.add_argument(
        "--mc",
        nargs="*",
        default=[],
        metavar="FILE",
        help="C-Eval/CMMLU/MMLU-style csv or jsonl files (question, A, B, C, D, answer)",
    )
    p.add_argument(
        "--mc-dev", metavar="FILE", help="few-shot examples for --mc (default: the same file minus the item)"
    )
    p.add_argument("--shots", type=int, default=0, help="few-shot examples per --mc question")
    p.add_argument("--limit", type=int, default=300, help="questions per multiple-choice task")
    p.add_argument("--seed", type=int, default=0, help="seed for built-in task negatives and few-shot draws")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--context-table",
        type=int,
        metavar="TRAIN_LEN",
        help="with --data: perplexity at 1x/2x/4x TRAIN_LEN with no RoPE scaling, linear, NTK and YaRN",
    )
    p.add_argument(
        "--rope-scaling",
        help="KIND:FACTOR[:TRAINED_LEN] (linear, ntk, yarn) to evaluate beyond the training length, e.g. yarn:4:512",
    )


def cmd_eval(a: argparse.Namespace) -> None:
    if not a.model:
        a.parser.error("--model is required")
    if a.context_table and not a.data:
        a.parser.error("--context-table needs --data FILE (held-out text)")
    from .eval.run import run_eval, write_context_table

    if a.context_table:
        write_context_table(a.model, a.data, a.context_table, a.out, a.device)
        return
    run_eval(
        a.model,
        a.out,
        data=a.data,
        tasks=a.tasks,
        limit=a.limit,
        device=a.device,
        mc=a.mc,
        mc_dev=a.mc_dev,
        shots=a.shots,
        seed=a.seed,
        rope_scaling=a.rope_scaling,
    )


def _eval_skills_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "check",
        choices=["reasoning", "tools", "identity"],
        help="reasoning: well-formed <think> blocks with thinking on, none with it off; tools: right tool, "
        "arguments and answer on held-out questions; identity: 'who are you' answers",
    )
    p.add_argument("model", help="model folder (for identity: the base model)")
    p.add_argument("--lora", help="adapter folder on top of MODEL (identity: answers with and without it)")
    p.add_argument("-n", type=int, default=50, help="questions")
    p.add_argument(
        "--offer",
        choices=["needed", "all", "none"],
        default="needed",
        help="tools check: list only the needed tool, all three, or none",
    )
    p.add_argument(
        "--kind", choices=["calc", "unit", "date"], default="calc", help="tools check: which tool's questions"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


def cmd_eval_skills(a: argparse.Namespace) -> None:
    import json

    from .eval.skills import run_check

    print(
        json.dumps(
            run_check(a.check, a.model, a.lora, a.n, a.offer, a.kind, a.device, a.threads), ensure_ascii=False, indent=1
        )
    )


def _eval_rl_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model folder (a policy before or after an RL run)")
    p.add_argument("--recipe", default="grpo", help="the RL recipe whose task, tools and rewards to use (default grpo)")
    p.add_argument("-n", type=int, default=200, help="held-out prompts (default 200)")
    p.add_argument("--samples", type=int, default=4, help="sampled replies per prompt (default 4)")
    p.add_argument("--batch", type=int, default=16, help="prompts generated together")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--compare", metavar="BEFORE.json", help="an earlier `--out` file: add the paired change against it")
    p.add_argument("--out", metavar="FILE.json", help="also write the result with each prompt's reward (for --compare)")
    # KEY=VALUE overrides of the recipe (objective_args.task=unit, objective_args.tools=all, ...) as for train.


def cmd_eval_rl(a: argparse.Namespace) -> None:
    import json

    import torch

    from .config import build_train_config, load_recipe
    from .errors import UserError
    from .eval.rl_reward import check_comparable, paired_change, rl_reward_eval

    before = None
    if a.compare:
        try:
            before = json.loads(Path(a.compare).read_text(encoding="utf-8"))
            for kind in ("greedy", "sampled"):  # what paired_change reads, checked before the evaluation runs
                len(before["per_prompt"][kind])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"not a `sprout eval rl --out` file ({type(e).__name__}: {e})",
                file=a.compare,
                advice="write one with `sprout eval rl MODEL --out FILE` before the run",
            ) from None
    torch.set_num_threads(a.threads)
    stage = load_recipe(a.recipe).get("stage", "grpo")
    # n_prompts=1: only the held-out prompts are scored, so the training prompts need not be built
    extra = [f"objective_args.val_prompts={a.n}", "objective_args.n_prompts=1", f"seed={a.seed}"]
    cfg = build_train_config(a.recipe, stage, {"model": a.model, "out": "runs/eval-rl"}, extra + a.overrides)
    if before is not None:  # what is known before the evaluation runs (the prompt count only after it)
        planned = {"stage": cfg.stage, "task": (cfg.objective_args or {}).get("task", "calc"), "samples": a.samples}
        check_comparable(before, planned, ("stage", "task", "samples"), a.compare)
    result = rl_reward_eval(cfg, a.samples, a.batch)
    if before is not None:
        result["change"] = paired_change(result, before, a.compare)
    if a.out:
        Path(a.out).write_text(json.dumps(result, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "per_prompt"}, ensure_ascii=False, indent=1))


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a training output folder (metrics.jsonl) or a speedrun folder")
    p.add_argument("--out", help="where to write report.html / report.md (default: RUN_DIR)")
    p.add_argument(
        "--reference-recipe",
        help="compare with this built-in recipe's reference curves "
        "(default: the one matching the run's preset and seq_len)",
    )
    p.add_argument("--no-reference", action="store_true", help="draw no reference curves")
    p.add_argument(
        "--make-reference",
        metavar="NAME",
        help="instead of a report, save RUN_DIR's loss curves as reference NAME "
        "(sprout/eval/reference/NAME.json, or --out FILE.json)",
    )
    p.add_argument("--note", default="", help="with --make-reference: where the run came from")


def cmd_report(a: argparse.Namespace) -> None:
    from .eval.report import build_report, make_reference

    if a.make_reference:
        print(make_reference(a.run_dir, a.make_reference, out=a.out, note=a.note))
        return
    html_path, md_path = build_report(a.run_dir, a.out, recipe=a.reference_recipe, reference=not a.no_reference)
    print(f"report: {html_path}\n        {md_path}")


def _bench_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu")
    p.add_argument(
        "--dtypes", "--dtype", dest="dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16, auto, fast"
    )
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto")
    # the training options that change speed (TrainConfig fields, docs/training.md)
    p.add_argument("--ce-chunk", type=int, default=0, help="LM head + loss this many positions at a time")
    p.add_argument("--optimizer", choices=("adamw", "muon"), default="adamw")
    p.add_argument("--grad-checkpoint", action="store_true", help="recompute each layer in backward")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the forward (CPU too; the warm-up step compiles)"
    )
    p.add_argument(
        "--data",
        default="synthetic",
        help="synthetic (random ids), builtin (the built-in corpus) or a .jsonl file / folder of pretraining records",
    )
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed records in --data instead of stopping")


def cmd_bench_train(a: argparse.Namespace) -> None:
    from .bench import train

    cfg = train.bench_config(
        a.preset,
        a.seq_len,
        a.batch_size,
        a.device,
        a.ce_chunk,
        a.optimizer,
        a.grad_checkpoint,
        a.compile,
        a.skip_invalid,
    )
    train.print_table(train.bench_train(cfg, a.dtypes.split(","), a.steps, a.data))


def _bench_infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", help="a fresh model of this preset (ignored with --model)")
    p.add_argument("--model", help="a model folder instead of a preset")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument(
        "--prompts",
        default="synthetic",
        help='synthetic (random ids), builtin (built-in corpus) or a .jsonl file of {"text": ...}',
    )
    p.add_argument("--skip-invalid", action="store_true", help="skip malformed records in --prompts, do not stop")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per engine; the median is reported")
    p.add_argument("--compare-hf", action="store_true", help="also time transformers' generate on the same weights")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA graphs on a GPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument(
        "--dtype",
        default="auto",
        help="weights for both engines: auto (as sprout serve: bf16 on a GPU, fp32 on a CPU), fp32 or bf16",
    )
    p.add_argument("--device", default="cpu")


def cmd_bench_infer(a: argparse.Namespace) -> None:
    import torch

    from .bench.infer import bench_infer, print_infer

    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    print_infer(
        bench_infer(
            a.preset,
            a.model,
            sizes,
            a.new_tokens,
            a.prompt_len,
            a.prompts,
            a.rounds,
            a.compare_hf,
            a.compile,
            a.device,
            a.dtype,
            a.skip_invalid,
        )
    )


def _bench_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder with its tokenizer (default: a fresh --preset model)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--url", help="an already running server instead of starting one")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=1, help="requests per client in each phase")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads, here and in the server (0 = each side's default: all cores here, all but one there)",
    )


def cmd_bench_serve(a: argparse.Namespace) -> None:
    from .bench.serve import bench_serve, check_model_dir, print_serve

    check_model_dir(a.model)
    print_serve(
        bench_serve(a.model, a.preset, a.url, a.clients, a.requests, a.max_tokens, a.prompt_len, a.rounds, a.threads)
    )


# ---- export, distill ----------------------------------------------------------------------------------------
def _merge_lora_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="base model folder the adapter was trained on")
    p.add_argument("--lora", required=True, help="adapter folder (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", required=True)


def cmd_merge_lora(a: argparse.Namespace) -> None:
    from .export.merge_lora import merge_lora_folder

    out = merge_lora_folder(a.model, a.lora, a.out)
    print(f"merged {a.lora} into {a.model}: {out}")


def _distill_generate_args(p: argparse.ArgumentParser) -> None:
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


def cmd_distill_generate(a: argparse.Namespace) -> None:
    from .infer.chat import load_chat_model
    from .infer.generate import SamplingConfig
    from .infer.teacher_answers import generate_sft, load_prompts

    model, tok = load_chat_model(a.teacher, a.lora, a.device)
    prompts = load_prompts(a.prompts, a.limit)
    sampling = SamplingConfig(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_p=a.top_p,
        repetition_penalty=a.repetition_penalty,
        seed=a.seed,
    )
    generate_sft(model, tok, prompts, a.out, sampling, batch_size=a.batch_size, enable_thinking=a.think)


def _eval_harness_args(p: argparse.ArgumentParser) -> None:
    from .eval.harness import LOCAL_TASKS

    p.add_argument("--model", required=True, help="model folder (loaded by lm-eval's stock hf model)")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=list(LOCAL_TASKS),
        help=f"lm-eval task names; local: {', '.join(LOCAL_TASKS)} (default); e.g. ceval-valid cmmlu "
        "arc_easy hellaswag piqa openbookqa social_iqa need their data sets",
    )
    p.add_argument("--out", help="folder for harness.json / harness.md (default: MODEL/eval)")
    p.add_argument("--limit", type=int, help="at most this many examples per task")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, mps")


def cmd_eval_harness(a: argparse.Namespace) -> None:
    from .eval.harness import run_harness

    run_harness(a.model, a.tasks, a.out, a.limit, a.batch_size, a.device, a.num_fewshot)


# ---- import ---------------------------------------------------------------------------------------------------
def _import_minimind_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the .pth MiniMind's trainers save (fp16 state dict)")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--tokenizer", help="MiniMind's tokenizer folder (tokenizer.json + tokenizer_config.json)")
    p.add_argument("--heads", type=int, help="attention heads, MiniMind2 only (default 8)")
    p.add_argument("--rms-norm-eps", type=float, help="default: 1e-5 (MiniMind2), 1e-6 (minimind-3)")
    p.add_argument("--rope-theta", type=float, default=1e6)
    p.add_argument("--experts-per-token", type=int, help="MoE top-k; default: 2 (MiniMind2), 1 (minimind-3)")
    p.add_argument("--max-position-embeddings", type=int, default=32768)


def cmd_import_minimind(a: argparse.Namespace) -> None:
    from .models.minimind import ImportOptions, import_minimind

    opt = ImportOptions(
        num_attention_heads=a.heads,
        rms_norm_eps=a.rms_norm_eps,
        rope_theta=a.rope_theta,
        experts_per_token=a.experts_per_token,
        max_position_embeddings=a.max_position_embeddings,
    )
    import_minimind(a.file, a.out, a.tokenizer, opt)


# ---- export gguf / ollama -----------------------------------------------------------------------------------
def _gguf_args(p: argparse.ArgumentParser, out_help: str, default_dtype: str) -> None:
    from .export.dtypes import DTYPES

    p.add_argument("--model", required=True, help="model folder, or a LoRA adapter folder (merged into its base)")
    p.add_argument("--lora", help="LoRA adapter folder to merge into --model first")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--dtype", default=default_dtype, choices=DTYPES, help=f"weight type (default {default_dtype})")


def _export_gguf_args(p: argparse.ArgumentParser) -> None:
    _gguf_args(p, "FILE.gguf", "f16")


def cmd_export_gguf(a: argparse.Namespace) -> None:
    from .export.gguf_export import export_gguf

    out = export_gguf(a.model, a.out, a.dtype, a.lora)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB); run it with llama.cpp: llama-cli -m {out}")


def _export_ollama_args(p: argparse.ArgumentParser) -> None:
    _gguf_args(p, "a folder (model.gguf + Modelfile)", "q8_0")
    p.add_argument("--name", help="model name for `ollama create` (default: the folder's name)")


def cmd_export_ollama(a: argparse.Namespace) -> None:
    from .export.ollama import export_ollama

    path, commands = export_ollama(a.model, a.out, a.dtype, a.lora, a.name)
    print(f"wrote {path} and {path.parent / 'model.gguf'}; then:\n{commands}")


# ---- the table ------------------------------------------------------------------------------------------------
GROUPS: dict[str, str] = {
    "tokenizer": "train a BPE tokenizer",
    "data": "datasets: download, validate",
    "bench": "benchmarks: training, decoding and serving throughput (docs/bench.md)",
    "export": "export models: merge a LoRA adapter, GGUF (llama.cpp), Ollama",
    "import": "bring another project's checkpoint in as a standard folder",
    "distill": "black-box distillation data: a teacher answers prompts (white-box KD is `sprout train distill`)",
}

VERBS: dict[str, Verb] = {
    "speedrun": Verb(
        "tokenizer -> pretrain -> SFT -> DPO -> eval -> report, on built-in data", _speedrun_args, cmd_speedrun
    ),
    "train": Verb(
        "train one stage (`sprout train --help` lists them)",
        _train_args,
        cmd_train,
        epilog=_train_epilog,
    ),
    "tokenizer train": Verb(
        "train byte-level BPE on jsonl text (default: the built-in corpus)", _tokenizer_train_args, cmd_tokenizer_train
    ),
    "data download": Verb("fetch a public dataset (needs network)", _data_download_args, cmd_data_download),
    "data validate": Verb(
        "check a data file and report malformed records as FILE:LINE", _data_validate_args, cmd_data_validate
    ),
    "chat": Verb("chat with a model in the terminal", _chat_args, cmd_chat),
    "serve": Verb("OpenAI-compatible HTTP server + web chat page", _serve_args, cmd_serve),
    "eval": Verb(
        "perplexity / bits per byte, multiple-choice benchmarks, built-in tasks, samples", _eval_args, cmd_eval
    ),
    "eval skills": Verb(
        "checks of the post-training stages: reasoning, tools, identity", _eval_skills_args, cmd_eval_skills
    ),
    "eval rl": Verb(
        "mean reward (greedy and sampled, with confidence intervals) on an RL recipe's held-out prompts",
        _eval_rl_args,
        cmd_eval_rl,
    ),
    "eval harness": Verb(
        "lm-evaluation-harness on a model folder (local tasks work offline)", _eval_harness_args, cmd_eval_harness
    ),
    "report": Verb("HTML + markdown report with plots of a run (stage or speedrun folder)", _report_args, cmd_report),
    "bench train": Verb(
        "training tokens/s, model FLOP/s and MFU of a preset at each precision", _bench_train_args, cmd_bench_train
    ),
    "bench infer": Verb(
        "decoding tokens/s at batch 1 and 16 (optionally next to transformers)", _bench_infer_args, cmd_bench_infer
    ),
    "bench serve": Verb(
        "streaming tokens/s of 1 and N clients against `sprout serve`, next to in-process decoding",
        _bench_serve_args,
        cmd_bench_serve,
    ),
    "export merge-lora": Verb(
        "fold a LoRA adapter into its base model (a standalone HF folder)", _merge_lora_args, cmd_merge_lora
    ),
    "export gguf": Verb("write FILE.gguf for llama.cpp", _export_gguf_args, cmd_export_gguf),
    "export ollama": Verb(
        "write a folder (model.gguf + Modelfile) for llama.cpp / Ollama", _export_ollama_args, cmd_export_ollama
    ),
    "import minimind": Verb(
        "a MiniMind2 / minimind-3 .pth (dense or MoE) -> HF folder (see docs/import.md)",
        _import_minimind_args,
        cmd_import_minimind,
    ),
    "distill generate": Verb(
        "a teacher answers prompts; writes an SFT jsonl for `sprout train sft`",
        _distill_generate_args,
        cmd_distill_generate,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """argparse parsers for every entry of VERBS (and GROUPS), nested by the words of each key."""
    root = argparse.ArgumentParser(
        prog="sprout",
        description="Train a small language model from nothing.",
        epilog="Add --debug (or set SPROUT_DEBUG=1) to see the traceback of an error.",
    )
    parsers: dict[str, argparse.ArgumentParser] = {"": root}
    subs: dict[str, Any] = {}  # key -> its sub-verbs action

    def sub_action(key: str) -> Any:
        if key not in subs:
            required = key not in VERBS  # a pure group needs a sub-verb; a verb with sub-verbs does not
            subs[key] = parsers[key].add_subparsers(
                dest=f"verb_{key.count(' ') + 1 if key else 0}",
                required=required,
                metavar="VERB" if required and key else None,
            )
        return subs[key]

    def parser_for(key: str) -> argparse.ArgumentParser:
        if key not in parsers:
            parent, _, word = key.rpartition(" ")
            parser_for(parent)
            v = VERBS.get(key)
            help_ = v.help if v else GROUPS[key]
            p = sub_action(parent).add_parser(
                word,
                help=help_,
                description=help_,
                epilog=v.epilog() if v and v.epilog else None,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            parsers[key] = p
            if v is not None:
                v.args(p)
                p.set_defaults(run=v.run, parser=p)
        return parsers[key]

    for key in VERBS:
        parser_for(key)
    return root


def main(argv: list[str] | None = None) -> None:
    """Run the command; a failure prints one line (no traceback unless --debug / SPROUT_DEBUG=1) and exits 1."""
    from .errors import run_cli

    code = run_cli(_main, sys.argv[1:] if argv is None else argv)
    if code:
        raise SystemExit(code)


def _main(argv: list[str]) -> None:
    parser = build_parser()
    # argparse cannot interleave a variable-length positional with options, so KEY=VALUE
    # overrides (any TrainConfig field, e.g. lr=3e-4 batch_size=8) arrive as unknown arguments.
    args, extra = parser.parse_known_args(argv)
    overrides = [x for x in extra if "=" in x and not x.startswith("-")]
    rest = [x for x in extra if x not in overrides]
    if rest or (overrides and args.run not in (cmd_train, cmd_eval_rl)):
        args.parser.error(f"unrecognized arguments: {' '.join(rest or overrides)}")
    args.overrides = overrides
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])

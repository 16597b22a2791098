"""`sprout speedrun`: tokenizer -> pretrain -> SFT -> evaluation -> report, in one command.

On a 2-core CPU with bf16 the `cpu` recipe finishes in 8–17 minutes on the built-in data. With
`--data-dir DIR` it runs on one's own files in MiniMind's layout (sprout/data/data_dir.py: pretrain_hq.jsonl,
sft_*.jsonl, ...), e.g. `--recipe minimind2-small --data-dir DIR` is MiniMind's GPU recipe on its own data;
the tokenizer is then trained on DIR's pretraining text, unless `--tokenizer` names one to use as it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import build_train_config, load_recipe
from .data.builtin import pretrain_texts, write_builtin
from .data.data_dir import require, stage_files
from .eval.choice import baseline_choices, score_choices
from .eval.perplexity import dataset_loss
from .eval.report import build_report
from .eval.samples import generate_samples, sample_questions
from .eval.tasks import builtin_items
from .infer.loading import load_for_inference
from .tokenizer import Tokenizer, iter_file_texts, train_tokenizer
from .train.engine import train
from .train.objectives import build_objective


def _log(msg: str) -> None:
    print(f"\n[speedrun] {msg}", flush=True)


def speedrun(
    out: Path,
    recipe: str = "cpu",
    data_dir: str | None = None,
    minutes: float | None = None,
    tokenizer: str | None = None,
    max_steps: int | None = None,
    eval_questions: int | None = None,
) -> Path:
    """`tokenizer`: a tokenizer folder to use as it is (e.g. MiniMind's) instead of training one;
    `max_steps`: a step limit for each training stage; `eval_questions`: per answer-selection task."""
    t0 = time.time()
    settings = load_recipe(recipe, "speedrun")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. data: built-in corpora written as ordinary jsonl files, or the user's MiniMind files
    if data_dir:
        files = require(stage_files(data_dir), data_dir, ("pretrain", "sft"))
        pretrain_data, sft_data = str(files["pretrain"]), str(files["sft"])
        _log(f"your data: pretrain {pretrain_data}, sft {sft_data}")
    else:
        pretrain_data, sft_data = str(out / "data" / "pretrain.jsonl"), str(out / "data" / "sft.jsonl")
        if not (Path(pretrain_data).exists() and Path(sft_data).exists()):
            _log("writing the built-in corpora to " + str(out / "data"))
            write_builtin("pretrain", pretrain_data, weights=settings.get("pretrain_mix"))
            write_builtin("sft", sft_data)

    # 2. tokenizer: byte-level BPE on the pretraining text (built-in or the user's), or the one given
    tok_dir = Path(tokenizer) if tokenizer else out / "tokenizer"
    t = time.time()
    if not (tok_dir / "tokenizer.json").exists():
        source = pretrain_data if data_dir else "the built-in corpus"
        _log(f"training a {settings['vocab_size']}-token BPE tokenizer on {source}")
        budget, texts, used = settings["tokenizer_chars"], [], 0
        corpus = iter_file_texts([pretrain_data]) if data_dir else pretrain_texts(weights=settings.get("pretrain_mix"))
        for text in corpus:
            texts.append(text)
            used += len(text)
            if used >= budget:
                break
        train_tokenizer(texts, settings["vocab_size"]).save(tok_dir)
    timings["tokenizer_s"] = time.time() - t

    # 3. pretrain, then 4. SFT from the pretrained weights; both through the one engine. The recipes' budgets
    # are tokens (reproducible on a busy machine); --minutes replaces them with a clock budget split the way
    # the recipe splits its tokens.
    stage_minutes: dict[str, float] = {}
    overrides: list[str] = []
    if minutes:
        p, s = (
            float(load_recipe(recipe, st).get("max_tokens") or load_recipe(recipe, st).get("max_minutes") or 1)
            for st in ("pretrain", "sft")
        )
        stage_minutes = {"pretrain": minutes * p / (p + s), "sft": minutes * s / (p + s)}
        overrides = ["max_tokens=null"]
    base_dir, chat_dir = out / "pretrain", out / "sft"
    cfgs = {}
    for stage, data, start, stage_out in (
        ("pretrain", pretrain_data, None, base_dir),
        ("sft", sft_data, base_dir, chat_dir),
    ):
        flags = {
            "data": data,
            "out": str(stage_out),
            "tokenizer": str(tok_dir),
            "model": str(start) if start else None,
            "max_minutes": stage_minutes.get(stage),
            "max_steps": max_steps,
        }
        cfgs[stage] = cfg = build_train_config(recipe, stage, flags, overrides)
        t = time.time()
        if (stage_out / "model.safetensors").exists():
            _log(f"{stage}: found a finished model in {stage_out}, skipping")
        else:
            budget = f"{cfg.max_tokens:,} tokens" if cfg.max_tokens else f"{cfg.max_minutes or '-'} min"
            _log(f"{stage}: {budget} budget -> {stage_out}")
            cfg.resume = (stage_out / "checkpoints" / "latest").exists()
            train(cfg)
        timings[f"{stage}_s"] = time.time() - t

    # 5. evaluation
    t = time.time()
    _log("evaluating base and chat models")
    results = evaluate(base_dir, chat_dir, cfgs["sft"], eval_questions or settings.get("eval_questions", 160))
    timings["eval_s"] = time.time() - t
    timings["total_s"] = time.time() - t0
    results["timings"] = timings
    (out / "eval.json").write_text(json.dumps(results, ensure_ascii=False, indent=2))

    # 6. report
    html_report, _ = write_report(out, results, recipe)
    _log(f"done in {timings['total_s'] / 60:.1f} min")
    print(f"  report:     {html_report}  (and report.md beside it)")
    print(f"  chat model: {chat_dir}")
    print(f"  chat with:  sprout chat --model {chat_dir}")
    return chat_dir


def evaluate(base_dir: Path, chat_dir: Path, sft_cfg, n_questions: int) -> dict:
    """Held-out SFT loss of both models, answer selection and samples of the chat model."""
    results: dict = {"val_loss": {}}
    tok = Tokenizer.load(chat_dir)
    _, val = build_objective(sft_cfg).datasets(tok)
    results["choice"] = []
    for name, folder in (("base", base_dir), ("chat", chat_dir)):
        model, _ = load_for_inference(str(folder))
        with torch.inference_mode():
            results["val_loss"][name] = dataset_loss(model, val)
            if name == "base":  # what SFT adds to answer selection, beside what the scoring method adds
                for task in ("insuranceqa-zh", "insuranceqa-en"):
                    items = builtin_items(task, n_questions)
                    results["choice"] += [r.as_dict() for r in score_choices(model, tok, items, f"{task} (base model)")]
    model, tok = load_for_inference(str(chat_dir))
    with torch.inference_mode():
        for task in (
            "insuranceqa-zh",
            "insuranceqa-en",
            "insuranceqa-zh-as-written",
            "insuranceqa-en-as-written",
            "idiom-zh",
        ):
            items = builtin_items(task, n_questions)
            results["choice"] += [r.as_dict() for r in score_choices(model, tok, items, task)]
            results["choice"] += [r.as_dict() for r in baseline_choices(items, task)]
        results["samples"] = generate_samples(model, tok, sample_questions())
    return results


def write_report(out: Path, results: dict, recipe: str) -> tuple[Path, Path]:
    """The run report (sprout/eval/report.py): report.html (self-contained) and report.md in OUT,
    with loss / learning-rate / gradient-norm / throughput plots per stage, the recipe's reference
    curves, config, data summary, and the evaluation in OUT/eval.json (`results`, already written)."""
    return build_report(out, recipe=recipe, title=f"sprout speedrun report ({recipe})")

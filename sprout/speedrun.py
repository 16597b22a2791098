"""`sprout speedrun`: tokenizer -> pretrain -> SFT -> DPO -> evaluation -> report, in one command.

The recipe's `stages` say which training stages run (`cpu`: pretrain, sft, dpo; the GPU recipes: pretrain,
sft). On a 2-core CPU with bf16 the `cpu` recipe finishes in 11–20 minutes on the built-in data. With
`--data-dir DIR` it runs on one's own files in MiniMind's layout (sprout/data/data_dir.py: pretrain_hq.jsonl,
sft_*.jsonl, ...), e.g. `--recipe minimind2-small --data-dir DIR` is MiniMind's GPU recipe on its own data;
the tokenizer is then trained on DIR's pretraining text, unless `--tokenizer` names one to use as it is, and
DPO runs on DIR's dpo.jsonl, or is skipped when there is none.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .config import build_train_config, load_recipe
from .data.builtin import pretrain_texts, write_builtin, write_jsonl
from .data.builtin_sets import dpo_pairs
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
    stages = settings.get("stages", ["pretrain", "sft"])
    files: dict[str, str] = {}
    extra: dict[str, list[str]] = {}  # per-stage overrides the speedrun adds to the recipe's
    if data_dir:
        found = stage_files(data_dir)
        files = {k: str(v) for k, v in require(found, data_dir, ("pretrain", "sft")).items()}
        if "dpo" in stages and "dpo" not in found:
            _log(f"{data_dir} has no dpo.jsonl: skipping the recipe's preference stage")
            stages = [st for st in stages if st != "dpo"]
        files.update({st: str(found[st]) for st in stages if st in found})
        _log("your data: " + ", ".join(f"{st} {files[st]}" for st in stages))
    else:
        files = {st: str(out / "data" / f"{st}.jsonl") for st in stages}
        if not all(Path(f).exists() for f in files.values()):
            _log("writing the built-in corpora to " + str(out / "data"))
            write_builtin("pretrain", files["pretrain"], weights=settings.get("pretrain_mix"))
            write_builtin("sft", files["sft"])
            if "dpo" in stages:
                _write_preference_pairs(files["dpo"], settings["dpo_pairs"], settings["dpo_val_pairs"])
        if "dpo" in stages:  # validated on train-split pairs it does not train on: the valid split is the eval's
            extra["dpo"] = [f"objective_args.val_data={_held_out_pairs(files['dpo'])}"]
    pretrain_data = files["pretrain"]

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

    # 3. pretrain, then 4. SFT from the pretrained weights and (the `cpu` recipe) DPO from the SFT model, all
    # through the one engine. The recipes' budgets are tokens or one pass over a fixed set of pairs (reproducible
    # on a busy machine); --minutes replaces pretraining's and SFT's with a clock budget split the way the recipe
    # splits their tokens.
    stage_minutes: dict[str, float] = {}
    overrides: list[str] = []
    if minutes:
        p, s = (
            float(load_recipe(recipe, st).get("max_tokens") or load_recipe(recipe, st).get("max_minutes") or 1)
            for st in ("pretrain", "sft")
        )
        stage_minutes = {"pretrain": minutes * p / (p + s), "sft": minutes * s / (p + s)}
        overrides = ["max_tokens=null"]
    cfgs = {}
    for i, stage in enumerate(stages):  # each stage starts from the one before; the last gives the chat model
        start = out / stages[i - 1] if i else None
        flags = {
            "data": files[stage],
            "out": str(out / stage),
            "tokenizer": str(tok_dir),
            "model": str(start) if start else None,
            "max_minutes": stage_minutes.get(stage),
            "max_steps": max_steps,
        }
        cfgs[stage] = cfg = build_train_config(recipe, stage, flags, overrides + extra.get(stage, []))
        t = time.time()
        if (out / stage / "model.safetensors").exists():
            _log(f"{stage}: found a finished model in {out / stage}, skipping")
        else:
            budget = (
                f"{cfg.max_tokens:,} tokens"
                if cfg.max_tokens
                else f"{cfg.max_minutes:g} min"
                if cfg.max_minutes
                else f"{cfg.epochs:g} epoch(s)"
            )
            _log(f"{stage}: {budget} budget -> {out / stage}")
            cfg.resume = (out / stage / "checkpoints" / "latest").exists()
            train(cfg)
        timings[f"{stage}_s"] = time.time() - t
    chat_dir = out / stages[-1]

    # 5. evaluation
    t = time.time()
    _log("evaluating base and chat models")
    n_questions = eval_questions or settings.get("eval_questions", 160)
    results = evaluate([out / st for st in stages], cfgs["sft"], n_questions)
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


def evaluate(stage_dirs: list[Path], sft_cfg, n_questions: int) -> dict:
    """Held-out SFT loss of every stage's model, answer selection of each (the last, the chat model, on every
    task with the no-model baselines beside it) and samples of the chat model."""
    results: dict = {"val_loss": {}, "choice": []}
    base_dir, chat_dir = stage_dirs[0], stage_dirs[-1]
    tok = Tokenizer.load(chat_dir)
    _, val = build_objective(sft_cfg).datasets(tok)
    for folder in stage_dirs:
        name = "base" if folder == base_dir else "chat" if folder == chat_dir else folder.name
        model, _ = load_for_inference(str(folder))
        with torch.inference_mode():
            results["val_loss"][name] = dataset_loss(model, val)
            if folder != chat_dir:  # what each later stage adds to answer selection, beside what the scoring adds
                label = "base" if name == "base" else name.upper()
                for task in ("insuranceqa-zh", "insuranceqa-en"):
                    items = builtin_items(task, n_questions)
                    results["choice"] += [
                        r.as_dict() for r in score_choices(model, tok, items, f"{task} ({label} model)")
                    ]
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


def _held_out_pairs(pairs_file: str) -> Path:
    return Path(pairs_file).with_name("dpo-val.jsonl")


def _write_preference_pairs(path: str, n: int, n_val: int) -> None:
    """The built-in preference pairs (insuranceqa train questions: gold answer against a negative of about its
    length), `n` to train on and the next `n_val` beside them (`_held_out_pairs`) to validate on."""
    pairs = dpo_pairs("train", limit=n + n_val)
    write_jsonl(pairs[:n], path)
    write_jsonl(pairs[n:], _held_out_pairs(path))


def write_report(out: Path, results: dict, recipe: str) -> tuple[Path, Path]:
    """The run report (sprout/eval/report.py): report.html (self-contained) and report.md in OUT,
    with loss / learning-rate / gradient-norm / throughput plots per stage, the recipe's reference
    curves, config, data summary, and the evaluation in OUT/eval.json (`results`, already written)."""
    return build_report(out, recipe=recipe, title=f"sprout speedrun report ({recipe})")

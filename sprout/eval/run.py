"""`sprout eval --model DIR`: loss / perplexity / bits per byte on a file, multiple-choice
benchmark files (C-Eval / CMMLU / MMLU style), built-in answer-selection tasks, samples.

Writes eval.json and eval.md into --out (default MODEL/eval). See docs/eval.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..data.readers import read_records
from ..errors import UserError, read_text
from ..tokenizer import normalize_record
from .choice import baseline_choices, score_choices
from .samples import generate_samples, sample_questions
from .scoring import continuation_logprobs
from .tasks import BUILTIN_TASKS, DEFAULT_TASKS, builtin_items


def _documents(tokenizer, path: str, max_docs: int) -> list[str]:
    """Plain text (.txt/.md: the whole file is one document) or jsonl/json/parquet records
    (`text` scored whole, conversations scored on their rendered chat text)."""
    if Path(path).suffix.lower() in (".txt", ".md"):
        return [read_text(path)]
    docs = []
    for i, rec in enumerate(read_records(path, "pretrain" if _is_text_file(path) else "sft")):
        if i >= max_docs:
            break
        if "text" in rec:
            docs.append(rec["text"])
        else:
            messages, tools = normalize_record(rec)
            docs.append(tokenizer.apply_chat_template(messages, tools=tools))
    if not docs:
        raise UserError(
            "no documents to score (the file holds no records)",
            file=path,
            advice="give --data a file with `text` or `conversations` records",
        )
    return docs


def text_loss(model, tokenizer, path: str, max_docs: int = 500, window: int = 512, batch_size: int = 8) -> dict:
    """Loss, perplexity and bits per byte of every token of the file's documents.

    Each document is preceded by `<|endoftext|>` and cut into windows of `window` tokens, each
    predicted from the tokens before it inside the window.
    loss = nats / tokens, perplexity = exp(loss), bits per byte = nats / ln 2 / UTF-8 bytes —
    the last one (unlike perplexity) compares models with different tokenizers."""
    pairs, n_bytes = [], 0
    for text in _documents(tokenizer, path, max_docs):
        n_bytes += len(text.encode("utf-8"))
        ids = [tokenizer.doc_sep_id] + tokenizer.encode(text)  # the document separator as the first context token
        for s in range(0, len(ids) - 1, window):
            chunk = ids[s : s + window + 1]
            pairs.append((chunk[:1], chunk[1:]))
    scored = continuation_logprobs(model, pairs, batch_size=batch_size)
    nats = -sum(lp for lp, _ in scored)
    tokens = sum(n for _, n in scored)
    loss = nats / max(tokens, 1)
    return {
        "file": str(path),
        "loss": loss,
        "ppl": math.exp(min(loss, 50)),
        "tokens": tokens,
        "bytes": n_bytes,
        "bits_per_byte": nats / math.log(2) / max(n_bytes, 1),
    }


def _is_text_file(path: str) -> bool:
    first = next(read_records(path, "pretrain", skip_invalid=True), None)
    return first is not None


def run_eval(
    model_dir: str,
    out: str | None = None,
    data: str | None = None,
    tasks: list[str] | None = None,
    limit: int = 300,
    device: str = "auto",
    mc: list[str] | None = None,
    mc_dev: str | None = None,
    shots: int = 0,
    seed: int = 0,
    model=None,
    tokenizer=None,
    quiet: bool = False,
    rope_scaling: str | None = None,
) -> dict:
    """Evaluate a model folder; write OUT/eval.json and OUT/eval.md; return the results dict.

    `model`/`tokenizer` may be passed in already loaded (tests, the speedrun)."""
    from .multiple_choice import load_mc_file, score_multiple_choice

    if model is None:
        from ..infer.loading import load_for_inference

        model, tokenizer = load_for_inference(model_dir, device, rope_scaling)
    out_dir = Path(out or Path(model_dir) / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": str(model_dir)}
    tasks = list(DEFAULT_TASKS if tasks is None else tasks)
    for task in tasks:
        if task != "samples" and task not in BUILTIN_TASKS:
            raise SystemExit(f"unknown task {task!r}; available: {', '.join(BUILTIN_TASKS)}, samples")
    with torch.inference_mode():
        if data:
            results["text"] = text_loss(model, tokenizer, data)
        results["choice"] = []
        for task in tasks:
            if task == "samples":
                continue
            items = builtin_items(task, limit, seed=seed)
            results["choice"] += [r.as_dict() for r in score_choices(model, tokenizer, items, task)]
            results["choice"] += [r.as_dict() for r in baseline_choices(items, task)]
        dev = load_mc_file(mc_dev) if mc_dev else None
        for path in mc or []:
            items = load_mc_file(path)[:limit]
            name = Path(path).stem + (f" ({shots}-shot)" if shots else "")
            results["choice"] += [
                r.as_dict() for r in score_multiple_choice(model, tokenizer, items, name, dev, shots, seed)
            ]
        if "samples" in tasks:
            results["samples"] = generate_samples(model, tokenizer, sample_questions())
    (out_dir / "eval.json").write_text(json.dumps(results, ensure_ascii=False, indent=2))
    md = format_markdown(results)
    (out_dir / "eval.md").write_text(md)
    if not quiet:
        print(md)
    return results


# ---- markdown ---------------------------------------------------------------------------------


def choice_table_md(choice: list[dict]) -> list[str]:
    lines = ["| task | scoring | accuracy | 95% CI | n | chance |", "|---|---|---|---|---|---|"]
    for r in choice:
        lines.append(
            f"| {r['task']} | {r['method']} | {r['accuracy']:.1%} | "
            f"{r['ci95'][0]:.1%}–{r['ci95'][1]:.1%} | {r['total']} | {r['chance']:.0%} |"
        )
    return lines


def samples_md(samples: list[dict]) -> list[str]:
    lines = []
    for s in samples:
        lines += [
            f"**[{s['lang']}] {s['question']}**",
            "",
            "> " + s["answer"].replace("\n", "\n> "),
            "",
            f"(answer language: {s.get('answer_lang')}, repeated 4-gram rate {s.get('repeated_4gram_rate')}, "
            f"{s.get('tokens')} tokens{'' if s.get('finished', True) else ', cut at the limit'})",
            "",
        ]
    return lines


def format_markdown(results: dict) -> str:
    lines = [f"# Evaluation of {results.get('model', '')}", ""]
    if "text" in results:
        t = results["text"]
        lines += [
            f"**{t['file']}**: loss {t['loss']:.3f} nats/token, perplexity {t['ppl']:.1f}, "
            f"{t['bits_per_byte']:.3f} bits/byte over {t['tokens']} tokens",
            "",
        ]
    if results.get("choice"):
        lines += choice_table_md(results["choice"]) + [""]
    lines += samples_md(results.get("samples", []))
    return "\n".join(lines)


def write_context_table(
    model_dir: str, data: str, train_len: int, out: str | None = None, device: str = "auto"
) -> list[dict]:
    """Perplexity of `data` at 1x/2x/4x train_len under each RoPE scaling; OUT/context.json + context.md."""
    from ..infer.loading import load_for_inference
    from .context import context_length_table, table_markdown

    model, tok = load_for_inference(model_dir, device)
    rows = context_length_table(model, tok, data, train_len)
    out_dir = Path(out or Path(model_dir) / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "context.json").write_text(json.dumps(rows, indent=2))
    (out_dir / "context.md").write_text(table_markdown(rows, train_len) + "\n")
    print(table_markdown(rows, train_len))
    return rows

"""`sprout eval --model DIR`: loss / perplexity / bits per byte on a file, answer selection, samples.

Writes eval.json and eval.md into --out (default MODEL/eval).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..data.builtin import insuranceqa_choice
from ..data.readers import read_records
from ..infer.loading import load_for_inference
from ..tokenizer import normalize_record
from .choice import score_choices
from .samples import generate_samples, sample_questions
from .scoring import continuation_logprobs


def text_loss(model, tokenizer, path: str, max_docs: int = 500, window: int = 512) -> dict:
    """Loss, perplexity and bits per byte of every token of the file's documents.

    jsonl `text` records are scored whole; conversation records are scored on their rendered
    chat text. Each document is cut into windows of `window` tokens, each predicted from the
    tokens before it inside the window. Bits per byte = total nats / ln 2 / UTF-8 bytes, which
    (unlike perplexity) compares models with different tokenizers."""
    pairs, n_bytes = [], 0
    for i, rec in enumerate(read_records(path, "pretrain" if _is_text_file(path) else "sft")):
        if i >= max_docs:
            break
        if "text" in rec:
            text = rec["text"]
        else:
            messages, tools = normalize_record(rec)
            text = tokenizer.apply_chat_template(messages, tools=tools)
        n_bytes += len(text.encode("utf-8"))
        ids = [tokenizer.pad_id] + tokenizer.encode(text)  # <|endoftext|> as the first context token
        for s in range(0, len(ids) - 1, window):
            chunk = ids[s:s + window + 1]
            pairs.append((chunk[:1], chunk[1:]))
    scored = continuation_logprobs(model, pairs, batch_size=8)
    nats = -sum(lp for lp, _ in scored)
    tokens = sum(n for _, n in scored)
    loss = nats / max(tokens, 1)
    return {"file": path, "loss": loss, "ppl": math.exp(min(loss, 50)), "tokens": tokens,
            "bits_per_byte": nats / math.log(2) / max(n_bytes, 1)}


def _is_text_file(path: str) -> bool:
    first = next(read_records(path, "pretrain", skip_invalid=True), None)
    return first is not None


def run_eval(model_dir: str, out: str | None = None, data: str | None = None, tasks: list[str] | None = None,
             limit: int = 300, device: str = "auto") -> dict:
    model, tok = load_for_inference(model_dir, device)
    out_dir = Path(out or Path(model_dir) / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": model_dir}
    tasks = tasks or []
    with torch.inference_mode():
        if data:
            results["text"] = text_loss(model, tok, data)
        results["choice"] = []
        for task in tasks:
            if task.startswith("insuranceqa-"):
                lang = task.split("-", 1)[1]
                items = insuranceqa_choice("valid", lang)[:limit]
                results["choice"] += [r.as_dict() for r in score_choices(model, tok, items, task)]
            elif task != "samples":
                raise SystemExit(f"unknown task {task!r}; available: insuranceqa-zh, insuranceqa-en, samples")
        if "samples" in tasks:
            results["samples"] = generate_samples(model, tok, sample_questions())
    (out_dir / "eval.json").write_text(json.dumps(results, ensure_ascii=False, indent=2))
    (out_dir / "eval.md").write_text(format_markdown(results))
    print(format_markdown(results))
    return results


def format_markdown(results: dict) -> str:
    lines = [f"# Evaluation of {results['model']}", ""]
    if "text" in results:
        t = results["text"]
        lines += [f"**{t['file']}**: loss {t['loss']:.3f}, perplexity {t['ppl']:.1f}, "
                  f"{t['bits_per_byte']:.3f} bits/byte over {t['tokens']} tokens", ""]
    if results.get("choice"):
        lines += ["| task | scoring | accuracy | 95% CI | n | chance |", "|---|---|---|---|---|---|"]
        for r in results["choice"]:
            lines.append(f"| {r['task']} | {r['method']} | {r['accuracy']:.1%} | "
                         f"{r['ci95'][0]:.1%}–{r['ci95'][1]:.1%} | {r['total']} | {r['chance']:.0%} |")
        lines.append("")
    for s in results.get("samples", []):
        lines += [f"**[{s['lang']}] {s['question']}**", "", "> " + s["answer"].replace("\n", "\n> "), ""]
    return "\n".join(lines)

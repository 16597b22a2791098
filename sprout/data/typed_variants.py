"""Questions as people actually type them: any letter case, with or without punctuation, half- or full-width
punctuation, stray spaces.

A small model trained only on tidy, sentence-cased questions treats "WHAT IS TERM LIFE" or "什么是定期寿险?" as
new inputs, and its answers change with them. `typed_variant` rewrites a question the way one of those users
would, so the SFT mix covers them; `normalise` maps every such variant back to one form, so evaluation can
report a question both as the dataset writes it and normalised.
"""

from __future__ import annotations

import random
import re

# Full-width sentence punctuation (what a Chinese IME types) and its half-width twin. Full stops and brackets
# are left alone: "1.5" and "401(k)" must survive.
_FULL_TO_HALF = {"？": "?", "！": "!", "，": ",", "：": ":", "；": ";"}
_HALF_TO_FULL = {v: k for k, v in _FULL_TO_HALF.items()}
_END_PUNCT = "?!.。？！"
_CJK = re.compile(r"[\u4e00-\u9fff]")


def _swap_width(text: str, table: dict[str, str]) -> str:
    return "".join(table.get(c, c) for c in text)


def _add_spaces(text: str, rng: random.Random) -> str:
    """Double a few spaces, and pad the ends, as careless typing does."""
    words = text.split(" ")
    out = words[0]
    for w in words[1:]:
        out += (" " * rng.choice((1, 1, 2, 3))) + w
    return rng.choice(("", " ", "  ")) + out + rng.choice(("", " ", "  "))


def typed_variant(text: str, rng: random.Random) -> str:
    """One plausible way a user might type `text`: each change is drawn independently."""
    zh = bool(_CJK.search(text))
    if not zh:
        case = rng.random()
        if case < 0.3:
            text = text.lower()
        elif case < 0.4:
            text = text.upper()
        elif case < 0.55:
            text = " ".join(w[:1].upper() + w[1:] for w in text.split(" "))  # Title Case, as insuranceqa
    end = rng.random()
    if end < 0.35:
        text = text.rstrip(_END_PUNCT)
    elif end < 0.45:
        text = text.rstrip(_END_PUNCT) + rng.choice(("??", "?", "？"))
    if rng.random() < 0.4:  # the other punctuation width
        text = _swap_width(text, _FULL_TO_HALF if zh else _HALF_TO_FULL)
    if rng.random() < 0.3:
        text = _add_spaces(text, rng)
    return text


def clean_question_en(q: str) -> str:
    """'Is  Disability  Insurance  Required  By  Law?' -> 'Is disability insurance required by law?'

    The English questions are in Title Case with doubled spaces. We collapse whitespace and use
    sentence case: a Titlecase word is lower-cased, while all-caps words (AAA, IRA, COBRA), words
    with digits (401K) and "I"/"I'm" are kept. Proper names (e.g. 'Hawaii') become lower case:
    an accepted loss, there is no name list to consult offline.
    """
    words = q.split()

    def fix(w: str) -> str:
        parts = w.split("-")
        out = []
        for p in parts:
            if re.fullmatch(r"[Ii]('[a-z]+)?", p):  # "I", "I'm", also when typed in lower case
                out.append("I" + p[1:])
            elif p[:1].isupper() and p[1:] == p[1:].lower() and not any(c.isdigit() for c in p):
                out.append(p.lower())
            else:
                out.append(p)
        return "-".join(out)

    fixed = [fix(w) for w in words]
    if fixed:
        fixed[0] = fixed[0][:1].upper() + fixed[0][1:]
    return " ".join(fixed)


def normalise(text: str) -> str:
    """One form for every typed variant: single spaces, one question mark of the script's width at the end,
    sentence case for English (text typed all in capitals is lower-cased first)."""
    text = " ".join(text.split())
    zh = bool(_CJK.search(text))
    text = _swap_width(text, _HALF_TO_FULL if zh else _FULL_TO_HALF).rstrip(_END_PUNCT + " ")
    if not zh:
        text = clean_question_en(text.lower() if text.isupper() else text)
    return text + ("？" if zh else "?")

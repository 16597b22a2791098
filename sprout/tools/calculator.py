"""Arithmetic without eval: a small recursive-descent parser over + - * / // % ** and parentheses.

Grammar (usual precedence, ** right-associative and binding tighter than unary minus):
    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/' | '//' | '%') unary)*
    unary  := ('+' | '-') unary | power
    power  := atom ('**' | '^' power)?
    atom   := NUMBER | '(' expr ')' | NAME '(' expr (',' expr)* ')'   (sqrt, abs, round)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from fractions import Fraction

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|(\*\*|//|[-+*/%^(),×÷])|([A-Za-z_]+))")
# Each is called with the float values of its arguments.
_FUNCS: dict[str, Callable[..., float]] = {
    "sqrt": lambda x: math.sqrt(x),
    "abs": abs,
    "round": lambda x, n=0: round(x, int(n)),
}
MAX_EXPONENT = 1000
MAX_LEN = 200


class CalcError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise CalcError(f"unexpected character {text[pos]!r} at position {pos}")
        tok = m.group(1) or m.group(2) or m.group(3)
        out.append({"×": "*", "÷": "/", "^": "**"}.get(tok, tok))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, toks: list[str]):
        self.toks, self.i = toks, 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expect: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expect is not None and tok != expect):
            raise CalcError(f"expected {expect or 'more input'}, got {tok or 'end of input'}")
        self.i += 1
        return tok

    def expr(self):
        v = self.term()
        while self.peek() in ("+", "-"):
            v = v + self.term() if self.take() == "+" else v - self.term()
        return v

    def term(self):
        v = self.unary()
        while self.peek() in ("*", "/", "//", "%"):
            op, w = self.take(), self.unary()
            if op != "*" and w == 0:
                raise CalcError("division by zero")
            v = v * w if op == "*" else v / w if op == "/" else v // w if op == "//" else v % w
        return v

    def unary(self):
        if self.peek() in ("+", "-"):
            return self.unary() if self.take() == "+" else -self.unary()
        return self.power()

    def power(self):
        v = self.atom()
        if self.peek() == "**":
            self.take()
            e = self.unary()
            if abs(e) > MAX_EXPONENT:
                raise CalcError("exponent too large")
            if isinstance(v, Fraction) and isinstance(e, Fraction) and e.denominator == 1:
                return v ** int(e)
            return float(v) ** float(e)
        return v

    def atom(self):
        tok = self.take()
        if tok == "(":
            v = self.expr()
            self.take(")")
            return v
        if tok[0].isdigit() or tok[0] == ".":
            return Fraction(tok)
        if tok in _FUNCS:
            self.take("(")
            args = [self.expr()]
            while self.peek() == ",":
                self.take()
                args.append(self.expr())
            self.take(")")
            return _FUNCS[tok](*[float(a) for a in args])
        raise CalcError(f"unknown name or symbol {tok!r}")


def evaluate(expression: str) -> float | int:
    """Value of an arithmetic expression; exact (fractions) until a float function or power is used."""
    if len(expression) > MAX_LEN:
        raise CalcError("expression too long")
    p = _Parser(_tokens(expression))
    v = p.expr()
    if p.peek() is not None:
        raise CalcError(f"unexpected {p.peek()!r}")
    if isinstance(v, Fraction):
        return int(v) if v.denominator == 1 else float(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return int(v)
    return v


def format_number(v: float | int) -> str:
    if isinstance(v, int):
        return str(v)
    return f"{v:.6g}" if abs(v) >= 1e-4 else repr(v)

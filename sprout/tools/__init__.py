"""Tools a model may call: one registry shared by the built-in tool-use data and `sprout chat`.

Each tool has an OpenAI-style JSON description (what the chat template shows the model) and a
Python function. `run_tool(name, arguments)` returns the result as text, errors included, so a
bad call becomes a tool message the model can read rather than a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .calculator import CalcError, evaluate, format_number
from .dates import date_calc
from .units import convert


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[..., Any]

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _calculator(expression: str) -> str:
    return format_number(evaluate(expression))


def _convert(value: float, from_unit: str, to_unit: str) -> str:
    return format_number(convert(value, from_unit, to_unit))


def _date(operation: str, date: str, days: int | None = None, other_date: str | None = None) -> str:
    return str(date_calc(operation, date, days, other_date))


TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "calculator",
            "Evaluate an arithmetic expression.",
            {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
            _calculator,
        ),
        Tool(
            "unit_convert",
            "Convert a value between units.",
            {
                "type": "object",
                "properties": {
                    "value": {"type": "number"},
                    "from_unit": {"type": "string"},
                    "to_unit": {"type": "string"},
                },
                "required": ["value", "from_unit", "to_unit"],
            },
            _convert,
        ),
        Tool(
            "date_calc",
            "Date arithmetic on YYYY-MM-DD dates.",
            {
                "type": "object",
                "properties": {
                    "operation": {"type": "string", "enum": ["add_days", "days_between", "weekday"]},
                    "date": {"type": "string"},
                    "days": {"type": "integer"},
                    "other_date": {"type": "string"},
                },
                "required": ["operation", "date"],
            },
            _date,
        ),
    )
}


def tool_specs(names: list[str] | None = None) -> list[dict[str, Any]]:
    return [TOOLS[n].spec() for n in (names or list(TOOLS))]


# JSON-schema types of the tools' parameters -> the Python values that satisfy them (bool is not a number).
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
}


def _argument_problem(tool: Tool, arguments: dict[str, Any]) -> str | None:
    """What is wrong with a call's arguments against the tool's own schema, or None. A model can write
    `"from_unit": 5`; the tool must answer that as an error text, not raise from deep inside."""
    props = tool.parameters["properties"]
    missing = [k for k in tool.parameters.get("required", []) if k not in arguments]
    if missing:
        return f"missing argument {missing[0]!r} for {tool.name}"
    for key, value in arguments.items():
        if key not in props:
            return f"unknown argument {key!r} for {tool.name}; expected {', '.join(props)}"
        kind = props[key]["type"]
        if not _JSON_TYPES[kind](value):
            article = "an" if kind[0] in "aeiou" else "a"
            return f"argument {key!r} must be {article} {kind}, got {json.dumps(value, ensure_ascii=False)}"
    return None


def run_tool(name: str, arguments: Any) -> str:
    """Execute one call; never raises for a bad call (the error text is the result)."""
    tool = TOOLS.get(name)
    if tool is None:
        return f"error: unknown tool {name!r}; available: {', '.join(TOOLS)}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return "error: arguments are not valid JSON"
    if not isinstance(arguments, dict):
        return "error: arguments must be a JSON object"
    problem = _argument_problem(tool, arguments)
    if problem:
        return f"error: {problem}"
    try:
        return tool.fn(**arguments)
    except (CalcError, ValueError, TypeError, OverflowError, ZeroDivisionError) as e:
        return f"error: {e}"


_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """The `{"name", "arguments"}` objects inside <tool_call>…</tool_call> blocks of generated text.
    A block that is not valid JSON yields {"name": None, "error": ...}."""
    calls = []
    for body in _CALL.findall(text):
        try:
            obj = json.loads(body)
            if not isinstance(obj, dict) or "name" not in obj:
                raise ValueError("no 'name'")
            calls.append({"name": obj["name"], "arguments": obj.get("arguments", {})})
        except (json.JSONDecodeError, ValueError) as e:
            calls.append({"name": None, "arguments": {}, "error": f"malformed tool call: {e}"})
    return calls


__all__ = ["TOOLS", "Tool", "convert", "date_calc", "evaluate", "parse_tool_calls", "run_tool", "tool_specs"]

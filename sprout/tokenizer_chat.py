"""ChatML chat format: one Jinja template (shipped in tokenizer_config.json) and a plain-Python renderer.

Both must produce byte-identical text; tests/test_tokenizer.py checks that against
`transformers.AutoTokenizer.apply_chat_template`. The Python renderer also reports where each
assistant turn sits in the text, which is what the SFT loss mask is built from.

Layout (sprout's own choices, documented in docs/tokenizer.md):
- every turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`;
- tools are described at the end of the (possibly created) first system turn;
- an assistant turn always opens with a think block (empty when there is no reasoning), then the
  content, then its tool calls, each in `<tool_call>\\n{json}\\n</tool_call>`;
- consecutive `tool` results share one `user` turn, each wrapped in `<tool_response>` tags.
"""

from __future__ import annotations

import json
from typing import Any

# Text placed after the system content when tools are given. The JSON lines of the tools go between
# TOOLS_HEAD and TOOLS_TAIL. Kept as constants so the Jinja template and Python use the same words.
TOOLS_HEAD = (
    "# Tools\n\n"
    "You have access to the tools below. Each line inside <tools></tools> is the JSON description of one tool.\n"
    "<tools>"
)
TOOLS_TAIL = (
    "\n</tools>\n\n"
    "To use a tool, write one block per call containing a JSON object with the tool's name and its arguments:\n"
    '<tool_call>\n{"name": "tool_name", "arguments": {"arg": "value"}}\n</tool_call>'
)
EMPTY_THINK = "<think>\n\n</think>\n\n"

# transformers passes a message's reasoning under any of these names as `reasoning_content`
# (see transformers.utils.chat_template_utils._alias_reasoning_fields), so the Python renderer does too.
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def _jinja_str(s: str) -> str:
    """A Jinja string literal for `s` (JSON escaping is a subset Jinja parses the same way)."""
    return json.dumps(s, ensure_ascii=False)


# Every piece of output is an explicit `{{- ... -}}` expression, so the template's own whitespace and
# transformers' trim_blocks/lstrip_blocks settings cannot leak into the rendered text.
CHAT_TEMPLATE = (
    """{%- macro text(v) -%}
  {%- if v is string -%}{{- v -}}
  {%- elif v is none or v is undefined -%}
  {%- else -%}{{- v | tojson -}}
  {%- endif -%}
{%- endmacro -%}
{%- if tools -%}
  {{- '<|im_start|>system\\n' -}}
  {%- if messages and messages[0].role == 'system' and messages[0].content -%}
    {{- text(messages[0].content) + '\\n\\n' -}}
  {%- endif -%}
  {{- """
    + _jinja_str(TOOLS_HEAD)
    + """ -}}
  {%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}
  {{- """
    + _jinja_str(TOOLS_TAIL)
    + """ + '<|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
  {%- if loop.first and message.role == 'system' and tools -%}
  {%- elif message.role == 'tool' -%}
    {%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}
    {{- '\\n<tool_response>\\n' + text(message.content) + '\\n</tool_response>' -}}
    {%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}
  {%- elif message.role == 'assistant' -%}
    {%- set content = text(message.content) -%}
    {%- set reasoning = message.reasoning_content if message.reasoning_content is string else '' -%}
    {{- '<|im_start|>assistant\\n<think>\\n' + (reasoning | trim) + '\\n</think>\\n\\n' + content -}}
    {%- if message.tool_calls -%}
      {%- for call in message.tool_calls -%}
        {%- set fn = call.function if call.function is defined else call -%}
        {%- set args = fn.arguments if fn.arguments is defined and fn.arguments is not none else {} -%}
        {%- if content or not loop.first -%}{{- '\\n' -}}{%- endif -%}
        {{- '<tool_call>\\n{"name": ' + (fn.name | tojson) + ', "arguments": ' -}}
        {%- if args is string -%}{{- args -}}{%- else -%}{{- args | tojson -}}{%- endif -%}
        {{- '}\\n</tool_call>' -}}
      {%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>\\n' -}}
  {%- else -%}
    {{- '<|im_start|>' + message.role + '\\n' + text(message.content) + '<|im_end|>\\n' -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\\n' -}}
  {%- if enable_thinking is defined and enable_thinking is false -%}{{- """
    + _jinja_str(EMPTY_THINK)
    + """ -}}{%- endif -%}
{%- endif -%}"""
)


def _dumps(v: Any) -> str:
    """JSON exactly as transformers' chat-template `tojson` writes it (json.dumps, ensure_ascii=False)."""
    return json.dumps(v, ensure_ascii=False)


def _text(v: Any) -> str:
    """Message content as text: strings verbatim, missing as empty, anything else as JSON (like the template)."""
    if isinstance(v, str):
        return v
    return "" if v is None else _dumps(v)


def _maybe_json(v: Any) -> Any:
    """`tools` / `tool_calls` may arrive as JSON strings; the template only sees parsed values."""
    return json.loads(v) if isinstance(v, str) else v


def render_chat(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | str | None = None,
    add_generation_prompt: bool = False,
    enable_thinking: bool = True,
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation; return the text and the (start, end) character span of each assistant output.

    A span starts right after `<|im_start|>assistant\\n` and ends right after that turn's `<|im_end|>`.
    """
    out: list[str] = []
    size = 0
    spans: list[tuple[int, int]] = []

    def emit(s: str) -> None:
        nonlocal size
        out.append(s)
        size += len(s)

    tools = _maybe_json(tools)
    if tools:
        emit("<|im_start|>system\n")
        if messages and messages[0]["role"] == "system" and messages[0].get("content"):
            emit(_text(messages[0]["content"]) + "\n\n")
        emit(TOOLS_HEAD + "".join("\n" + _dumps(t) for t in tools) + TOOLS_TAIL + "<|im_end|>\n")

    for i, m in enumerate(messages):
        role = m["role"]
        if i == 0 and role == "system" and tools:
            continue  # already rendered together with the tool block
        if role == "tool":
            if i == 0 or messages[i - 1]["role"] != "tool":
                emit("<|im_start|>user")
            emit("\n<tool_response>\n" + _text(m.get("content")) + "\n</tool_response>")
            if i == len(messages) - 1 or messages[i + 1]["role"] != "tool":
                emit("<|im_end|>\n")
        elif role == "assistant":
            content = _text(m.get("content"))
            reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k) is not None), "")
            reasoning = reasoning.strip() if isinstance(reasoning, str) else ""
            emit("<|im_start|>assistant\n")
            start = size
            emit("<think>\n" + reasoning + "\n</think>\n\n" + content)
            for j, call in enumerate(_maybe_json(m.get("tool_calls")) or []):
                fn = call.get("function", call)
                args = fn.get("arguments")
                args = {} if args is None else args
                if content or j > 0:
                    emit("\n")
                emit('<tool_call>\n{"name": ' + _dumps(fn["name"]) + ', "arguments": ')
                emit((args if isinstance(args, str) else _dumps(args)) + "}\n</tool_call>")
            emit("<|im_end|>")
            spans.append((start, size))
            emit("\n")
        else:
            emit(f"<|im_start|>{role}\n" + _text(m.get("content")) + "<|im_end|>\n")

    if add_generation_prompt:
        emit("<|im_start|>assistant\n")
        if not enable_thinking:
            emit(EMPTY_THINK)
    return "".join(out), spans


ROLES = ("system", "user", "assistant", "tool")


def _normalize_call(call: Any) -> dict[str, Any]:
    """One tool call as {"name", "arguments"}, arguments parsed from a JSON string where possible."""
    if not isinstance(call, dict):
        raise ValueError(f"a tool call must be an object, got {call!r}")
    fn = call.get("function", call)
    if "name" not in fn:
        raise ValueError(f"tool call without a name: {call!r}")
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            pass  # not JSON: keep the text; the template writes strings verbatim
    return {"name": fn["name"], "arguments": {} if args is None else args}


def normalize_record(record: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Turn an SFT / agent record into (messages, tools) ready for `render_chat` or a chat template.

    Accepts `conversations` (MiniMind) or `messages` (OpenAI); tools at the top level or on any message
    (MiniMind puts them on the system message), as JSON strings or values; tool calls in either the
    plain `{"name", "arguments"}` or OpenAI `{"type": "function", "function": {...}}` form, with
    arguments as a JSON string or value. Messages come out holding only role, content, and where present
    reasoning_content and tool_calls (normalised to `{"name", "arguments": value}`).
    """
    conv = record.get("conversations", record.get("messages"))
    if not isinstance(conv, list):
        raise ValueError("record has no 'conversations' (or 'messages') list")
    tools = _maybe_json(record.get("tools"))
    messages: list[dict[str, Any]] = []
    for m in conv:
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        if m.get("tools"):
            tools = _maybe_json(m["tools"])
        out: dict[str, Any] = {"role": role, "content": _text(m.get("content"))}
        reasoning = next((m[k] for k in _REASONING_KEYS if m.get(k)), None)
        if reasoning:
            out["reasoning_content"] = reasoning
        calls = _maybe_json(m.get("tool_calls"))
        if calls:
            out["tool_calls"] = [_normalize_call(c) for c in calls]
        messages.append(out)
    if tools is not None and not isinstance(tools, list):
        raise ValueError(f"'tools' must be a list of tool descriptions, got {type(tools).__name__}")
    return messages, tools or None

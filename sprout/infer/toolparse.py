"""Split a model's raw output into reasoning, answer text and tool calls — incrementally.

The chat template (sprout/tokenizer_chat.py) makes an assistant turn look like

    <think>\\nREASONING\\n</think>\\n\\nANSWER\\n<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>

With thinking switched off the prompt already ends with an empty think block, so the output starts
directly with ANSWER. `OutputParser` is fed the decoded text piece by piece (exactly what streaming
sees) and returns events; the non-streaming path feeds the same pieces through the same parser,
so a streamed answer always concatenates to the non-streamed one.

Whitespace rules: leading whitespace of the reasoning and of the answer is dropped, and trailing
whitespace is held back until more text follows it (so the blank lines around tags never show).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class Event:
    kind: str  # "reasoning" | "content" | "tool_call"
    text: str = ""
    call: dict[str, Any] | None = None  # OpenAI shape: {"id", "type": "function", "function": {"name", "arguments"}}


def parse_tool_call(body: str) -> dict[str, Any] | None:
    """The JSON between <tool_call> tags -> an OpenAI tool call, or None when it is not a valid call."""
    try:
        obj = json.loads(body.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):  # already a JSON string (some models write it that way)
        arguments = args
    else:
        arguments = json.dumps({} if args is None else args, ensure_ascii=False)
    return {
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": obj["name"], "arguments": arguments},
    }


def _partial_tag_suffix(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags` (to hold back)."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:n]):
                best = n
                break
    return best


@dataclass
class OutputParser:
    thinking: bool = False  # parse a leading <think> block into reasoning
    parse_tools: bool = True  # turn <tool_call> blocks into tool calls
    _buf: str = ""
    _state: str = "start"  # start | reasoning | content | call
    _held_ws: str = ""  # trailing whitespace of the current section, not yet emitted
    _started: bool = False  # the current section has emitted non-whitespace text
    _call_body: str = ""
    _ws_before_call: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)

    # -- public -------------------------------------------------------------------------------
    def feed(self, piece: str) -> list[Event]:
        self._buf += piece
        return self._drain(final=False)

    def finish(self) -> list[Event]:
        events = self._drain(final=True)
        if self._state == "call" and self._call_body:
            # An unterminated tool call is not a call: give its text back as content.
            self._state, self._held_ws = "content", self._ws_before_call
            events += self._text(CALL_OPEN + self._call_body)
            self._call_body = ""
        return events

    # -- internals ----------------------------------------------------------------------------
    def _tags(self) -> tuple[str, ...]:
        if self._state == "start":
            return (THINK_OPEN,) if self.thinking else ()
        if self._state == "reasoning":
            return (THINK_CLOSE,)
        if self._state == "content":
            return (CALL_OPEN,) if self.parse_tools else ()
        return (CALL_CLOSE,)

    def _section_kind(self) -> str:
        return "reasoning" if self._state == "reasoning" else "content"

    def _text(self, text: str) -> list[Event]:
        """Emit section text, dropping leading whitespace and holding trailing whitespace back."""
        if not text:
            return []
        if not self._started:
            text = text.lstrip()
            if not text:
                return []
            self._started = True
        body = text.rstrip()
        tail = text[len(body) :]
        if not body:
            self._held_ws += tail
            return []
        out = self._held_ws + body
        self._held_ws = tail
        return [Event(self._section_kind(), out)]

    def _switch(self, state: str) -> None:
        """Enter a new text section (reasoning, or the answer after </think>)."""
        self._state, self._held_ws, self._started = state, "", False

    def _drain(self, final: bool) -> list[Event]:
        events: list[Event] = []
        while self._buf:
            if self._state == "start":
                if not self.thinking:
                    self._state = "content"
                    continue
                stripped = self._buf.lstrip()
                if not stripped:
                    if final:
                        self._buf = ""
                    break
                if stripped.startswith(THINK_OPEN):
                    self._buf = stripped[len(THINK_OPEN) :]
                    self._switch("reasoning")
                    continue
                if THINK_OPEN.startswith(stripped) and not final:
                    break  # could still become <think>
                self._switch("content")
                continue
            tags = self._tags()
            hit = min(((self._buf.find(t), t) for t in tags if t in self._buf), default=None)
            if hit is not None:
                pos, tag = hit
                before, self._buf = self._buf[:pos], self._buf[pos + len(tag) :]
                if self._state == "call":
                    self._call_body += before
                    call = parse_tool_call(self._call_body)
                    if call is None:  # not valid JSON: keep the block as plain text
                        self._state, self._held_ws = "content", self._ws_before_call
                        events += self._text(CALL_OPEN + self._call_body + CALL_CLOSE)
                    else:
                        self.calls.append(call)
                        events.append(Event("tool_call", call=call))
                        self._state, self._held_ws = "content", ""
                    self._call_body = ""
                    continue
                events += self._text(before)
                if tag == THINK_CLOSE:
                    self._switch("content")
                elif tag == CALL_OPEN:
                    self._state, self._ws_before_call, self._held_ws = "call", self._held_ws, ""
                continue
            keep = 0 if final else _partial_tag_suffix(self._buf, tags)
            ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
            if self._state == "call":
                self._call_body += ready
            else:
                events += self._text(ready)
            break
        return events


def parse_output(
    text: str, thinking: bool = False, parse_tools: bool = True
) -> tuple[str | None, str, list[dict[str, Any]]]:
    """Whole text -> (reasoning or None, content, tool_calls)."""
    p = OutputParser(thinking=thinking, parse_tools=parse_tools)
    events = p.feed(text) + p.finish()
    reasoning = "".join(e.text for e in events if e.kind == "reasoning")
    content = "".join(e.text for e in events if e.kind == "content")
    return (reasoning if thinking else None), content, p.calls

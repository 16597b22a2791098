"""Multi-turn terminal chat with streaming output.

Commands typed at the prompt: /reset (forget the conversation), /think on|off, /system TEXT,
/quit (or Ctrl-D). Thinking, when the model produces it, is shown dimmed and is not kept in history.

With `tools` (OpenAI-style specs, e.g. `sprout.tools.tool_specs()`), a reply that contains
`<tool_call>` blocks is answered by running those tools (sprout.tools.run_tool), appending the
results as `tool` messages and generating again, up to `max_tool_rounds` times per user turn.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TextIO

import torch

from ..models.dense import SproutForCausalLM
from ..tokenizer import Tokenizer
from ..tools import parse_tool_calls, run_tool
from .generate import SamplingConfig, TextDecoder, generate_stream

HELP = "commands: /reset  /think on|off  /system TEXT  /quit"


@dataclass
class ChatSession:
    model: SproutForCausalLM
    tokenizer: Tokenizer
    sampling: SamplingConfig
    system: str | None = None
    thinking: bool = False
    tools: list[dict] | None = None  # tool specs the model may call; None = no tool execution
    max_tool_rounds: int = 3

    def __post_init__(self) -> None:
        self.history: list[dict] = []
        if self.sampling.stop_token_ids is None:  # stop where this tokenizer ends a turn, by name
            self.sampling = replace(self.sampling, stop_token_ids=self.tokenizer.stop_ids)

    def reset(self) -> None:
        self.history = []

    def _ids(self, messages: list[dict]) -> list[int]:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + messages
        text = self.tokenizer.apply_chat_template(
            messages, tools=self.tools or None, add_generation_prompt=True, enable_thinking=self.thinking
        )
        return self.tokenizer.encode(text)

    def prompt_ids(self, user_text: str) -> list[int]:
        return self._ids(self.history + [{"role": "user", "content": user_text}])

    def _generate(self, ids: list[int]) -> Iterator[str]:
        decoder = TextDecoder(lambda t: self.tokenizer.decode(t, skip_special_tokens=False))
        stops = set(self.sampling.stop_token_ids or ())  # never None after __post_init__
        for step in generate_stream(self.model, [ids], self.sampling):
            tok = step[0]
            if tok is None or tok in stops:
                break
            yield decoder.push(tok)

    def reply_stream(self, user_text: str) -> Iterator[str]:
        """Yield the reply's text as it is generated; the finished turn is appended to history.
        Tool calls (when tools are set) are executed and shown as `[tool NAME(ARGS) -> RESULT]` lines."""
        turn: list[dict] = [{"role": "user", "content": user_text}]
        for round_ in range(self.max_tool_rounds + 1):
            text = ""
            for piece in self._generate(self._ids(self.history + turn)):
                text += piece
                yield piece
            answer = split_thinking(text)[1]
            calls = parse_tool_calls(answer) if self.tools else []
            if not calls or round_ == self.max_tool_rounds:
                turn.append({"role": "assistant", "content": answer})
                break
            content = answer.split("<tool_call>", 1)[0].strip()
            turn.append(
                {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [{"name": c["name"] or "invalid", "arguments": c["arguments"]} for c in calls],
                }
            )
            for c in calls:
                result = c.get("error") or run_tool(c["name"], c["arguments"])
                turn.append({"role": "tool", "content": result})
                yield f"\n[tool {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)}) -> {result}]\n"
        self.history += turn


def split_thinking(text: str) -> tuple[str, str]:
    """'<think>\\nR\\n</think>\\n\\nA' -> ('R', 'A'); text without a think block -> ('', text)."""
    if "</think>" not in text:
        return "", text.replace("<think>", "").strip()
    thought, answer = text.split("</think>", 1)
    return thought.replace("<think>", "").strip(), answer.strip()


def run_chat(session: ChatSession, read: Callable[[str], str] = input, out: TextIO = sys.stdout) -> None:
    out.write(f"sprout chat — {HELP}\n")
    while True:
        try:
            line = read("\n> ").strip()
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            session.reset()
            out.write("(history cleared)\n")
            continue
        if line.startswith("/think"):
            session.thinking = line.split()[-1] == "on"
            out.write(f"(thinking {'on' if session.thinking else 'off'})\n")
            continue
        if line.startswith("/system"):
            session.system = line[len("/system") :].strip() or None
            session.reset()
            out.write(f"(system prompt {'set' if session.system else 'cleared'}; history cleared)\n")
            continue
        if line.startswith("/"):
            out.write(f"unknown command; {HELP}\n")
            continue
        in_think = False
        with torch.inference_mode():
            for piece in session.reply_stream(line):
                # Show thinking dimmed (ANSI) when writing to a terminal.
                if "<think>" in piece:
                    in_think = True
                    piece = piece.replace("<think>", "\033[2m" if out.isatty() else "[thinking] ")
                if "</think>" in piece:
                    in_think = False
                    piece = piece.replace("</think>", "\033[0m" if out.isatty() else " [/thinking]")
                out.write(piece)
                out.flush()
        if in_think and out.isatty():
            out.write("\033[0m")
        out.write("\n")


def load_chat_model(model_dir: str, lora: str | None = None, device: str = "auto", rope_scaling: str | None = None):
    """(model, tokenizer) for chat; with `lora`, the adapter folder is applied unmerged on top of the base."""
    from .loading import load_for_inference

    model, tok = load_for_inference(model_dir, device, rope_scaling)
    if lora:
        from ..train.lora import load_adapter

        load_adapter(model, lora)
        model.eval()
    return model, tok

"""Multi-turn terminal chat with streaming output.

Commands typed at the prompt: /reset (forget the conversation), /think on|off, /system TEXT,
/quit (or Ctrl-D). Thinking, when the model produces it, is shown dimmed and is not kept in history.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Iterator, TextIO

import torch
from torch import nn

from .generate import SamplingConfig, TextDecoder, generate_stream

HELP = "commands: /reset  /think on|off  /system TEXT  /quit"


@dataclass
class ChatSession:
    model: nn.Module
    tokenizer: object
    sampling: SamplingConfig
    system: str | None = None
    thinking: bool = False

    def __post_init__(self) -> None:
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def prompt_ids(self, user_text: str) -> list[int]:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        messages = messages + [{"role": "user", "content": user_text}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=self.thinking)
        return self.tokenizer.encode(text)

    def reply_stream(self, user_text: str) -> Iterator[str]:
        """Yield the reply's text as it is generated; the finished turn is appended to history."""
        decoder = TextDecoder(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False))
        stops = set(self.sampling.stop_token_ids)
        text = ""
        for step in generate_stream(self.model, [self.prompt_ids(user_text)], self.sampling):
            tok = step[0]
            if tok is None or tok in stops:
                break
            piece = decoder.push(tok)
            text += piece
            yield piece
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": split_thinking(text)[1]}]


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
            session.system = line[len("/system"):].strip() or None
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

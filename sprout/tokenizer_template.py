"""Chat with any folder's own tokenizer: its Jinja chat template, its special tokens, found by name.

sprout's own tokenizer renders ChatML with a Python twin of its template (sprout/tokenizer_chat.py).
A folder written by someone else (a Qwen3 or Llama-3 checkpoint, MiniMind's tokenizer) brings its own
template and id layout; this module renders that template the way transformers does
(`transformers.utils.chat_template_utils.render_jinja_template`, a sandboxed Jinja environment) and
builds the SFT assistant mask from prefix differences (ChatML, Llama-3, MiniMind, Qwen3 alike):

    full     = render(messages)                                   # the training text
    prompt_i = render(messages[:i], add_generation_prompt=True)   # ... up to "assistant\\n" (+ any prefill)
    upto_i   = render(messages[:i+1]).rstrip()                    # ... the answer and its end token
    span i   = [common prefix of prompt_i and full, len(upto_i))  # what the model itself would write

Starting at the common prefix (not at len(prompt_i)) covers templates whose generation prompt pre-fills
something the answer replaces (MiniMind's and Qwen3's empty `<think></think>` when a turn has reasoning).
Where a template rewrites a turn once later turns follow (Qwen3 drops the reasoning of earlier turns),
upto_i is not a prefix of the training text; the span then ends at the turn's end token in the text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import UserError

# Tokens that end an assistant turn in common templates; the first one the template uses is the
# turn end (the token an answer is scored and trained to finish with).
TURN_END_NAMES = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eot|>")
# Tokens that end a document in pretraining text, in order of preference.
DOC_END_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


def token_name(v: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) and v else None


def read_folder_config(folder: Path) -> dict[str, Any]:
    """tokenizer_config.json merged with special_tokens_map.json and chat_template.jinja (newer
    transformers writes the template to its own file); {} when the folder has none of them."""
    config: dict[str, Any] = {}
    path = folder / "tokenizer_config.json"
    if path.exists():
        config = json.loads(path.read_text(encoding="utf-8"))
    smap = folder / "special_tokens_map.json"
    if smap.exists():
        for k, v in json.loads(smap.read_text(encoding="utf-8")).items():
            config.setdefault(k, v)
    jinja = folder / "chat_template.jinja"
    if jinja.exists() and not config.get("chat_template"):
        config["chat_template"] = jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        config["chat_template"] = named.get("default") or next(iter(named.values()), None)
    return config


def generation_eos_ids(folder: Path) -> list[int]:
    """eos_token_id of the folder's generation_config.json (an int or a list), where there is one."""
    path = folder / "generation_config.json"
    if not path.exists():
        return []
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    return [eos] if isinstance(eos, int) else [int(e) for e in eos or [] if isinstance(e, int)]


class TemplateChat:
    """Renders a folder's Jinja chat template and the assistant spans of a conversation."""

    def __init__(self, template: str, special: dict[str, str | None]) -> None:
        self.template = template
        self.special: dict[str, Any] = {k: v for k, v in special.items() if v is not None}  # bos_token, ...

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
        enable_thinking: bool = True,
    ) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            # Returns (one text per conversation, generation indices), whatever its annotation says.
            result: Any = render_jinja_template(
                conversations=[messages],
                tools=list(tools) if tools else None,
                chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                **self.special,
            )
        except Exception as e:  # jinja2 raises its own errors, templates raise_exception(...) with any text
            raise UserError(f"the chat template cannot render this conversation: {type(e).__name__}: {e}") from None
        return result[0][0]

    def render_with_spans(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, turn_end: str | None
    ) -> tuple[str, list[tuple[int, int]]]:
        """The whole conversation and the (start, end) character span of each assistant answer, its end
        token (`turn_end`, e.g. <|im_end|>) included."""
        full = self.render(messages, tools)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            base = self.render(messages[:i], tools) if i else ""
            start = len(os.path.commonprefix([self.render(messages[:i], tools, add_generation_prompt=True), full]))
            upto = self.render(messages[: i + 1], tools).rstrip()
            if full.startswith(upto) and len(upto) > start:
                end = len(upto)
            else:  # this turn reads differently once later turns follow: it ends at its end token
                at = full.find(turn_end, start) if turn_end else -1
                if not turn_end or at < 0:
                    raise ValueError(
                        "cannot find where assistant turn ends in the chat template's text; the "
                        "tokenizer needs a known end-of-turn token (eos_token)"
                    )
                end = at + len(turn_end)
            if not full.startswith(base) or start < len(base):  # the span would swallow earlier turns
                raise ValueError(
                    "this chat template renders the conversation before an assistant turn differently "
                    "once later turns follow, so the assistant spans cannot be found by prefix"
                )
            spans.append((start, end))
        return full, spans

    def turn_end(self, vocab: dict[str, int]) -> str | None:
        """The end-of-turn token this template writes, if it is one of the known names."""
        return next((t for t in TURN_END_NAMES if t in self.template and t in vocab), None)

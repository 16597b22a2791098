"""Chat with any folder's own tokenizer: its Jinja chat template, its special tokens, found by name.

sprout's own tokenizer renders ChatML with a Python twin of its template (sprout/tokenizer_chat.py).
A folder written by someone else (a Qwen3 or Llama-3 checkpoint, MiniMind's tokenizer) brings its own
template and id layout; this module renders that template the way transformers does
(`transformers.utils.chat_template_utils.render_jinja_template`, a sandboxed Jinja environment) and
builds the SFT assistant mask from prefix differences, which works for any template whose rendering of
a conversation starts with its rendering of every shorter conversation (ChatML, Llama-3, MiniMind):

    prompt_i = render(messages[:i], add_generation_prompt=True)   # ... up to "assistant\\n"
    full_i   = render(messages[:i+1])                             # ... the answer and its end token
    assistant span i = [len(prompt_i), len(full_i.rstrip()))       # the answer, up to its end token
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
        self.special = {k: v for k, v in special.items() if v is not None}  # bos_token, eos_token, ...

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
               add_generation_prompt: bool = False, enable_thinking: bool = True) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        try:
            rendered, _ = render_jinja_template(
                conversations=[messages], tools=tools, chat_template=self.template,
                add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking, **self.special)
        except Exception as e:  # jinja2 raises its own errors, templates raise_exception(...) with any text
            raise ValueError(f"the chat template cannot render this conversation: {type(e).__name__}: {e}") from None
        return rendered[0]

    def render_with_spans(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
                          ) -> tuple[str, list[tuple[int, int]]]:
        """The whole conversation and the (start, end) character span of each assistant answer."""
        full = self.render(messages, tools)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = self.render(messages[:i], tools, add_generation_prompt=True)
            upto = self.render(messages[:i + 1], tools).rstrip()
            if not (upto.startswith(prompt) and full.startswith(upto)):
                raise ValueError("this chat template renders earlier turns differently once later turns follow "
                                 "(e.g. it drops past reasoning), so the assistant spans cannot be found by "
                                 "prefix; train with a template that renders each turn the same way")
            spans.append((len(prompt), len(upto)))
        return full, spans

    def turn_end(self, vocab: dict[str, int]) -> str | None:
        """The end-of-turn token this template writes, if it is one of the known names."""
        return next((t for t in TURN_END_NAMES if t in self.template and t in vocab), None)

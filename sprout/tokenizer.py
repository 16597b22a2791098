"""Byte-level BPE tokenizer: training, fixed special tokens, ChatML chat format and the SFT loss mask.

The trained model is a plain `tokenizers` file plus the transformers config files, so
`transformers.AutoTokenizer.from_pretrained(dir)` loads the same tokenizer without remote code.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as _Backend

from sprout.tokenizer_chat import CHAT_TEMPLATE, normalize_record, render_chat

__all__ = [
    "CHAT_TEMPLATE", "SPECIAL_TOKENS", "Tokenizer", "build_default_tokenizer", "default_tokenizer_dir",
    "normalize_record", "render_chat", "train_tokenizer", "train_tokenizer_from_files",
]

# Ids 0..8 are fixed by the contract (the model configs rely on 0 = pad, 1 = <|im_start|>, 2 = eos).
# The reserved slots let later features add control tokens without resizing trained embeddings.
NUM_SPECIAL = 32
NAMED_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
    "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>",
]
SPECIAL_TOKENS = NAMED_SPECIAL_TOKENS + [
    f"<|reserved_{i}|>" for i in range(NUM_SPECIAL - len(NAMED_SPECIAL_TOKENS))
]
# Markup the model writes for the user to see or a program to parse. They are added tokens (always one
# id) but not "special", so decode(skip_special_tokens=True) keeps them, as tool-call parsers need.
MARKUP_TOKENS = frozenset(NAMED_SPECIAL_TOKENS[3:])
MODEL_MAX_LENGTH = 32768


def _is_special(token: str) -> bool:
    return token not in MARKUP_TOKENS


# Pre-tokenizer split: letters with at most one leading non-letter, single digits, punctuation runs, newlines,
# spaces. It is the split Qwen2 tokenizers use, so GGUF converters know it (llama.cpp pre-tokenizer "qwen2").
# One token per digit keeps arithmetic learnable for a small model ("4736" is always 4-7-3-6).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _new_backend() -> _Backend:
    tok = _Backend(models.BPE())  # no unk token: every byte has an id
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 6400) -> "Tokenizer":
    """Train a byte-level BPE with `vocab_size` ids in total (special tokens and 256 bytes included).

    A corpus too small to supply that many merges (pairs seen at least twice) gives a smaller vocabulary.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= NUM_SPECIAL + len(alphabet):
        raise ValueError(f"vocab_size must exceed {NUM_SPECIAL + len(alphabet)} (special tokens + 256 bytes)")
    backend = _new_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[AddedToken(t, normalized=False, special=_is_special(t)) for t in SPECIAL_TOKENS],
        # All 256 bytes from the start, so any text (rare Chinese characters, emoji) stays encodable.
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    # The trainer registers all its special tokens as special; mark the markup tokens as plain added tokens.
    data = json.loads(backend.to_str())
    for added in data["added_tokens"]:
        added["special"] = _is_special(added["content"])
    return Tokenizer(_Backend.from_str(json.dumps(data, ensure_ascii=False)))


class Tokenizer:
    """A trained byte-level BPE with sprout's special tokens and chat format."""

    def __init__(self, backend: _Backend) -> None:
        self.backend = backend
        for i, t in enumerate(NAMED_SPECIAL_TOKENS):
            if backend.token_to_id(t) != i:
                raise ValueError(f"tokenizer has {t} at id {backend.token_to_id(t)}, sprout expects {i}")

    # ---- files ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load from a folder holding tokenizer.json (or from the tokenizer.json file itself)."""
        path = Path(path)
        return cls(_Backend.from_file(str(path / "tokenizer.json" if path.is_dir() else path)))

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json (with the chat template) and special_tokens_map.json."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        added = {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": _is_special(t)}
            for i, t in enumerate(SPECIAL_TOKENS)
        }
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "add_bos_token": False,
            "add_eos_token": False,
            "model_max_length": MODEL_MAX_LENGTH,
            "clean_up_tokenization_spaces": False,
            "split_special_tokens": False,
            "added_tokens_decoder": added,
            "chat_template": CHAT_TEMPLATE,
        }
        special_map = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
        for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
            (out / name).write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        return out

    # ---- ids -----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        return 2  # <|im_end|>: the end of every turn, where generation stops

    @property
    def pad_id(self) -> int:
        return 0  # <|endoftext|>: padding and the separator between packed documents

    def token_id(self, token: str) -> int:
        i = self.backend.token_to_id(token)
        if i is None:
            raise KeyError(f"{token!r} is not a single token")
        return i

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it map to their ids. No BOS/EOS is added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` for many texts at once (the Rust side spreads them over threads)."""
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ----------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | str | None = None,
        add_generation_prompt: bool = False,
        enable_thinking: bool = True,
    ) -> str:
        """The ChatML text of a conversation, identical to transformers' rendering of CHAT_TEMPLATE.

        `enable_thinking=False` with `add_generation_prompt` pre-fills the empty think block, the same
        block the model saw in training for answers without reasoning.
        """
        return render_chat(messages, tools, add_generation_prompt, enable_thinking)[0]

    def encode_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | str | None = None
    ) -> tuple[list[int], list[bool]]:
        """Ids of the rendered conversation and a mask that is True on the tokens the assistant produces.

        The text is tokenized once (so ids equal `encode(apply_chat_template(...))`); token character
        offsets place each token inside or outside an assistant span. Each span starts with the `<think>`
        token and ends with `<|im_end|>`, both added tokens, so no BPE merge can cross a span boundary.
        """
        text, spans = render_chat(messages, tools)
        enc = self.backend.encode(text, add_special_tokens=False)
        mask = [False] * len(enc.ids)
        k = 0  # spans and tokens are both in text order
        for t, (start, end) in enumerate(enc.offsets):
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if k < len(spans) and end > spans[k][0]:
                if start < spans[k][0] or end > spans[k][1]:
                    raise RuntimeError(f"token {enc.tokens[t]!r} straddles an assistant span boundary")
                mask[t] = True
        return enc.ids, mask


# ---- default tokenizer and file-based training ---------------------------------------------
def default_tokenizer_dir() -> Path:
    """The tokenizer shipped with sprout, trained on the built-in corpus by `build_default_tokenizer`."""
    return Path(__file__).parent / "assets" / "tokenizer"


def build_default_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 6400) -> Tokenizer:
    """Train the shipped tokenizer on all built-in pretraining text (the model sees the same mix)."""
    from sprout.data.builtin import pretrain_texts  # imported here: only this rebuild needs the corpora

    tok = train_tokenizer(pretrain_texts(), vocab_size)
    tok.save(out_dir or default_tokenizer_dir())
    return tok


def _texts_from_record(record: dict[str, Any]) -> Iterator[str]:
    if isinstance(record.get("text"), str):
        yield record["text"]
    for key in ("conversations", "messages", "chosen", "rejected"):
        for m in record.get(key) or []:
            for field in ("content", "reasoning_content"):
                if isinstance(m.get(field), str) and m[field]:
                    yield m[field]


def _iter_file_texts(paths: Iterable[str | Path]) -> Iterator[str]:
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        for f in files:
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{f}:{n}: not valid JSON ({e.msg})") from None
                    yield from _texts_from_record(record)


def train_tokenizer_from_files(
    paths: Iterable[str | Path], vocab_size: int = 6400, out_dir: str | Path = "tokenizer"
) -> Tokenizer:
    """Train on jsonl files (or folders of them): `text` fields and conversation contents; save to out_dir."""
    tok = train_tokenizer(_iter_file_texts(paths), vocab_size)
    tok.save(out_dir)
    return tok

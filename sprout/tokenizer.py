"""Byte-level BPE tokenizer: training, special tokens by name, the chat format and the SFT loss mask.

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
from sprout.tokenizer_template import DOC_END_NAMES, TemplateChat, generation_eos_ids, read_folder_config, token_name

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "Tokenizer",
    "build_default_tokenizer",
    "default_tokenizer_dir",
    "normalize_record",
    "render_chat",
    "train_tokenizer",
    "train_tokenizer_from_files",
]

# Ids 0..8 are fixed in the tokenizers sprout trains (0 = pad, 1 = <|im_start|>, 2 = eos); every other
# part of sprout asks the Tokenizer for ids by name, so a foreign layout works too.
# The reserved slots let later features add control tokens without resizing trained embeddings.
NUM_SPECIAL = 32
NAMED_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]
SPECIAL_TOKENS = NAMED_SPECIAL_TOKENS + [f"<|reserved_{i}|>" for i in range(NUM_SPECIAL - len(NAMED_SPECIAL_TOKENS))]
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
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 6400) -> Tokenizer:
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
    """A byte-level BPE and its chat format, with special tokens taken by name.

    Two layouts: sprout's own (trained here: fixed ids 0..8, the ChatML template of tokenizer_chat.py,
    rendered in Python) and any other folder's (a Qwen3 / Llama-3 / MiniMind tokenizer): there `config`
    is its tokenizer_config.json, whose eos/pad tokens and Jinja chat template are used as they are.
    """

    def __init__(
        self, backend: _Backend, config: dict[str, Any] | None = None, generation_eos: Iterable[int] = ()
    ) -> None:
        self.backend = backend
        self.config = config
        if config is None:
            for i, t in enumerate(NAMED_SPECIAL_TOKENS):
                if backend.token_to_id(t) != i:
                    raise ValueError(f"tokenizer has {t} at id {backend.token_to_id(t)}, sprout expects {i}")
            self.chat_template: str | None = CHAT_TEMPLATE
            self._template: TemplateChat | None = None
            self._eos, self._pad, self._sep, self._stops = 2, 0, 0, [2, 0]
            return
        vocab = backend.get_vocab(with_added_tokens=True)
        special = {k: token_name(config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        self.chat_template = config.get("chat_template") or None
        self._template = TemplateChat(self.chat_template, special) if self.chat_template else None
        turn_end = self._template.turn_end(vocab) if self._template else None
        doc_end = next((t for t in DOC_END_NAMES if t in vocab), None)
        eos = turn_end or special["eos_token"] or doc_end
        if eos not in vocab:
            raise ValueError(
                f"the tokenizer's eos_token {eos!r} is not in its vocabulary; set eos_token in tokenizer_config.json"
            )
        self._eos = vocab[eos]
        self._sep = vocab[doc_end or special["eos_token"] or eos]
        self._pad = vocab.get(special["pad_token"] or "", self._sep)
        named = [vocab.get(special["eos_token"] or "")] + list(generation_eos) + [self._sep]
        self._stops = list(dict.fromkeys([self._eos] + [i for i in named if i is not None]))

    # ---- files ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a folder holding tokenizer.json (or from the tokenizer.json file itself).

        A folder whose tokenizer_config.json carries sprout's own template and ids loads in sprout's
        layout; any other is used with its own special tokens and chat template."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        file = folder / "tokenizer.json" if path.is_dir() else path
        if not file.exists():
            raise SystemExit(
                f"{path}: no tokenizer.json (sprout reads fast tokenizers; save the tokenizer "
                "with transformers' save_pretrained to get one)"
            )
        backend = _Backend.from_file(str(file))
        config = read_folder_config(folder)
        own = all(backend.token_to_id(t) == i for i, t in enumerate(NAMED_SPECIAL_TOKENS))
        if own and config.get("chat_template", CHAT_TEMPLATE) == CHAT_TEMPLATE:
            return cls(backend)
        return cls(backend, config or {}, generation_eos_ids(folder))

    def save(self, path: str | Path) -> Path:
        """Write tokenizer.json, tokenizer_config.json (with the chat template) and special_tokens_map.json."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out / "tokenizer.json"))
        if self.config is not None:  # a foreign tokenizer is written back as it came
            special_map = {
                k: self.config[k]
                for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                if self.config.get(k) is not None
            }
            for name, obj in (("tokenizer_config.json", self.config), ("special_tokens_map.json", special_map)):
                (out / name).write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            (out / "chat_template.jinja").unlink(missing_ok=True)  # the template lives in the config now
            return out
        added = {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": _is_special(t),
            }
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
        """The end of an assistant turn (<|im_end|>, <|eot_id|>, ...): where an answer ends."""
        return self._eos

    @property
    def pad_id(self) -> int:
        """Padding id (the folder's pad_token, else the document separator)."""
        return self._pad

    @property
    def doc_sep_id(self) -> int:
        """The token that ends each pretraining document (<|endoftext|>, <|end_of_text|>, ...)."""
        return self._sep

    @property
    def stop_ids(self) -> list[int]:
        """Every id that ends generation: the turn end, the folder's eos ids, the document end."""
        return list(self._stops)

    def generation_ids(self) -> dict[str, Any]:
        """Token ids for the folder's generation_config.json, so transformers' generate() stops where sprout does."""
        return {"eos_token_id": self.stop_ids, "pad_token_id": self.pad_id}

    def token_name(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def has_token(self, token: str) -> bool:
        return self.backend.token_to_id(token) is not None

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
    def _chat(self) -> TemplateChat:
        if self._template is None:
            raise ValueError(
                "this tokenizer has no chat_template (tokenizer_config.json); chat needs one — "
                "copy the tokenizer files of the matching instruct model into the folder"
            )
        return self._template

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | str | None = None,
        add_generation_prompt: bool = False,
        enable_thinking: bool = True,
    ) -> str:
        """The text of a conversation, identical to transformers' rendering of the folder's template.

        For sprout's template, `enable_thinking=False` with `add_generation_prompt` pre-fills the empty
        think block, the same block the model saw in training for answers without reasoning.
        """
        if self.config is None:
            return render_chat(messages, tools, add_generation_prompt, enable_thinking)[0]
        return self._chat().render(messages, _tool_list(tools), add_generation_prompt, enable_thinking)

    def encode_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | str | None = None
    ) -> tuple[list[int], list[bool]]:
        """Ids of the rendered conversation and a mask that is True on the tokens the assistant produces.

        The text is tokenized once (so ids equal `encode(apply_chat_template(...))`); token character
        offsets place each token inside or outside an assistant span. In sprout's layout each span starts
        with the `<think>` token and ends with `<|im_end|>`, both added tokens, so no BPE merge can cross
        a span boundary; with another template a token that overlaps a span counts as the assistant's.
        """
        if self.config is None:
            text, spans = render_chat(messages, tools)
        else:
            text, spans = self._chat().render_with_spans(messages, _tool_list(tools), self.token_name(self._eos))
        enc = self.backend.encode(text, add_special_tokens=False)
        mask = [False] * len(enc.ids)
        k = 0  # spans and tokens are both in text order
        for t, (start, end) in enumerate(enc.offsets):
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if k < len(spans) and end > spans[k][0]:
                if self.config is None and (start < spans[k][0] or end > spans[k][1]):
                    raise RuntimeError(f"token {enc.tokens[t]!r} straddles an assistant span boundary")
                mask[t] = True
        return enc.ids, mask


def _tool_list(tools: list[dict[str, Any]] | str | None) -> list[dict[str, Any]] | None:
    return (json.loads(tools) if isinstance(tools, str) else tools) or None


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


def iter_file_texts(paths: Iterable[str | Path]) -> Iterator[str]:
    """The texts of data files (or folders of them): `text` fields and conversation contents, read and
    validated like any dataset (kind `tokenizer`), so a bad record is reported as FILE:LINE."""
    from sprout.data.readers import read_records  # imported here: the sprout.data package pulls in torch

    for p in paths:
        for record in read_records(p, "tokenizer"):
            yield from _texts_from_record(record)


def train_tokenizer_from_files(
    paths: Iterable[str | Path], vocab_size: int = 6400, out_dir: str | Path = "tokenizer"
) -> Tokenizer:
    """Train on jsonl files (or folders of them): `text` fields and conversation contents; save to out_dir."""
    tok = train_tokenizer(iter_file_texts(paths), vocab_size)
    tok.save(out_dir)
    return tok

"""Model folders written by stock transformers with tokenizers that are not sprout's (built offline).

Three layouts, each a byte-level BPE trained here with the `tokenizers` library and saved with
transformers' PreTrainedTokenizerFast.save_pretrained, beside a random Qwen3 or Llama model saved with
AutoModelForCausalLM.from_config(...).save_pretrained:
- "chatml":   Qwen-style — the special tokens come after the learned vocabulary (ids in the thousands),
              <|endoftext|> pads, <|im_end|> ends a turn, the model's vocabulary is padded past the tokenizer's;
- "llama3":   Llama-3-style — <|begin_of_text|> BOS, <|start_header_id|>role<|end_header_id|>, <|eot_id|>,
              no pad token, untied embeddings;
- "minimind": MiniMind-style — 6,400 tokens with <|endoftext|>, <|im_start|>, <|im_end|> at 0, 1, 2 and a
              ChatML template that adds a default system prompt (no <think> token).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CHATML_TEMPLATE = (
    "{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
LLAMA3_TEMPLATE = (
    "{{- bos_token -}}{%- for m in messages -%}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + (m['content'] | trim) + '<|eot_id|>' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)
MINIMIND_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' -%}{{- '<|im_start|>system\\nYou are a helpful assistant<|im_end|>\\n' -}}"
    "{%- endif -%}{%- for m in messages -%}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

LAYOUTS = {
    #          specials first?, special tokens, vocab, template, bos, eos, pad, family
    "chatml": (
        False,
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        2000,
        CHATML_TEMPLATE,
        None,
        "<|im_end|>",
        "<|endoftext|>",
        "qwen3",
    ),
    "llama3": (
        False,
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        1500,
        LLAMA3_TEMPLATE,
        "<|begin_of_text|>",
        "<|eot_id|>",
        None,
        "llama",
    ),
    "minimind": (
        True,
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        6400,
        MINIMIND_TEMPLATE,
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "qwen3",
    ),
}


@cache
def _corpus() -> tuple[str, ...]:
    from sprout.data.builtin import pretrain_texts

    return tuple(pretrain_texts(max_chars=400_000))


def build_tokenizer(layout: str):
    """A transformers PreTrainedTokenizerFast with the layout's ids, special tokens and template."""
    from transformers import PreTrainedTokenizerFast

    first, specials, vocab, template, bos, eos, pad, _ = LAYOUTS[layout]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials if first else [],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    if not first:  # Qwen / Llama put their special tokens after the learned vocabulary
        backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad, chat_template=template
    )


def make_folder(path: Path, layout: str, seed: int = 0) -> Path:
    """Save a random tiny model of the layout's family and its tokenizer with stock transformers."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    tok = build_tokenizer(layout)
    family = LAYOUTS[layout][7]
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    dims = dict(
        vocab_size=len(tok) + 64 if layout == "chatml" else len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=512,
    )
    cfg = (
        Qwen3Config(**dims, tie_word_embeddings=True, **ids)
        if family == "qwen3"
        else LlamaConfig(**dims, tie_word_embeddings=False, **ids)
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # larger weights than the init, so greedy decoding wanders instead of repeating
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path

"""Tokenizer: special ids, round trips, transformers compatibility, chat template parity, loss mask."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from sprout.tokenizer import (
    SPECIAL_TOKENS,
    Tokenizer,
    default_tokenizer_dir,
    normalize_record,
    render_chat,
    train_tokenizer,
    train_tokenizer_from_files,
)

FORMATS = Path("/work/shared/formats")
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "搜索保险条款 (search policy terms)",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]
MIXED = "保险是一种风险转移的工具。A term life policy pays a benefit 😀 <think>想一想</think> 128*37=4736<|im_end|>"

SENTENCES = [
    "保险是一种风险转移的工具。投保人按期缴纳保费，保险公司在约定的事故发生时给付保险金。",
    "A term life policy pays a death benefit only if the insured dies during the term.",
    "你好！有什么可以帮你？免赔额是损失中由被保险人自己承担的部分。",
    "What's the weather in Hangzhou? Light rain and 14 degrees right now.",
    '{"name": "get_weather", "arguments": {"city": "Hangzhou"}}',
]
WORDS = (
    "policy premium claim coverage insurer deductible benefit annuity rider 保险 保费 理赔 免赔额 受益人 合同".split()
)
# Varied word combinations give the trainer enough distinct pairs to reach the requested vocab size.
CORPUS = SENTENCES * 10 + [" ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 9)) for i in range(200)]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=600)


@pytest.fixture(scope="module")
def saved_dir(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tok.save(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def hf(saved_dir: Path):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(saved_dir))


def conversations() -> list[tuple[list[dict], list[dict] | None]]:
    """(messages, tools) covering every branch of the template."""
    convs: list[tuple[list[dict], list[dict] | None]] = [
        ([{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}], None),
        (
            [
                {"role": "system", "content": "You are concise."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "再见"},
                {"role": "assistant", "content": "再见！"},
            ],
            None,
        ),
        (
            [
                {"role": "user", "content": "3×7?"},
                {"role": "assistant", "reasoning_content": "\n3 × 7 = 21。\n", "content": "等于 21。"},
            ],
            None,
        ),
        # Tools without a system message; two calls (plain and OpenAI style, string and dict arguments);
        # two consecutive tool results; a final answer.
        (
            [
                {"role": "user", "content": "查一下免赔额和保费"},
                {
                    "role": "assistant",
                    "content": "",
                    "reasoning_content": "需要查两次。",
                    "tool_calls": [
                        {"name": "search", "arguments": {"query": "免赔额"}},
                        {"type": "function", "function": {"name": "search", "arguments": '{"query": "保费"}'}},
                    ],
                },
                {"role": "tool", "content": "免赔额：自付部分"},
                {"role": "tool", "content": {"result": "保费：按月缴纳"}},
                {"role": "assistant", "content": "查到了。"},
            ],
            TOOLS,
        ),
        # Content before a tool call; system message merged with the tool block; None content.
        (
            [
                {"role": "system", "content": "你可以调用工具。"},
                {"role": "user", "content": "search"},
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": {"query": "x"}}}],
                },
                {"role": "tool", "content": "nothing"},
                {"role": "assistant", "content": None},
            ],
            TOOLS,
        ),
    ]
    for path in sorted(FORMATS.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "conversations" in record:
                convs.append(normalize_record(record))
    return convs


def test_special_token_ids(tok: Tokenizer) -> None:
    assert len(SPECIAL_TOKENS) == 32 and len(set(SPECIAL_TOKENS)) == 32
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_id(t) == i
        assert tok.encode(t) == [i]
    assert (tok.pad_id, tok.eos_id) == (0, 2)
    assert tok.vocab_size == 600
    assert tok.encode("a<think>b</think>")[1] == 3 and tok.encode("a<think>b</think>")[-1] == 4
    # Markup tokens survive skip_special_tokens (tool-call parsers need them); control tokens do not.
    ids = tok.encode("<|im_start|><think>x</think><tool_call>{}</tool_call><|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "<think>x</think><tool_call>{}</tool_call>"


@pytest.mark.parametrize(
    "text",
    [
        MIXED,
        "",
        " leading and trailing  ",
        "生僻字：龘靐齉 emoji: 🧪👩‍🔬 tabs\tand\nnewlines\r\n",
        "x" * 300,
    ],
)
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_digits_are_split(tok: Tokenizer) -> None:
    assert len(tok.encode("4736")) == 4


def test_save_load(tok: Tokenizer, saved_dir: Path) -> None:
    assert {p.name for p in saved_dir.iterdir()} >= {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    config = json.loads((saved_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["bos_token"] is None and config["clean_up_tokenization_spaces"] is False
    assert config["added_tokens_decoder"]["3"]["content"] == "<think>"
    assert Tokenizer.load(saved_dir).encode(MIXED) == tok.encode(MIXED)


def test_autotokenizer_matches(tok: Tokenizer, hf) -> None:
    for text in (MIXED, "<|im_start|>user\n你好 world<|im_end|>\n", "生僻字：龘 🧪"):
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == tok.decode(ids) == text
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids, skip_special_tokens=True)
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (2, 0, None)


@pytest.mark.parametrize("gen", [False, True])
@pytest.mark.parametrize("thinking", [None, True, False])
def test_chat_template_matches_transformers(tok: Tokenizer, hf, gen: bool, thinking: bool | None) -> None:
    kw = {} if thinking is None else {"enable_thinking": thinking}
    for messages, tools in conversations():
        ours = tok.apply_chat_template(copy.deepcopy(messages), tools, add_generation_prompt=gen, **kw)
        theirs = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen, **kw)
        assert ours == theirs


def test_chat_layout(tok: Tokenizer) -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(msgs) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nyo<|im_end|>\n"
    )
    assert tok.apply_chat_template(msgs[:1], add_generation_prompt=True).endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template(msgs[:1], add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    text = tok.apply_chat_template(*conversations()[3])
    assert '<tool_call>\n{"name": "search", "arguments": {"query": "免赔额"}}\n</tool_call>\n<tool_call>' in text
    assert "<tool_response>\n免赔额：自付部分\n</tool_response>\n<tool_response>" in text
    assert text.startswith("<|im_start|>system\n# Tools") and '"搜索保险条款' in text  # not \u-escaped


def test_normalize_record() -> None:
    record = json.loads((FORMATS / "sft.jsonl").read_text(encoding="utf-8").splitlines()[3])
    messages, tools = normalize_record(record)
    assert tools[0]["function"]["name"] == "get_weather"
    assert all("tools" not in m for m in messages)
    assert messages[2]["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Hangzhou"}}]
    openai = {
        "messages": [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
            }
        ],
        "tools": json.dumps(TOOLS),
    }
    messages, tools = normalize_record(openai)
    assert messages == [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}]
    assert tools == TOOLS
    with pytest.raises(ValueError):
        normalize_record({"conversations": [{"role": "robot", "content": "x"}]})


def test_train_mask_is_exact(tok: Tokenizer) -> None:
    for messages, tools in conversations():
        ids, mask = tok.encode_chat(messages, tools)
        text, spans = render_chat(messages, tools)
        assert ids == tok.encode(text) and len(mask) == len(ids)
        # Group masked tokens into runs; each run must decode to exactly one assistant turn's output.
        runs, current = [], []
        for i, m in zip(ids, mask):
            if m:
                current.append(i)
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        expected = [text[s:e] for s, e in spans]
        assert [tok.decode(r) for r in runs] == expected
        n_assistant = sum(m["role"] == "assistant" for m in messages)
        assert len(expected) == n_assistant
        assert all(e.startswith("<think>\n") and e.endswith("<|im_end|>") for e in expected)


def test_train_from_files(tmp_path: Path) -> None:
    data = tmp_path / "mix.jsonl"
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in CORPUS]
    lines += (FORMATS / "sft.jsonl").read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    tok = train_tokenizer_from_files([data], vocab_size=400, out_dir=out)
    assert tok.vocab_size == 400 and (out / "tokenizer_config.json").exists()
    assert Tokenizer.load(out).encode("保险 Hangzhou") == tok.encode("保险 Hangzhou")
    data.write_text("not json\n")
    with pytest.raises(ValueError, match="mix.jsonl:1"):
        train_tokenizer_from_files([data], vocab_size=400, out_dir=out)


def test_default_tokenizer() -> None:
    tok = Tokenizer.load(default_tokenizer_dir())
    assert tok.vocab_size == 6400
    assert [tok.token_id(t) for t in SPECIAL_TOKENS[:3]] == [0, 1, 2]
    # Trained on Chinese and English: common words compress well, common characters are single tokens.
    zh, en = "保险公司在约定的事故发生时给付保险金。", "The insurance company pays the benefit."
    assert len(zh) / len(tok.encode(zh)) > 1.2
    assert len(en) / len(tok.encode(en)) > 3.0
    assert all(len(tok.encode(c)) == 1 for c in "保险的是人我你好")
    assert tok.decode(tok.encode(MIXED)) == MIXED
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(default_tokenizer_dir()))
    assert hf.encode(MIXED, add_special_tokens=False) == tok.encode(MIXED)
    messages, tools = conversations()[3]
    assert hf.apply_chat_template(messages, tools=tools, tokenize=False) == tok.apply_chat_template(messages, tools)

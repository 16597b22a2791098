"""Every model family the README lists is served: a tiny random model of each (qwen3, llama, qwen3_moe,
deepseek_v3, qwen3_next) behind the real server, driven with the official `openai` client. At temperature 0
the streamed answer equals the non-streamed one, and 4 concurrent requests that join the batch at different
moments (rows added mid-decode, merged at different lengths, removed when done) each get exactly the tokens
they get alone and from generate()."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from conftest import FAMILIES, tiny_family_model  # noqa: E402

from sprout.infer.engine_batch import BatchEngine  # noqa: E402
from sprout.infer.generate import SamplingConfig, generate  # noqa: E402
from sprout.infer.server import ModelRegistry, ServeSettings, create_app  # noqa: E402
from sprout.tokenizer import Tokenizer, default_tokenizer_dir  # noqa: E402

KEY = "test-key"
PROMPTS = ["Hi", "Tell me a long story about a dragon and a knight", "1 2 3", "你好,今天天气怎么样?"]
MAX_TOKENS = 20


def lively(family: str, vocab_size: int):
    """Weights scaled up so greedy decoding wanders over many tokens instead of repeating one."""
    model = tiny_family_model(family, vocab_size=vocab_size)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20)
    return model


@pytest.fixture(scope="module")
def served():
    torch.set_num_threads(1)
    tok = Tokenizer.load(default_tokenizer_dir())
    settings = ServeSettings(
        api_key=KEY, max_tokens_cap=64, default_max_tokens=16, max_concurrent=8, max_batch=8, request_timeout=60
    )
    registry = ModelRegistry(settings)
    for family in FAMILIES:
        registry.add(family, lively(family, tok.vocab_size), tok)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(create_app(registry, settings), host="127.0.0.1", port=port, log_level="warning")
    )
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(500):
        if srv.started:
            break
        time.sleep(0.02)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=60)
    yield {"client": client, "registry": registry, "tok": tok}
    srv.should_exit = True
    th.join(timeout=10)


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_answer_equals_the_non_streamed_one(served, family):
    c = served["client"]
    kw = {
        "model": family,
        "messages": [{"role": "user", "content": PROMPTS[1]}],
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    whole = c.chat.completions.create(**kw)
    text = whole.choices[0].message.content
    assert whole.usage.completion_tokens >= 8 and len(set(text)) > 3  # not trivially empty or one token
    pieces = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw) if ch.choices]
    assert "".join(pieces) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_concurrent_greedy_requests_each_equal_the_answer_decoded_alone(served, family):
    c, tok = served["client"], served["tok"]
    entry = served["registry"].entries[family]
    kw = {"model": family, "max_tokens": MAX_TOKENS, "temperature": 0}
    alone = [c.completions.create(prompt=p, **kw) for p in PROMPTS]
    engine = entry.engine
    engine.max_rows_seen = 0
    real = BatchEngine._sample
    engine._sample = lambda logits, rows: (time.sleep(0.01), real(logits, rows))[1]  # keep requests in flight
    try:
        results: list = [None] * len(PROMPTS)

        def run(i: int) -> None:
            time.sleep(0.04 * i)  # staggered: later requests join a batch that is already decoding
            results[i] = c.completions.create(prompt=PROMPTS[i], **kw)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
    finally:
        engine.__dict__.pop("_sample", None)
    assert engine.max_rows_seen >= 3, "requests were not decoded together"
    sc = SamplingConfig(max_new_tokens=MAX_TOKENS, temperature=0)
    for p, a, b in zip(PROMPTS, alone, results):
        assert a.usage.completion_tokens >= 4 and a.choices[0].text.strip()
        assert b.choices[0].text == a.choices[0].text
        assert b.usage.completion_tokens == a.usage.completion_tokens
        ref = generate(entry.model, [tok.encode(p)], sc)[0]
        # The server holds back a trailing incomplete UTF-8 character (U+FFFD when decoded on its own).
        assert a.usage.completion_tokens == len(ref) and a.choices[0].text == tok.decode(ref).removesuffix("\ufffd")

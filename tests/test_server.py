"""The OpenAI-compatible server, driven live over HTTP with the official `openai` client.

A tiny random model is served by a real uvicorn server on a free loopback port. Its text is
noise, so tests that need particular output (tool calls, a think block) replace the engine's
token sampler with a script of token ids: everything after sampling — the batch engine, text
decoding, <think>/<tool_call> parsing, the HTTP/SSE formats and the client — is the real path.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402
from conftest import tiny_model  # noqa: E402

from sprout.infer.engine_batch import BatchEngine, GenRequest  # noqa: E402
from sprout.infer.generate import SamplingConfig, generate  # noqa: E402
from sprout.infer.server import ModelRegistry, ServeSettings, create_app  # noqa: E402
from sprout.infer.toolparse import OutputParser, parse_output  # noqa: E402
from sprout.tokenizer import Tokenizer, default_tokenizer_dir  # noqa: E402
from sprout.tokenizer_chat import EMPTY_THINK  # noqa: E402

KEY = "test-key"
USER = [{"role": "user", "content": "Hello, who are you?"}]


def lively_model(seed: int, vocab_size: int):
    """A tiny random model with weights scaled up, so greedy decoding wanders over many tokens
    instead of repeating one (a plain random init repeats a newline forever, which would make
    the equality tests below trivially true)."""
    model = tiny_model(seed=seed, vocab_size=vocab_size)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20)
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    torch.set_num_threads(1)
    tok = Tokenizer.load(default_tokenizer_dir())
    settings = ServeSettings(
        api_key=KEY, max_tokens_cap=64, default_max_tokens=16, max_concurrent=4, max_batch=8, request_timeout=30
    )
    registry = ModelRegistry(settings)
    registry.add("tiny", lively_model(0, tok.vocab_size), tok)
    registry.add("tiny-b", lively_model(1, tok.vocab_size), tok)
    app = create_app(registry, settings)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.02)
    base = f"http://127.0.0.1:{port}"
    yield {
        "base": base,
        "registry": registry,
        "tok": tok,
        "client": openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=30),
    }
    srv.should_exit = True
    th.join(timeout=10)


@pytest.fixture
def script(server):
    """Make the "tiny" model emit a fixed text: every row's n-th token is the script's n-th token."""
    engine: BatchEngine = server["registry"].entries["tiny"].engine
    tok = server["tok"]

    def use(text: str):
        ids = tok.encode(text) + [tok.eos_id]
        engine._sample = lambda logits, rows: [ids[min(r.generated, len(ids) - 1)] for r in rows]

    yield use
    engine.__dict__.pop("_sample", None)


def _chat(client, **kw):
    kw.setdefault("model", "tiny")
    kw.setdefault("messages", USER)
    return client.chat.completions.create(**kw)


# ---- parsing (fixed text) ---------------------------------------------------------------------------
def test_parse_output_splits_thinking_content_and_tool_calls():
    text = (
        "<think>\nCheck the weather.\n</think>\n\nLet me look.\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>'
    )
    reasoning, content, calls = parse_output(text, thinking=True)
    assert reasoning == "Check the weather."
    assert content == "Let me look."
    assert [c["function"]["name"] for c in calls] == ["get_weather"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "北京"}
    # Fed one character at a time (as streaming sees it) the events add up to the same thing.
    p = OutputParser(thinking=True)
    events = [e for ch in text for e in p.feed(ch)] + p.finish()
    assert "".join(e.text for e in events if e.kind == "reasoning") == reasoning
    assert "".join(e.text for e in events if e.kind == "content") == content
    # Broken JSON inside the tags is not a call; the text is kept.
    assert parse_output("a <tool_call>\n{oops}\n</tool_call>") == (None, "a <tool_call>\n{oops}\n</tool_call>", [])
    assert parse_output("<think>x</think>y", thinking=False) == (None, "<think>x</think>y", [])


# ---- basic endpoints ------------------------------------------------------------------------------
def test_health_and_models(server):
    r = httpx.get(server["base"] + "/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    ids = [m.id for m in server["client"].models.list().data]
    assert ids == ["tiny", "tiny-b"]


def test_plain_chat_and_usage(server):
    tok = server["tok"]
    r = _chat(server["client"], temperature=0, max_tokens=12)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    prompt = tok.encode(tok.apply_chat_template(USER, add_generation_prompt=True, enable_thinking=False))
    assert r.usage.prompt_tokens == len(prompt)
    assert 1 <= r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # The other registered model gives different text for the same greedy request.
    r2 = _chat(server["client"], model="tiny-b", temperature=0, max_tokens=12)
    assert r2.model == "tiny-b" and r2.choices[0].message.content != r.choices[0].message.content


def test_stream_equals_non_stream(server):
    c = server["client"]
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 1234}):
        full = _chat(c, max_tokens=24, **kw)
        chunks = list(_chat(c, max_tokens=24, stream=True, stream_options={"include_usage": True}, **kw))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == full.choices[0].message.content
        assert len(text) > 10  # the random model does produce text here
        finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        assert finals == [full.choices[0].finish_reason]
        assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # Raw SSE ends with [DONE].
    with httpx.stream(
        "POST",
        server["base"] + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": "tiny", "messages": USER, "stream": True, "max_tokens": 3},
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_multi_turn_renders_history(server):
    tok = server["tok"]
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    r = _chat(server["client"], messages=msgs, temperature=0, max_tokens=4)
    expected = tok.encode(tok.apply_chat_template(msgs, add_generation_prompt=True, enable_thinking=False))
    assert r.usage.prompt_tokens == len(expected)
    one_turn = _chat(server["client"], messages=msgs[-1:], temperature=0, max_tokens=4)
    assert one_turn.usage.prompt_tokens < r.usage.prompt_tokens


def test_stop_string_cuts_the_text(server, script):
    script("The quick brown fox jumps over the lazy dog.")
    full = _chat(server["client"], temperature=0)
    assert full.choices[0].message.content == "The quick brown fox jumps over the lazy dog."
    cut = _chat(server["client"], temperature=0, stop=["nothing", "fox"])
    assert cut.choices[0].message.content == "The quick brown"
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < full.usage.completion_tokens  # generation stopped there
    chunks = list(_chat(server["client"], temperature=0, stop="jumps", stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "The quick brown fox"


def test_completions_endpoint(server):
    c = server["client"]
    r = c.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and isinstance(r.choices[0].text, str)
    assert r.usage.prompt_tokens == len(server["tok"].encode("Once upon a time"))
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model="tiny", prompt="Once upon a time", max_tokens=8, temperature=0, stream=True
        )
        if ch.choices
    )
    assert streamed == r.choices[0].text


# ---- tools and thinking (scripted sampler) ------------------------------------------------------------
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def test_tool_calls(server, script):
    script('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>')
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = _chat(server["client"], messages=msgs, tools=TOOLS, temperature=0, max_tokens=48)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # The tools were rendered into the prompt.
    tok = server["tok"]
    prompt = tok.encode(tok.apply_chat_template(msgs, tools=TOOLS, add_generation_prompt=True, enable_thinking=False))
    assert r.usage.prompt_tokens == len(prompt)
    # Streaming delivers the same call.
    chunks = list(_chat(server["client"], messages=msgs, tools=TOOLS, temperature=0, max_tokens=48, stream=True))
    calls = [tc for ch in chunks for tc in (ch.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # The tool result goes back in as the next turn (multi-turn with tools renders and runs).
    follow = msgs + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
    ]
    script("It is 21 degrees.")
    r2 = _chat(server["client"], messages=follow, tools=TOOLS, temperature=0)
    assert r2.choices[0].message.content == "It is 21 degrees." and r2.choices[0].finish_reason == "stop"


def test_thinking_on_and_off(server, script):
    script("<think>\nThe user greets me.\n</think>\n\nHello there.")
    on = _chat(server["client"], temperature=0, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert on.choices[0].message.reasoning_content == "The user greets me."
    assert on.choices[0].message.content == "Hello there."
    chunks = list(
        _chat(
            server["client"], temperature=0, stream=True, extra_body={"chat_template_kwargs": {"enable_thinking": True}}
        )
    )
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == "The user greets me."
    assert "".join(d.content or "" for d in deltas) == "Hello there."

    script("Hello there.")
    off = _chat(server["client"], temperature=0)  # default: thinking off
    assert off.choices[0].message.content == "Hello there."
    assert getattr(off.choices[0].message, "reasoning_content", None) is None
    # Off pre-fills the empty think block in the prompt.
    assert off.usage.prompt_tokens == on.usage.prompt_tokens + len(server["tok"].encode(EMPTY_THINK))


# ---- errors --------------------------------------------------------------------------------------
def _assert_error(resp: httpx.Response, status: int, param=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param:
        assert err["param"] == param


def test_errors(server):
    base, h = server["base"], {"Authorization": f"Bearer {KEY}"}
    c = server["client"]
    _assert_error(httpx.post(base + "/v1/chat/completions", content=b"{not json", headers=h), 400)
    _assert_error(httpx.post(base + "/v1/chat/completions", json={"model": "tiny"}, headers=h), 400, "messages")
    _assert_error(
        httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]}, headers=h),
        400,
        "messages",
    )
    _assert_error(
        httpx.post(base + "/v1/chat/completions", json={"messages": USER, "temperature": "hot"}, headers=h),
        400,
        "temperature",
    )
    _assert_error(httpx.post(base + "/v1/chat/completions", json={"messages": USER}), 401)
    _assert_error(httpx.get(base + "/v1/nothing-here", headers=h), 404)
    with pytest.raises(openai.BadRequestError) as e:
        _chat(c, max_tokens=10_000)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        _chat(c, messages=[{"role": "user", "content": "word " * 3000}])
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError):
        _chat(c, model="no-such-model")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny", prompt=None)
    # The server is still fine.
    assert _chat(c, max_tokens=2).choices[0].message.role == "assistant"


def test_too_many_requests_and_disconnect_cancels(server):
    """4 slow streams fill max_concurrent=4: the 5th request gets 429. Closing the streams
    (client gone) removes their rows from the engine long before their 64 tokens are done."""
    engine = server["registry"].entries["tiny"].engine
    real = BatchEngine._sample

    def slow(logits, rows):
        time.sleep(0.05)
        return real(logits, rows)

    engine._sample = slow
    try:
        h = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "tiny", "messages": USER, "stream": True, "max_tokens": 64, "temperature": 1.0}
        clients = [httpx.Client(base_url=server["base"], timeout=30) for _ in range(4)]
        streams = [cl.stream("POST", "/v1/chat/completions", json=body, headers=h) for cl in clients]
        responses = [s.__enter__() for s in streams]
        assert all(r.status_code == 200 for r in responses)
        deadline = time.time() + 5
        while httpx.get(server["base"] + "/health").json()["active_requests"] < 4 and time.time() < deadline:
            time.sleep(0.02)
        _assert_error(httpx.post(server["base"] + "/v1/chat/completions", json={"messages": USER}, headers=h), 429)
        assert engine.load >= 1
        t0 = time.time()
        for s, cl in zip(streams, clients):
            s.__exit__(None, None, None)
            cl.close()
        while engine.load > 0 and time.time() - t0 < 5:
            time.sleep(0.02)
        assert engine.load == 0
        assert time.time() - t0 < 2.0  # 64 tokens x 50 ms would take 3.2 s
        deadline = time.time() + 5
        while httpx.get(server["base"] + "/health").json()["active_requests"] > 0 and time.time() < deadline:
            time.sleep(0.02)
        assert httpx.get(server["base"] + "/health").json()["active_requests"] == 0
    finally:
        engine.__dict__.pop("_sample", None)


# ---- batching -------------------------------------------------------------------------------------
def test_concurrent_requests_batch_and_match_single(server):
    """Greedy tokens are the same alone, in a batch of concurrent requests, and from generate()."""
    c, tok = server["client"], server["tok"]
    engine = server["registry"].entries["tiny"].engine
    prompts = ["Hi", "Tell me a long story about a dragon and a knight", "1 2 3", "你好,今天天气怎么样?"]
    kw = {"model": "tiny", "max_tokens": 24, "temperature": 0}
    alone = [c.completions.create(prompt=p, **kw) for p in prompts]
    engine.max_rows_seen = 0
    # Slow each step a little so all requests are in flight together.
    real = BatchEngine._sample
    engine._sample = lambda logits, rows: (time.sleep(0.01), real(logits, rows))[1]
    try:
        results: list = [None] * len(prompts)
        barrier = threading.Barrier(len(prompts))

        def run(i):
            barrier.wait()
            results[i] = c.completions.create(prompt=prompts[i], **kw)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        [t.start() for t in threads]
        [t.join(30) for t in threads]
    finally:
        engine.__dict__.pop("_sample", None)
    assert engine.max_rows_seen >= 2, "requests were not decoded together"
    assert len({a.choices[0].text for a in alone}) == len(prompts)
    for a, b in zip(alone, results):
        assert len(set(a.choices[0].text)) > 5  # varied text, not one repeated token
        assert a.choices[0].text == b.choices[0].text
        assert a.usage.completion_tokens == b.usage.completion_tokens
    # And the reference decoder agrees.
    model = server["registry"].entries["tiny"].model
    sc = SamplingConfig(max_new_tokens=24, temperature=0)
    for p, a in zip(prompts, alone):
        ref = generate(model, [tok.encode(p)], sc)[0]
        assert a.choices[0].text == tok.decode(ref)


def test_engine_timeout_and_cancel_before_start():
    tok_model = tiny_model()
    engine = BatchEngine(tok_model, max_batch=2)
    try:
        got = {}
        done = threading.Event()

        def emit(t, reason=None):
            if t is None:
                got["reason"] = reason
                done.set()

        engine.submit(GenRequest([5, 6, 7], SamplingConfig(max_new_tokens=5), emit, deadline=time.monotonic() - 1))
        assert done.wait(5) and got["reason"] == "timeout"
        done.clear()
        req = GenRequest([5, 6, 7], SamplingConfig(max_new_tokens=5), emit)
        req.cancel()
        engine.submit(req)
        assert done.wait(5) and got["reason"] == "cancelled"
    finally:
        engine.shutdown()


def test_lora_adapter_is_served_by_name(tmp_path):
    """--lora NAME=DIR: the adapter is merged into a copy of the base and gets its own engine."""
    lora = pytest.importorskip("sprout.train.lora")
    from sprout.models import save_model

    tok = Tokenizer.load(default_tokenizer_dir())
    model = tiny_model(vocab_size=tok.vocab_size)
    save_model(model, tmp_path / "base")
    tok.save(tmp_path / "base")
    lora.apply_lora(model, 4, 8.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    lora.save_adapter(model, tmp_path / "adapter")
    registry = ModelRegistry(ServeSettings())
    try:
        registry.add_model_dir("base", str(tmp_path / "base"), "cpu")
        entry = registry.add_lora("adapted", str(tmp_path / "adapter"), None, "cpu")
        assert entry.parent == "base" and registry.get("adapted") is entry
        x = torch.tensor([[5, 6, 7]])
        with torch.no_grad():
            assert torch.allclose(entry.model(x).logits, model(x).logits, atol=1e-4)  # = base + adapter
            assert not torch.allclose(entry.model(x).logits, registry.get("base").model(x).logits)
    finally:
        registry.shutdown()


def test_a_cpu_server_leaves_one_core_to_the_http_side(monkeypatch):
    from sprout.infer.server import serve_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (serve_threads(None, "cpu"), serve_threads(None, "auto"), serve_threads(3, "cpu")) == (7, 7, 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU server keeps torch's default
    assert serve_threads(None, "cuda") == 8
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert serve_threads(None, "cpu") == 1

"""`sprout serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) with continuous batching.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, and the
chat page at / (static files in sprout/infer/web/). Every model (or adapter) in the registry has
its own `BatchEngine` thread (engine_batch.py); HTTP handlers only tokenize, submit, and turn the
tokens the engine emits into text, reasoning and tool calls (toolparse.py). See docs/serving.md.
"""

import argparse
import asyncio
import json
import logging
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models.dense import SproutForCausalLM
from ..train.device import select_device
from .engine_batch import BatchEngine, GenRequest
from .generate import SamplingConfig, TextDecoder
from .toolparse import OutputParser

log = logging.getLogger("sprout.serve")
WEB_DIR = Path(__file__).parent / "web"


# ---- settings and errors ------------------------------------------------------------------------
@dataclass
class ServeSettings:
    api_key: str | None = None
    max_prompt_tokens: int = 2048  # also capped by the model's context length
    max_tokens_cap: int = 1024  # largest max_tokens a request may ask for
    default_max_tokens: int = 256
    max_concurrent: int = 64  # requests in flight (waiting + decoding); more get 429
    max_batch: int = 32  # rows decoded together per model
    request_timeout: float = 300.0  # seconds from arrival to the last token
    max_body_bytes: int = 1 << 20  # larger request bodies get 413 before they are read whole
    body_timeout: float = 30.0  # seconds a client may take to send its body (slow senders get 408)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---- model registry ------------------------------------------------------------------------------
@dataclass
class ModelEntry:
    name: str
    model: SproutForCausalLM
    tokenizer: Any
    engine: BatchEngine
    context_len: int
    defaults: dict = field(default_factory=dict)  # sampling defaults from generation_config.json
    parent: str | None = None  # base model name for an adapter
    created: int = field(default_factory=lambda: int(time.time()))


def _generation_defaults(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "generation_config.json"
    if not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for key in ("temperature", "top_p", "top_k", "repetition_penalty"):
        if isinstance(cfg.get(key), (int, float)):
            out[key] = cfg[key]
    if cfg.get("do_sample") is False:
        out["temperature"] = 0.0
    return out


def load_lora_model(
    base_dir: str | Path, adapter_dir: str | Path, device: str = "auto"
) -> tuple[SproutForCausalLM, Any]:
    """Base model + LoRA adapter folder (PEFT layout, sprout/train/lora.py) -> (merged model, tokenizer).

    The adapter is merged into a private copy of the base weights, so each adapter gets its own
    engine: requests for the same adapter batch together and a step needs no per-row adapter math.
    (Memory grows by one model per adapter — fine at sprout's sizes; a shared-base engine applying
    per-row low-rank deltas would be the next step for many adapters on a big base.)
    """
    from ..train.lora import load_adapter, merge_lora
    from .loading import load_for_inference

    model, tok = load_for_inference(str(base_dir), device)
    model = merge_lora(load_adapter(model, adapter_dir))
    return model.eval(), tok


class ModelRegistry:
    """Named models served side by side; the first one added is the default."""

    def __init__(self, settings: ServeSettings | None = None):
        self.settings = settings or ServeSettings()
        self.entries: dict[str, ModelEntry] = {}
        self.dirs: dict[str, str] = {}

    def add(
        self,
        name: str,
        model: SproutForCausalLM,
        tokenizer: Any,
        defaults: dict | None = None,
        parent: str | None = None,
    ) -> ModelEntry:
        if name in self.entries:
            raise ValueError(f"model name {name!r} used twice")
        ctx = int(getattr(model.config, "max_position_embeddings", 4096))
        engine = BatchEngine(model, max_batch=self.settings.max_batch, context_len=ctx, name=name)
        entry = ModelEntry(name, model, tokenizer, engine, ctx, defaults or {}, parent)
        self.entries[name] = entry
        return entry

    def add_model_dir(self, name: str, model_dir: str, device: str = "auto") -> ModelEntry:
        from .loading import load_for_inference

        model, tok = load_for_inference(model_dir, device)
        self.dirs[name] = model_dir
        try:
            return self.add(name, model, tok, _generation_defaults(model_dir))
        except ValueError as exc:  # e.g. a family whose cache lacks the batching protocol: say so at load time
            raise SystemExit(f"{model_dir}: {exc}") from None

    def add_lora(self, name: str, adapter_dir: str, base: str | None = None, device: str = "auto") -> ModelEntry:
        base = base or self.default_name
        if base not in self.dirs:
            raise SystemExit(f"--lora {name}: base model {base!r} is not a served model folder")
        model, tok = load_lora_model(self.dirs[base], adapter_dir, device)
        return self.add(name, model, tok, _generation_defaults(self.dirs[base]), parent=base)

    @property
    def default_name(self) -> str:
        return next(iter(self.entries))

    def get(self, name: str | None) -> ModelEntry:
        if name is None or name == "" or name == "default":
            return self.entries[self.default_name]
        if not isinstance(name, str):
            raise APIError(400, f"'model' must be a string, got {type(name).__name__}", param="model")
        if name not in self.entries:
            raise APIError(
                404, f"The model '{name}' does not exist; see GET /v1/models", param="model", code="model_not_found"
            )
        return self.entries[name]

    def shutdown(self) -> None:
        for e in self.entries.values():
            e.engine.shutdown()


# ---- request validation --------------------------------------------------------------------------
def _num(body: dict, key: str, lo: float, hi: float, default: Any, integer: bool = False) -> Any:
    v = body.get(key)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or (isinstance(v, float) and not math.isfinite(v)) or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        raise APIError(400, f"'{key}' must be {kind} between {lo} and {hi}, got {v!r}", param=key, code="invalid_value")
    return v


def _content_text(content: Any, where: str) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise APIError(400, f"{where}: only text content parts are supported", param="messages")
            parts.append(p["text"])
        return "".join(parts)
    raise APIError(400, f"{where}: content must be a string or a list of text parts", param="messages")


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if msgs is None:
        raise APIError(400, "'messages' is a required property", param="messages", code="missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty array", param="messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise APIError(400, f"{where} must be an object", param="messages")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise APIError(400, f"{where}.role must be system, user, assistant or tool, got {role!r}", param="messages")
        msg: dict[str, Any] = {"role": role, "content": _content_text(m.get("content"), where)}
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("function", c), dict) and "name" in c.get("function", c)
                for c in calls
            ):
                raise APIError(
                    400, f"{where}.tool_calls must be a list of calls with a function name", param="messages"
                )
            msg["tool_calls"] = calls
        if role == "assistant" and isinstance(m.get("reasoning_content"), str):
            msg["reasoning_content"] = m["reasoning_content"]
        if role in ("user", "system") and msg["content"] is None:
            raise APIError(400, f"{where}.content is required", param="messages")
        out.append(msg)
    return out


def _tools(body: dict) -> tuple[list | None, bool]:
    tools, choice = body.get("tools"), body.get("tool_choice", "auto")
    if tools is None:
        return None, False
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise APIError(400, "'tools' must be an array of objects", param="tools")
    for t in tools:
        fn = t.get("function", t)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise APIError(400, "every tool needs function.name", param="tools")
    if choice == "none":
        return None, False
    return (tools or None), bool(tools)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 non-empty strings", param="stop")
    return stop


def _temperature(t: float) -> float:
    """Below 1e-4, logits / t overflows to inf (then NaN probabilities); such a request means greedy."""
    return 0.0 if t < 1e-4 else t


def _sampling(body: dict, entry: ModelEntry, settings: ServeSettings, prompt_len: int) -> SamplingConfig:
    d = entry.defaults
    if body.get("n", 1) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if max_tokens is None:
        max_tokens = settings.default_max_tokens
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, f"'{key}' must be a positive integer", param=key, code="invalid_value")
    elif max_tokens > settings.max_tokens_cap:
        raise APIError(
            400,
            f"'{key}' is {max_tokens}, larger than this server's limit of {settings.max_tokens_cap}",
            param=key,
            code="invalid_value",
        )
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, "'seed' must be an integer", param="seed")
    return SamplingConfig(
        max_new_tokens=max(1, min(max_tokens, entry.context_len - prompt_len)),
        temperature=_temperature(float(_num(body, "temperature", 0, 2, d.get("temperature", 0.7)))),
        top_p=float(_num(body, "top_p", 0, 1, d.get("top_p", 1.0))) or 1e-9,
        top_k=int(_num(body, "top_k", 0, 1 << 20, d.get("top_k", 0), integer=True)),
        repetition_penalty=float(_num(body, "repetition_penalty", 0.01, 10, d.get("repetition_penalty", 1.0))),
        frequency_penalty=float(_num(body, "frequency_penalty", -2, 2, 0.0)),
        presence_penalty=float(_num(body, "presence_penalty", -2, 2, 0.0)),
        stop_token_ids=entry.tokenizer.stop_ids,
        seed=None if seed is None else seed % (1 << 63),
    )


def _check_prompt(ids: list[int], entry: ModelEntry, settings: ServeSettings) -> None:
    limit = min(settings.max_prompt_tokens, entry.context_len - 1)
    if not ids:
        raise APIError(400, "the prompt is empty", param="prompt")
    if len(ids) > limit:
        raise APIError(
            400,
            f"the prompt has {len(ids)} tokens; this server accepts at most {limit}",
            param="messages",
            code="context_length_exceeded",
        )


# ---- running one generation -------------------------------------------------------------------------
@dataclass
class Outcome:
    finish_reason: str = "stop"
    completion_tokens: int = 0
    error: APIError | None = None


class StopStringFilter:
    """Holds back text that might be the start of a stop string; reports when one is found."""

    def __init__(self, stops: list[str]):
        self.stops, self.buf, self.hit = stops, "", False

    def push(self, piece: str) -> str:
        if not self.stops:
            return piece
        self.buf += piece
        cut = min((self.buf.find(s) for s in self.stops if s in self.buf), default=-1)
        if cut >= 0:
            out, self.buf, self.hit = self.buf[:cut], "", True
            return out
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(s[:n]):
                    keep = n
                    break
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep :]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


async def generate_events(
    entry: ModelEntry,
    prompt: list[int],
    sc: SamplingConfig,
    stops: list[str],
    parser: OutputParser | None,
    settings: ServeSettings,
    outcome: Outcome,
    http_request: Any = None,
) -> AsyncIterator[tuple[str, Any]]:
    """Submit to the engine and yield ("reasoning"|"content"|"text", str) / ("tool_call", dict) events.

    When the consumer stops iterating (client gone) or a stop string is found, the request is
    cancelled and the engine drops its row at the next step."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emit(tok: int | None, reason: str | None = None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (tok, reason))

    deadline = time.monotonic() + settings.request_timeout
    req = GenRequest(prompt, sc, emit, deadline=deadline)
    decoder = TextDecoder(lambda ids: entry.tokenizer.decode(ids, skip_special_tokens=False))
    stop_filter = StopStringFilter(stops)
    stop_ids = set(sc.stop_token_ids or ())

    def parse(text: str, final: bool = False) -> list[tuple[str, Any]]:
        if parser is None:
            return [("text", text)] if text else []
        evs = parser.feed(text) + (parser.finish() if final else [])
        return [(e.kind, e.call if e.kind == "tool_call" else e.text) for e in evs]

    entry.engine.submit(req)
    try:
        while True:
            try:
                tok, reason = await asyncio.wait_for(queue.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if http_request is not None and await http_request.is_disconnected():
                    req.cancel()
                    outcome.finish_reason = "cancelled"
                    return
                if time.monotonic() > deadline + 10:  # the engine should have timed it out already
                    req.cancel()
                    reason, tok = "timeout", None
                else:
                    continue
            if tok is None:
                if reason in ("stop", "length"):
                    outcome.finish_reason = reason
                elif reason == "timeout":
                    outcome.error = APIError(
                        408,
                        f"the request ran past the server's timeout of {settings.request_timeout:g} s",
                        "timeout_error",
                        code="timeout",
                    )
                elif reason == "error":
                    outcome.error = APIError(500, f"generation failed: {req.error}", "server_error")
                else:
                    outcome.finish_reason = reason or "stop"
                break
            outcome.completion_tokens += 1
            if tok in stop_ids:
                continue
            text = stop_filter.push(decoder.push(tok))
            for ev in parse(text):
                yield ev
            if stop_filter.hit:
                req.cancel()
                outcome.finish_reason = "stop"
                break
        for ev in parse(stop_filter.flush(), final=True):
            yield ev
    finally:
        req.cancel()  # no-op when finished; stops the row when the client went away


# ---- the app -------------------------------------------------------------------------------------
def create_app(registry: ModelRegistry, settings: ServeSettings | None = None):
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException as StarletteHTTPException

    settings = settings or registry.settings
    state = {"active": 0}

    @asynccontextmanager
    async def lifespan(app):
        yield
        registry.shutdown()

    app = FastAPI(title="sprout", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException):
        return JSONResponse(
            APIError(exc.status_code, str(exc.detail), code=str(exc.status_code)).body(), status_code=exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        return JSONResponse(APIError(400, str(exc.errors())[:500]).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(
            APIError(500, f"internal error: {type(exc).__name__}", "server_error").body(), status_code=500
        )

    def check_key(request: Request) -> None:
        if not settings.api_key:
            return
        auth = request.headers.get("authorization", "")
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), settings.api_key.encode()):
            raise APIError(401, "Incorrect API key provided", "invalid_request_error", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        """The body, refused (413) past max_body_bytes without reading the rest, and (408) when slow."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise APIError(
                413,
                f"the request body is {declared} bytes, more than this server's limit of {limit}",
                code="request_too_large",
            )

        async def collect() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(
                        413,
                        f"the request body is more than this server's limit of {limit} bytes",
                        code="request_too_large",
                    )
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(collect(), settings.body_timeout)
        except asyncio.TimeoutError:
            raise APIError(
                408,
                f"the request body took longer than {settings.body_timeout:g} s to arrive",
                "timeout_error",
                code="timeout",
            ) from None

    async def read_json(request: Request) -> dict:
        raw = await read_body(request)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    class Slot:
        """Counts a request against max_concurrent from validation to its last byte."""

        def __init__(self):
            if state["active"] >= settings.max_concurrent:
                raise APIError(
                    429,
                    f"too many concurrent requests (limit {settings.max_concurrent}); retry later",
                    "rate_limit_error",
                    code="rate_limit_exceeded",
                )
            state["active"] += 1
            self.open = True

        def release(self):
            if self.open:
                self.open = False
                state["active"] -= 1

    def usage(prompt_len: int, outcome: Outcome) -> dict:
        return {
            "prompt_tokens": prompt_len,
            "completion_tokens": outcome.completion_tokens,
            "total_tokens": prompt_len + outcome.completion_tokens,
        }

    def sse(obj: dict | str) -> str:
        return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"

    # -- routes --------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(registry.entries), "active_requests": state["active"]}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        data = [
            {
                "id": e.name,
                "object": "model",
                "created": e.created,
                "owned_by": "sprout",
                **({"parent": e.parent} if e.parent else {}),
                "max_model_len": e.context_len,
            }
            for e in registry.entries.values()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(request)
        body = await read_json(request)
        entry = registry.get(body.get("model"))
        messages = _messages(body)
        tools, parse_tools = _tools(body)
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise APIError(400, "'chat_template_kwargs' must be an object", param="chat_template_kwargs")
        thinking = kwargs.get("enable_thinking", body.get("enable_thinking", False))
        if not isinstance(thinking, bool):
            raise APIError(400, "enable_thinking must be true or false", param="chat_template_kwargs")
        stops = _stops(body)
        stream = bool(body.get("stream", False))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage", False))
        try:
            text = entry.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, enable_thinking=thinking
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise APIError(400, f"cannot render these messages: {exc}", param="messages") from None
        prompt = entry.tokenizer.encode(text)
        _check_prompt(prompt, entry, settings)
        sc = _sampling(body, entry, settings, len(prompt))
        slot = Slot()
        cid, created, model_name = "chatcmpl-" + uuid.uuid4().hex, int(time.time()), entry.name
        parser = OutputParser(thinking=thinking, parse_tools=parse_tools)
        outcome = Outcome()

        def finish_reason() -> str:
            return "tool_calls" if parser.calls and outcome.finish_reason == "stop" else outcome.finish_reason

        if not stream:
            try:
                reasoning, content, calls = [], [], []
                async for kind, val in generate_events(entry, prompt, sc, stops, parser, settings, outcome, request):
                    if kind == "reasoning":
                        reasoning.append(val)
                    elif kind == "content":
                        content.append(val)
                    else:
                        calls.append(val)
            finally:
                slot.release()
            if outcome.error:
                raise outcome.error
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(content) if content or not calls else None}
            if thinking and reasoning:
                msg["reasoning_content"] = "".join(reasoning)
            if calls:
                msg["tool_calls"] = calls
            return {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "choices": [{"index": 0, "message": msg, "finish_reason": finish_reason(), "logprobs": None}],
                "usage": usage(len(prompt), outcome),
            }

        def chunk(delta: dict, finish: str | None = None) -> str:
            return sse(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                }
            )

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                n_calls = 0
                async for kind, val in generate_events(entry, prompt, sc, stops, parser, settings, outcome):
                    if kind == "reasoning":
                        yield chunk({"reasoning_content": val})
                    elif kind == "content":
                        yield chunk({"content": val})
                    else:
                        yield chunk({"tool_calls": [{"index": n_calls, **val}]})
                        n_calls += 1
                if outcome.error:
                    yield sse(outcome.error.body())
                else:
                    yield chunk({}, finish_reason())
                    if include_usage:
                        yield sse(
                            {
                                "id": cid,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": model_name,
                                "choices": [],
                                "usage": usage(len(prompt), outcome),
                            }
                        )
                yield sse("[DONE]")
            finally:
                slot.release()

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(request)
        body = await read_json(request)
        entry = registry.get(body.get("model"))
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if isinstance(p, str):
            prompt = entry.tokenizer.encode(p)
        elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if not all(0 <= t < entry.model.config.vocab_size for t in p):
                raise APIError(400, "token id out of the vocabulary", param="prompt")
            prompt = list(p)
        elif p is None:
            raise APIError(400, "'prompt' is a required property", param="prompt", code="missing_required_parameter")
        else:
            raise APIError(
                400, "'prompt' must be a string, a list of one string, or a list of token ids", param="prompt"
            )
        _check_prompt(prompt, entry, settings)
        sc = _sampling(body, entry, settings, len(prompt))
        stops, stream = _stops(body), bool(body.get("stream", False))
        slot = Slot()
        cid, created = "cmpl-" + uuid.uuid4().hex, int(time.time())
        outcome = Outcome()

        def choice(text: str, finish: str | None) -> dict:
            return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

        if not stream:
            try:
                parts = [
                    v async for _, v in generate_events(entry, prompt, sc, stops, None, settings, outcome, request)
                ]
            finally:
                slot.release()
            if outcome.error:
                raise outcome.error
            return {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": entry.name,
                "choices": [choice("".join(parts), outcome.finish_reason)],
                "usage": usage(len(prompt), outcome),
            }

        async def events():
            try:
                async for _, v in generate_events(entry, prompt, sc, stops, None, settings, outcome):
                    yield sse(
                        {
                            "id": cid,
                            "object": "text_completion",
                            "created": created,
                            "model": entry.name,
                            "choices": [choice(v, None)],
                        }
                    )
                if outcome.error:
                    yield sse(outcome.error.body())
                else:
                    yield sse(
                        {
                            "id": cid,
                            "object": "text_completion",
                            "created": created,
                            "model": entry.name,
                            "choices": [choice("", outcome.finish_reason)],
                            "usage": usage(len(prompt), outcome),
                        }
                    )
                yield sse("[DONE]")
            finally:
                slot.release()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/")
    async def index():
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    app.state.registry, app.state.settings = registry, settings
    return app


# ---- command line ----------------------------------------------------------------------------------
def _name_dir(spec: str, flag: str) -> tuple[str, str]:
    """'NAME=DIR' -> (NAME, DIR); a bare 'DIR' is named after its folder."""
    if "=" in spec and not Path(spec).exists():
        name, d = spec.split("=", 1)
    else:
        d = spec
        name = Path(spec.rstrip("/")).name or "model"
        if name in ("sft", "pretrain", "dpo", "final"):  # runs/NAME/sft -> NAME-sft reads better
            name = f"{Path(spec.rstrip('/')).parent.name}-{name}"
    if not name or not d:
        raise SystemExit(f"{flag} expects NAME=DIR or DIR, got {spec!r}")
    return name, d


def serve_threads(asked: int | None, device: str) -> int:
    """torch's CPU threads for the server: as asked, else all cores but one when the model runs on the CPU.
    The spare core is for the HTTP side (parsing, detokenising, streaming): on a 2-core machine a server
    decoding with 1 thread streamed 1.16-1.42x the tokens/s of one with 2 to 16 clients, and 1.00-1.45x to
    one (docs/BENCHMARKS.md)."""
    if asked:
        return asked
    on_cpu = select_device(device).type == "cpu"  # the device the models will be loaded on
    return max(1, torch.get_num_threads() - 1) if on_cpu else torch.get_num_threads()


def cmd_serve(a: argparse.Namespace) -> None:
    """Run the server for `sprout serve` (its flags are in sprout/cli.py)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(serve_threads(a.threads, a.device))
    log.info("torch threads: %d (--threads to change)", torch.get_num_threads())
    settings = ServeSettings(
        api_key=a.api_key,
        max_prompt_tokens=a.max_prompt_tokens,
        max_tokens_cap=a.max_tokens_cap,
        default_max_tokens=a.default_max_tokens,
        max_concurrent=a.max_concurrent,
        max_batch=a.max_batch,
        request_timeout=a.timeout,
        max_body_bytes=a.max_body_bytes,
    )
    registry = ModelRegistry(settings)
    for spec in a.model:
        name, d = _name_dir(spec, "--model")
        registry.add_model_dir(name, d, a.device)
        log.info("serving %s from %s", name, d)
    for spec in a.lora:
        base = None
        if "@" in spec:
            spec, base = spec.rsplit("@", 1)
        name, d = _name_dir(spec, "--lora")
        registry.add_lora(name, d, base, a.device)
        log.info("serving adapter %s from %s", name, d)
    if a.host not in ("127.0.0.1", "localhost", "::1") and not a.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach it can use it", a.host)
    app = create_app(registry, settings)
    print(f"sprout serve: http://{a.host}:{a.port}/  (models: {', '.join(registry.entries)})", flush=True)
    # Past max_concurrent generations the app answers 429; past this many open connections uvicorn
    # itself answers 503, so a flood of idle or slow clients cannot exhaust the process.
    uvicorn.run(
        app,
        host=a.host,
        port=a.port,
        log_level="info",
        limit_concurrency=connection_limit(settings),
        timeout_keep_alive=5,
    )


def connection_limit(settings: ServeSettings) -> int:
    """Connections uvicorn accepts at once: every generation slot plus room for health checks and 429s."""
    return 2 * settings.max_concurrent + 16

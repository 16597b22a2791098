"""`sprout bench serve`: aggregate streaming tokens/s of 1 and N concurrent clients against `sprout serve`,
next to the same work decoded in-process (no HTTP), so the cost of serving itself is visible.

The server runs in a child process on a free loopback port (or is any URL given): in this process the clients'
own JSON parsing would otherwise compete with the engine for the interpreter lock and blame the server for it.
Every request streams `/v1/completions` with the same token-id prompt, greedy (temperature 0); it ends at
`max_tokens` or at the model's stop token, and its tokens are counted from `usage`. The in-process side decodes
the same prompts with `generate` (1 row; then N rows at once), so both sides produce the same tokens.
Phases are interleaved: in-process 1, server 1, in-process N, server N, repeated `rounds` times; medians.
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from ..models.config import ModelConfig
from .common import machine, print_json_last


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _one_request(client, prompt: list[int], max_tokens: int) -> tuple[int, str | None]:
    import httpx

    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    tokens = 0
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return 0, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return tokens, chunk["error"]["message"]
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        return tokens, repr(exc)
    return tokens, None


async def _server_phase(base: str, prompts: list[list[int]], requests: int, max_tokens: int) -> dict:
    """len(prompts) concurrent clients, each sending `requests` requests one after another."""
    import httpx

    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as c:

        async def client(p: list[int]):
            return [await _one_request(c, p, max_tokens) for _ in range(requests)]

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(client(p) for p in prompts)) for r in rs]
        wall = time.perf_counter() - t0
    errors = [e for _, e in results if e]
    tokens = sum(t for t, _ in results)
    return {
        "tokens": tokens,
        "wall": wall,
        "tokens_per_s": tokens / wall,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def _inproc_phase(model, prompts: list[list[int]], requests: int, max_tokens: int, stop_ids: list[int]) -> dict:
    from ..infer.generate import SamplingConfig, generate

    sc = SamplingConfig(max_new_tokens=max_tokens, temperature=0.0, stop_token_ids=stop_ids)
    t0 = time.perf_counter()
    tokens = sum(len(o) for _ in range(requests) for o in generate(model, prompts, sc, include_stop=True))
    wall = time.perf_counter() - t0
    return {"tokens": tokens, "wall": wall, "tokens_per_s": tokens / wall}


def _fresh_folder(preset: str) -> str:
    """A random model of `preset` with sprout's tokenizer, saved so the server can load it."""
    import torch

    from ..models import build_model, model_preset
    from ..models.hub import save_model
    from ..tokenizer import Tokenizer, default_tokenizer_dir

    folder = tempfile.mkdtemp(prefix="sprout-bench-serve-")
    torch.manual_seed(0)
    save_model(build_model(model_preset(preset)), folder)
    Tokenizer.load(default_tokenizer_dir()).save(folder)
    return folder


def _start_server(folder: str, clients: int, threads: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "sprout.cli",
        "serve",
        "--model",
        folder,
        "--port",
        str(port),
        "--device",
        "cpu",
        "--max-concurrent",
        str(max(64, clients * 2)),
        "--max-batch",
        str(max(32, clients)),
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert server.stderr is not None  # stderr=PIPE
    for _ in range(1200):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return server, base
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit("the server exited before it was ready:\n" + server.stderr.read()[-2000:])
        time.sleep(0.1)
    server.terminate()
    raise SystemExit("the server did not answer /health within 120 s")


def bench_serve(
    model_dir: str | None,
    preset: str,
    url: str | None,
    clients: int,
    requests: int,
    max_tokens: int,
    prompt_len: int,
    rounds: int,
    threads: int,
) -> dict:
    import torch

    from ..models.hub import load_model
    from ..tokenizer import Tokenizer
    from .infer import make_prompts

    if threads:
        torch.set_num_threads(threads)
    folder = model_dir or _fresh_folder(preset)
    model = load_model(folder).eval()
    tok = Tokenizer.load(folder)
    stop_ids = [tok.eos_id, tok.pad_id]  # what the server stops on
    vocab = cast(ModelConfig, model.config).vocab_size  # the server refuses ids outside the model's vocabulary
    prompts = make_prompts("synthetic", clients, prompt_len, vocab, None)
    server = None
    if url is None:
        server, url = _start_server(folder, clients, threads)
    phases: dict[str, list[dict]] = {"inproc_1": [], "server_1": [], f"inproc_{clients}": [], f"server_{clients}": []}
    try:
        asyncio.run(_server_phase(url, prompts[:1], 1, 8))  # warm-up
        _inproc_phase(model, prompts[:1], 1, 8, stop_ids)
        for _ in range(rounds):
            phases["inproc_1"].append(_inproc_phase(model, prompts[:1], requests, max_tokens, stop_ids))
            phases["server_1"].append(asyncio.run(_server_phase(url, prompts[:1], requests, max_tokens)))
            phases[f"inproc_{clients}"].append(_inproc_phase(model, prompts, requests, max_tokens, stop_ids))
            phases[f"server_{clients}"].append(asyncio.run(_server_phase(url, prompts, requests, max_tokens)))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in phases.items()}
    errors = sum(r.get("errors", 0) for v in phases.values() for r in v)
    first = next((r["first_error"] for v in phases.values() for r in v if r.get("first_error")), None)
    ratios = {
        f"server_{clients}_vs_1": med[f"server_{clients}"] / med["server_1"],
        "server_1_vs_inproc_1": med["server_1"] / med["inproc_1"],
        f"server_{clients}_vs_inproc_{clients}": med[f"server_{clients}"] / med[f"inproc_{clients}"],
    }
    return {
        "bench": "serve",
        "model": model_dir,
        "preset": None if model_dir else preset,
        "url": url,
        "clients": clients,
        "requests": requests,
        "max_tokens": max_tokens,
        "prompt_len": prompt_len,
        "tokens_per_s": med,
        "ratios": ratios,
        "errors": errors,
        "first_error": first,
        "phases": phases,
        "machine": machine(),
    }


def print_serve(res: dict) -> None:
    m = res["machine"]
    print(f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, load average {m.get('load_avg_1m')}")
    print(
        f"model: {res['model'] or 'fresh ' + res['preset']}, {res['requests']} request(s) per client, "
        f"max_tokens {res['max_tokens']}, prompt {res['prompt_len']} tokens, greedy"
    )
    print("| side | clients | aggregate tok/s (median) |")
    print("|---|---:|---:|")
    for k, v in res["tokens_per_s"].items():
        side, n = k.split("_")
        print(f"| {'in-process generate' if side == 'inproc' else 'server, streaming'} | {n} | {v:,.1f} |")
    for k, v in res["ratios"].items():
        print(f"{k}: {v:.2f}x")
    if res["errors"]:
        print(f"{res['errors']} request(s) failed; first: {res['first_error']}")
    print_json_last(res)


def check_model_dir(path: str | None) -> None:
    if path and not (Path(path) / "config.json").is_file():
        raise SystemExit(f"{path}: not a model folder (no config.json); pass a folder saved by sprout")

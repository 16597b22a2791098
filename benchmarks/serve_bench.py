"""Serving throughput: 1 streaming client, then N concurrent streaming clients, against `sprout serve`.

    python benchmarks/serve_bench.py --model runs/sr1/sft [--clients 16] [--requests 2] [--max-tokens 128]

Starts the server as a subprocess on a free loopback port, waits for /health, runs the two phases
(sampling at temperature 0.8 with a fixed seed per request; a request ends at max_tokens or at the
model's stop token), and prints a markdown table of generated tokens/s (from `usage`) and errors.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_request(client: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[int, float, str | None]:
    body = {"messages": [{"role": "user", "content": f"Question {i}: what does car insurance cover?"}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": i, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens, first = 0, None
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return 0, 0.0, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return tokens, 0.0, chunk["error"]["message"]
                if first is None and chunk.get("choices"):
                    first = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except httpx.HTTPError as exc:
        return tokens, 0.0, repr(exc)
    return tokens, first or 0.0, None


async def phase(base: str, clients: int, requests: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as c:
        async def worker(w: int):
            return [await one_request(c, w * 1000 + k, max_tokens) for k in range(requests)]

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(w) for w in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
    tokens = sum(r[0] for r in results)
    errors = [r[2] for r in results if r[2]]
    ttft = sorted(r[1] for r in results if not r[2])
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall": wall, "tps": tokens / wall,
            "errors": len(errors), "first_error": errors[0] if errors else "",
            "ttft_p50": ttft[len(ttft) // 2] if ttft else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2, help="requests per client in each phase")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the server (0 = default)")
    a = ap.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "sprout.cli", "serve", "--model", a.model, "--port", str(port),
           "--max-concurrent", str(max(64, a.clients * 2)), "--max-batch", str(max(32, a.clients))]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                sys.exit("server exited:\n" + server.stderr.read())
            time.sleep(0.1)
        asyncio.run(phase(base, 1, 1, 8))  # warm-up
        single = asyncio.run(phase(base, 1, a.requests, a.max_tokens))
        multi = asyncio.run(phase(base, a.clients, a.requests, a.max_tokens))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"\nmodel: {a.model}  max_tokens: {a.max_tokens}  machine: {platform.machine()} {platform.processor() or ''}"
          f" ({os.cpu_count()} CPUs), python {platform.python_version()}\n")
    print("| clients | requests | generated tokens | wall s | aggregate tok/s | median TTFT s | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in (single, multi):
        print(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall']:.1f} | {r['tps']:.1f} | "
              f"{r['ttft_p50']:.2f} | {r['errors']} |")
    print(f"\nspeed-up {multi['clients']} clients vs 1: {multi['tps'] / single['tps']:.1f}x")
    if single["first_error"] or multi["first_error"]:
        print("first error:", single["first_error"] or multi["first_error"])


if __name__ == "__main__":
    main()

"""Decoding step options side by side: greedy tokens/s of one model, eager against compiled, one run per variant
per round, all in one process.

    python benchmarks/decode_options.py (PRESET | MODEL_DIR) BATCH NEW_TOKENS ROUNDS [THREADS]

Variants: eager; `torch.compile` of the step with inductor's Python wrapper; the same with its C++ wrapper (the
CPU default of `compile_step`, sprout/infer/generate.py). Each variant has its own copy of the weights (so its own
compiled step); round 0 warms up and compiles and is not timed. The loop is generate_stream's without sampling
options: prefill with a cache, then argmax and one `decode_step_fn` call per token. The last lines are the
medians and whether every variant produced the same tokens; interleaving keeps the ratios fair on a busy machine.
"""

import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from sprout.infer.generate import decode_step_fn
from sprout.models import build_model, load_model, model_preset

source, B, new_tokens, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]) if len(sys.argv) > 5 else torch.get_num_threads())
torch.manual_seed(0)
base = load_model(source) if Path(source).is_dir() else build_model(model_preset(source))
base = base.float().eval()
variants = {"eager": (False, False), "compile": (True, False), "compile + cpp_wrapper": (True, True)}
models = {name: copy.deepcopy(base) for name in variants}
prompt = torch.randint(0, base.config.vocab_size, (B, 32))


@torch.no_grad()
def decode(name: str) -> tuple[float, list[list[int]]]:
    model, (compiled, cpp) = models[name], variants[name]
    t0 = time.perf_counter()
    cache = model.new_cache(B, prompt.shape[1] + new_tokens)
    logits = model(prompt, cache=cache, last_only=True).logits[:, -1].float()
    step = decode_step_fn(model, compiled, cpp_wrapper=cpp)
    pos = torch.full((B,), prompt.shape[1])
    out = []
    for _ in range(new_tokens):
        tok = logits.argmax(-1)
        out.append(tok.tolist())
        logits = step(tok, pos, None, cache)
        pos += 1
    return time.perf_counter() - t0, out


speeds: dict[str, list[float]] = {name: [] for name in variants}
tokens: dict[str, list[list[int]]] = {}
for r in range(rounds + 1):
    for name in variants:
        dt, tokens[name] = decode(name)
        if r == 0:
            print(json.dumps({"variant": name, "warm_up_s": round(dt, 1)}), flush=True)
        else:
            speeds[name].append(B * new_tokens / dt)
            print(json.dumps({"variant": name, "round": r, "tokens_per_s": round(B * new_tokens / dt, 1)}), flush=True)
eager = statistics.median(speeds["eager"])
for name, v in speeds.items():
    med = statistics.median(v)
    print(f"{name:24s} batch {B}: {med:9.1f} tok/s  {med / eager:.2f}x eager")
print("same tokens in every variant:", all(t == tokens["eager"] for t in tokens.values()))

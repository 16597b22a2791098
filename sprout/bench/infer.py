"""`sprout bench infer`: decoding tokens/s at each batch size, greedy, a fixed number of new tokens.

Both sides of every comparison run in the same process, interleaved round by round (sprout, then
transformers' `generate` on the same saved folder, then sprout again...), so a machine shared with other jobs
slows both alike; the reported number is each side's median round. Stop tokens are off: every row produces
exactly `new_tokens` tokens, so tokens/s = batch × new_tokens ÷ wall time (prefill included, it is small).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import torch

from ..errors import UserError
from .common import (
    corpus_texts,
    decode_flops_per_token,
    fmt_rate,
    machine,
    peak_memory_bytes,
    peaks,
    print_json_last,
    weight_bytes,
)


def inference_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """auto: what `sprout serve` decodes in (bf16 weights on a GPU that has it, fp32 elsewhere); or fp32, bf16.
    bf16 weights halve the bytes a step reads, and on a CPU with native bf16 dot products (AVX512-BF16, AMX)
    its matmuls run ~3x faster than fp32 ones."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if name not in ("fp32", "bf16"):
        raise SystemExit(f"--dtype must be auto, fp32 or bf16; got {name!r}")
    return torch.bfloat16 if name == "bf16" else torch.float32


def load_or_build(model: str | None, preset: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A model folder, or a fresh (random) model of `preset`: decoding speed does not depend on the weights."""
    from ..models import build_model, model_preset
    from ..models.hub import load_model

    if model:
        return load_model(model, device=device, dtype=dtype).eval()
    torch.manual_seed(seed)
    return build_model(model_preset(preset)).to(device=device, dtype=dtype).eval()


def make_prompts(
    kind: str, n: int, length: int, vocab: int, model_dir: str | None, seed: int = 0, skip_invalid: bool = False
) -> list[list[int]]:
    """n prompts of about `length` tokens: random ids ("synthetic"), the built-in corpus ("builtin") or a
    .jsonl file of {"text": ...} records, tokenised with the model folder's tokenizer (else sprout's own)."""
    if kind == "synthetic":
        g = torch.Generator().manual_seed(seed)
        return torch.randint(10, vocab, (n, length), generator=g).tolist()
    from ..tokenizer import Tokenizer, default_tokenizer_dir

    tok = Tokenizer.load(model_dir or default_tokenizer_dir())
    out = []
    for text in corpus_texts(kind, skip_invalid):
        ids = tok.encode(text)[:length]
        if len(ids) >= max(1, length // 2):
            out.append(ids)
        if len(out) == n:
            return out
    raise UserError(
        f"found only {len(out)} texts of at least {length // 2} tokens; need {n}",
        file=kind,
        advice="give more or longer texts, a smaller --prompt-len or fewer --batch-sizes",
    )


def _sprout_run(model, prompts: list[list[int]], new_tokens: int, compile_step: bool) -> float:
    from ..infer.generate import SamplingConfig, generate

    sc = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=[])
    t0 = time.perf_counter()
    out = generate(model, prompts, sc, compile_step=compile_step)
    dt = time.perf_counter() - t0
    assert all(len(o) == new_tokens for o in out)
    return dt


def _hf_run(hf_model, prompts: list[list[int]], new_tokens: int, pad: int) -> float:
    longest = max(len(p) for p in prompts)
    device = next(hf_model.parameters()).device
    ids = torch.full((len(prompts), longest), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p) :] = torch.tensor(p)
        mask[i, longest - len(p) :] = 1
    t0 = time.perf_counter()
    out = hf_model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad,
        eos_token_id=None,
    )
    dt = time.perf_counter() - t0
    assert out.shape[1] == longest + new_tokens
    return dt


def bench_infer(
    preset: str,
    model_dir: str | None,
    batch_sizes: list[int],
    new_tokens: int,
    prompt_len: int,
    prompts_kind: str,
    rounds: int,
    compare_hf: bool,
    compile_step: bool,
    device: str = "cpu",
    dtype_name: str = "auto",
    skip_invalid: bool = False,
) -> dict:
    from ..train.device import select_device

    dev = select_device(device)
    dtype = inference_dtype(dev, dtype_name)
    model = load_or_build(model_dir, preset, dev, dtype)
    hf = None
    if compare_hf:
        from transformers import AutoModelForCausalLM

        from ..models.hub import save_model

        folder = model_dir
        if folder is None:  # a fresh preset: save it so transformers loads exactly these weights
            folder = tempfile.mkdtemp(prefix="sprout-bench-")
            save_model(model.float(), folder)
            model.to(dtype)
        loaded: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        hf = loaded.to(dev).eval()
    pk = peaks(dev)
    wbytes = weight_bytes(model)
    rows = []
    for bs in batch_sizes:
        prompts = make_prompts(
            prompts_kind, bs, prompt_len, model.config.vocab_size, model_dir, skip_invalid=skip_invalid
        )
        _sprout_run(model, prompts, 4, compile_step)  # warm-up (and compilation when asked)
        if hf is not None:
            with torch.inference_mode():
                _hf_run(hf, prompts, 4, model.config.pad_token_id)
        times: dict[str, list[float]] = {"sprout": [], "transformers": []}
        for _ in range(rounds):
            times["sprout"].append(_sprout_run(model, prompts, new_tokens, compile_step))
            if hf is not None:
                with torch.inference_mode():
                    times["transformers"].append(_hf_run(hf, prompts, new_tokens, model.config.pad_token_id))
        context = statistics.mean(len(p) for p in prompts) + new_tokens / 2
        for engine, ts in times.items():
            if not ts:
                continue
            dt = statistics.median(ts)
            tps = bs * new_tokens / dt
            flops = tps * decode_flops_per_token(model, context)
            # At batch b one step reads the weights once for b tokens: the ceiling is b × bandwidth / bytes.
            ceiling = bs * pk["peak_bandwidth_Bps"] / wbytes
            rows.append(
                {
                    "engine": engine,
                    "batch": bs,
                    "tokens_per_s": tps,
                    "seconds": dt,
                    "model_flops_per_s": flops,
                    "bandwidth_ceiling_tokens_per_s": ceiling,
                    "ceiling_fraction": tps / ceiling,
                    "rounds": ts,
                }
            )
    return {
        "bench": "infer",
        "preset": None if model_dir else preset,
        "model": model_dir,
        "device": str(dev),
        "dtype": str(dtype).removeprefix("torch."),
        "new_tokens": new_tokens,
        "prompt_len": prompt_len,
        "prompts": prompts_kind,
        "compile": compile_step,
        "weight_bytes": wbytes,
        "peaks": pk,
        "machine": machine(),
        "rows": rows,
        "ratios": _ratios(rows),
        "peak_memory_bytes": peak_memory_bytes(dev),
    }


def _ratios(rows: list[dict]) -> dict:
    by = {(r["engine"], r["batch"]): r["tokens_per_s"] for r in rows}
    out = {}
    for (engine, bs), tps in by.items():
        if engine == "sprout" and ("transformers", bs) in by:
            out[f"sprout_vs_transformers_b{bs}"] = tps / by[("transformers", bs)]
        if bs != 1 and (engine, 1) in by:
            out[f"{engine}_b{bs}_vs_b1"] = tps / by[(engine, 1)]
    return out


def print_infer(res: dict) -> None:
    m, pk = res["machine"], res["peaks"]
    print(f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, load average {m.get('load_avg_1m')}")
    print(
        f"peaks ({pk['peak_source']}): fp32 matmul {fmt_rate(pk['peak_fp32_flops'])}FLOP/s, bf16 matmul "
        f"{fmt_rate(pk['peak_bf16_flops'])}FLOP/s, bandwidth {fmt_rate(pk['peak_bandwidth_Bps'])}B/s; "
        f"weights read per step {res['weight_bytes'] / 1e6:.1f} MB"
    )
    print("| engine | batch | tokens/s | model FLOP/s | bandwidth ceiling tok/s | fraction of ceiling |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in res["rows"]:
        print(
            f"| {r['engine']} | {r['batch']} | {r['tokens_per_s']:,.1f} | {fmt_rate(r['model_flops_per_s'])} "
            f"| {r['bandwidth_ceiling_tokens_per_s']:,.1f} | {r['ceiling_fraction']:.0%} |"
        )
    for k, v in res["ratios"].items():
        print(f"{k}: {v:.2f}x")
    print_json_last(res)

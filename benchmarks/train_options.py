"""Training options side by side: step time of fresh models of one preset, one step per variant per round.

    python benchmarks/train_options.py PRESET SEQ_LEN BATCH ROUNDS '[{"ce_chunk":0},{"ce_chunk":1024,"dtype":"fp32"}]'

Variant keys: ce_chunk, dtype (bf16 | fp32), grad_checkpoint, compile. Round 0 warms up and is not timed; each
timed step prints a JSON line, and the last lines are the medians. Interleaving makes the ratios fair on a
shared machine (every variant sees the same background load), not the absolute numbers.
"""

import json
import statistics
import sys
import time

import torch

from sprout.config import TrainConfig
from sprout.models import build_model, model_preset
from sprout.train.objectives.lm import PretrainObjective
from sprout.train.optim import build_optimizer

preset, T, B, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
variants = json.loads(sys.argv[5])
torch.manual_seed(0)
setups = []
for v in variants:
    torch.manual_seed(0)
    cfg = model_preset(preset)
    m = build_model(cfg).train()
    if v.get("grad_checkpoint"):
        m.gradient_checkpointing = True
    if v.get("compile"):  # the forward only, as the engine compiles it
        m.forward = torch.compile(m.forward)
    opt = build_optimizer(m, 1e-4, 0.1, (0.9, 0.95), torch.device("cpu"), m.named_parameters())
    obj = PretrainObjective(TrainConfig(ce_chunk=v.get("ce_chunk", 0)))
    setups.append((v, m, opt, obj))
x = torch.randint(0, cfg.vocab_size, (B, T + 1))
batch = {"input_ids": x[:, :-1], "labels": x[:, 1:]}
dt = torch.bfloat16
times = {i: [] for i in range(len(setups))}
for r in range(rounds + 1):
    for i, (v, m, opt, obj) in enumerate(setups):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dt, enabled=v.get("dtype", "bf16") == "bf16"):
            loss, _ = obj.loss(m, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if r:
            times[i].append(time.perf_counter() - t0)
            print(json.dumps({"round": r, **v, "step_s": round(times[i][-1], 3)}), flush=True)
for i, (v, *_) in enumerate(setups):
    med = statistics.median(times[i])
    print(json.dumps({**v, "step_s": round(med, 3), "tok_s": round(B * T / med)}), flush=True)

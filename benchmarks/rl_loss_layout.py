"""GRPO's loss passes in both layouts, side by side on the same rollouts: one row per reply (`pack`) against
each prompt once per group (`pack_shared`).

    python benchmarks/rl_loss_layout.py MODEL [STEPS]      # MODEL: a chat/tools model folder, e.g. runs/post/tools

Each step samples one GRPO batch of the `grpo` recipe (8 calculator prompts x 8 replies, the tool executed),
then times the policy forward, the reference forward and the backward in each layout twice, interleaved
(pack, shared, pack, shared) so both see the same load. Prints one JSON line per step and the medians last.
"""

import json
import statistics
import sys
import time

import torch

from sprout.config import build_train_config
from sprout.rl.rollout import pack, pack_shared, token_logps
from sprout.train.objectives import build_objective
from sprout.train.objectives.grpo import GRPOObjective

model_dir, steps = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3
cfg = build_train_config("grpo", "grpo", {"model": model_dir, "out": "/tmp/rl_loss_layout"}, [])
obj = build_objective(cfg)
assert isinstance(obj, GRPOObjective)
tok = obj.load_tokenizer()
policy = obj.build_lm(tok)
obj.setup(policy, torch.device("cpu"))
train, _ = obj.datasets(tok)
torch.manual_seed(0)
times: dict[str, list[float]] = {"pack": [], "shared": []}
for step in range(steps):
    rows = [train[i] for i in range(step * cfg.batch_size, (step + 1) * cfg.batch_size)]
    t0 = time.perf_counter()
    _, trajs, rewards, _ = obj.scored_rollouts(
        [obj.items[r["idx"]] for r in rows], [r["prompt"] for r in rows], obj.group
    )
    rollout = time.perf_counter() - t0
    b = pack(trajs, tok.pad_id)
    ids, mask = b["input_ids"], b["loss_mask"]
    layouts = {"pack": None, "shared": pack_shared(trajs, tok.pad_id)}
    line: dict = {"step": step, "rows": ids.shape[0], "row_tokens": ids.shape[1], "rollout_s": round(rollout, 2)}
    for name in ("pack", "shared", "pack", "shared"):
        t0 = time.perf_counter()
        logps = token_logps(policy, ids, obj.sampling.temperature, mask, layouts[name])
        obj.ref_logps(ids, mask, layouts[name])
        (logps * mask).sum().backward()
        times[name].append(time.perf_counter() - t0)
        line[f"{name}_s"] = round(times[name][-1], 2)
    policy.zero_grad(set_to_none=True)
    print(json.dumps(line), flush=True)
med = {k: statistics.median(v) for k, v in times.items()}
print(
    json.dumps(
        {
            "median_pack_s": round(med["pack"], 2),
            "median_shared_s": round(med["shared"], 2),
            "ratio": round(med["pack"] / med["shared"], 2),
            "threads": torch.get_num_threads(),
        }
    )
)

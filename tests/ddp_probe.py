"""Run under torchrun by tests/test_engine_ddp.py and tests/test_distributed.py: the synthetic engine task on
2 gloo ranks (or directly with python, as one process).

Each rank appends the checksum of its weights after every optimizer step to OUT/rank{RANK}.jsonl,
so the test can check that the ranks took the same steps and kept identical weights.
argv: OUT, a JSON dict of TrainConfig fields; its key "stop_at" interrupts the run like Ctrl-C after that step,
"nan_at" makes this process's training loss non-finite at that call (1 = the first micro-batch).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import ctrl_c_at  # noqa: E402
from test_engine import SyntheticObjective, make_cfg  # noqa: E402

from sprout.train import register, train  # noqa: E402
from sprout.train.sharding import full_tensor  # noqa: E402


@register
class ProbeObjective(SyntheticObjective):
    name = "ddp-probe-test"
    nan_at: int | None = None
    training_calls = 0

    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        if model.training:  # evaluation calls do not count (under FSDP / ZeRO-3 every rank evaluates)
            self.training_calls += 1
            if self.training_calls == self.nan_at:
                loss = loss * float("nan")
        return loss, metrics

    def on_optimizer_step(self, model) -> None:
        total = sum(float(full_tensor(p.detach()).double().abs().sum()) for p in model.parameters())
        with open(Path(self.cfg.out) / f"rank{os.environ.get('RANK', '0')}.jsonl", "a") as f:
            f.write(json.dumps({"checksum": total}) + "\n")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    options = json.loads(sys.argv[2])
    stop_at = options.pop("stop_at", None)
    ProbeObjective.nan_at = options.pop("nan_at", None)
    options = {"eval_every": 3, "save_every": 3, **options}
    train(make_cfg(out, stage="ddp-probe-test", **options), on_step=ctrl_c_at(stop_at) if stop_at else None)

"""PNG loss curves from a run's metrics.jsonl (matplotlib, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: render to files only
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) from RUN_DIR/metrics.jsonl."""
    train: list[dict] = []
    val: list[dict] = []
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a run still writing its last line
                continue
            (val if row.get("split") == "val" else train).append(row)
    return train, val


def plot_loss_curves(runs: dict[str, str | Path], out_png: str | Path, title: str = "loss") -> Path:
    """One panel per run: training loss (and its moving average) against tokens, validation loss as dots."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
    for ax, (name, run_dir) in zip(axes[0], runs.items()):
        train, val = read_metrics(run_dir)
        if train:
            x = [r["tokens"] / 1e6 for r in train]
            y = [r["loss"] for r in train]
            ax.plot(x, y, color="#9ecae1", lw=1, label="train")
            k = max(1, len(y) // 20)
            smooth = [sum(y[max(0, i - k) : i + 1]) / len(y[max(0, i - k) : i + 1]) for i in range(len(y))]
            ax.plot(x, smooth, color="#08519c", lw=2, label="train (moving avg)")
        if val:
            ax.plot(
                [r["tokens"] / 1e6 for r in val],
                [r["val_loss"] for r in val],
                "o-",
                color="#e6550d",
                label="validation",
            )
        ax.set_title(name)
        ax.set_xlabel("training tokens (millions)")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png

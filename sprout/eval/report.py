"""`sprout report RUN_DIR`: one self-contained HTML page (and a markdown twin) for a run.

RUN_DIR is a stage folder (it holds metrics.jsonl) or a speedrun folder (stage subfolders).
Each stage folder's objective.json (written by the engine from the stage's Objective) says what its loss
is, what a healthy run looks like and which metrics matter, so no stage list lives here.
The page shows, per stage: training and validation loss with the reference curve of the
built-in recipe dashed beside it, learning rate, gradient norm, tokens/s, then every other
numeric metric the objective logged (MoE expert load, DPO rewards and margins, RL reward
components, ...) grouped by name; a few automatic health notes; the config; a data summary
(from tokenized/*/meta.json); and the evaluation (eval.json) with its samples.

PNGs are written to RUN_DIR/report_files/ (used by report.md) and embedded as base64 in
report.html, which needs no network, JavaScript or external CSS. See docs/report.md.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Container
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: render to files only
import matplotlib.pyplot as plt  # noqa: E402

from .plots import read_metrics  # noqa: E402

REFERENCE_DIR = Path(__file__).parent / "reference"
# Plotted in the main panels, or bookkeeping: never in the "other metrics" figure.
CORE_KEYS = {
    "step",
    "tokens",
    "loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "elapsed_s",
    "epoch",
    "split",
    "val_loss",
    "val_ppl",
}
MAX_PANELS = 12

TRAIN_C, SMOOTH_C, VAL_C, REF_C = "#9ecae1", "#08519c", "#e6550d", "#555555"


# ---- reading a run ------------------------------------------------------------------------------


def find_stages(run_dir: str | Path) -> dict[str, Path]:
    """{stage name: folder with metrics.jsonl}: RUN_DIR itself, or its subfolders in the order they started."""
    run_dir = Path(run_dir)
    if (run_dir / "metrics.jsonl").exists():
        return {_stage_name(run_dir): run_dir}
    subs = [d for d in sorted(run_dir.iterdir()) if d.is_dir() and (d / "metrics.jsonl").exists()]
    if not subs:
        raise SystemExit(f"{run_dir}: no metrics.jsonl here or in a subfolder; is this a training output folder?")
    return {d.name: d for d in sorted(subs, key=_started)}


def _started(folder: Path) -> float:
    """When the stage first started: objective.json's `started`, else when config.yaml was written."""
    started = read_objective(folder).get("started")
    if isinstance(started, (int, float)):
        return float(started)
    cfg = folder / "config.yaml"
    return cfg.stat().st_mtime if cfg.exists() else math.inf


def read_objective(folder: Path) -> dict:
    """The stage's self-description (see Objective.describe); folders from before objective.json existed get a
    generic one, treated as a language-model loss when the run logged `ce`."""
    path = folder / "objective.json"
    if path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            pass
    cfg = read_config(folder)
    train, _ = read_metrics(folder) if (folder / "metrics.jsonl").exists() else ([], [])
    return {
        "stage": str(cfg.get("stage") or folder.name),
        "loss_label": "loss",
        "healthy": "",
        "plot_metrics": [],
        "lm_loss": any("ce" in r for r in train[:5]),
    }


def _stage_name(folder: Path) -> str:
    cfg = read_config(folder)
    return str(cfg.get("stage") or folder.name) if cfg else folder.name


def read_config(folder: Path) -> dict:
    path = folder / "config.yaml"
    if not path.exists():
        return {}
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}


def read_data_meta(folder: Path) -> list[dict]:
    metas = []
    for p in sorted(folder.glob("tokenized/*/meta.json")):
        try:
            metas.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return metas


def find_eval(run_dir: Path, stages: dict[str, Path]) -> list[tuple[str, dict]]:
    """(label, eval.json contents) for RUN_DIR/eval.json, RUN_DIR/eval/eval.json and each stage's eval/."""
    found, seen = [], set()
    cands = [("", run_dir / "eval.json"), ("", run_dir / "eval" / "eval.json")]
    cands += [(name, d / "eval" / "eval.json") for name, d in stages.items()]
    for label, p in cands:
        if p.exists() and p.resolve() not in seen:
            seen.add(p.resolve())
            try:
                found.append((label, json.loads(p.read_text())))
            except json.JSONDecodeError:
                continue
    return found


# ---- reference curves -----------------------------------------------------------------------------


def load_reference(name: str) -> dict | None:
    path = Path(name) if name.endswith(".json") else REFERENCE_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def pick_reference(stage: str, cfg: dict, recipe: str | None) -> tuple[str, dict] | None:
    """The reference curve for this stage: the named recipe's, else a built-in one whose model
    preset and sequence length match the stage's config."""
    if recipe:
        ref = load_reference(recipe)
        if ref and stage in ref.get("stages", {}):
            return ref.get("recipe", recipe), ref["stages"][stage]
        return None
    for path in sorted(REFERENCE_DIR.glob("*.json")):
        ref = json.loads(path.read_text())
        st = ref.get("stages", {}).get(stage)
        if st and cfg.get("preset") == ref.get("preset") and cfg.get("seq_len") == st.get("seq_len"):
            return ref.get("recipe", path.stem), st
    return None


def make_reference(
    run_dir: str | Path, recipe: str, out: str | Path | None = None, points: int = 60, note: str = ""
) -> Path:
    """Write the (tokens, loss) curves of a finished run as a reference file (smoothed, ~`points` points)."""
    stages = find_stages(run_dir)
    ref: dict = {"recipe": recipe, "source": note or str(run_dir), "stages": {}}
    for name, folder in stages.items():
        cfg = read_config(folder)
        ref.setdefault("preset", cfg.get("preset"))
        train, val = read_metrics(folder)
        x = [r["tokens"] for r in train]
        y = smooth([r["loss"] for r in train])
        step = max(1, len(x) // points)
        idx = list(range(0, len(x), step))
        if x and idx[-1] != len(x) - 1:
            idx.append(len(x) - 1)
        ref["stages"][name] = {
            "seq_len": cfg.get("seq_len"),
            "batch_size": cfg.get("batch_size"),
            "lr": cfg.get("lr"),
            "minutes": cfg.get("max_minutes"),
            "train": [[int(x[i]), round(y[i], 4)] for i in idx],
            "val": [[int(r["tokens"]), round(r["val_loss"], 4)] for r in val if "val_loss" in r],
        }
    out = Path(out or REFERENCE_DIR / f"{recipe}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ref, separators=(",", ":")) + "\n")
    return out


# ---- series helpers ---------------------------------------------------------------------------------


def smooth(y: list[float], frac: float = 0.05) -> list[float]:
    """Trailing moving average over ~5% of the points (at least 1)."""
    k = max(1, int(len(y) * frac))
    out, acc = [], 0.0
    for i, v in enumerate(y):
        acc += v
        if i >= k:
            acc -= y[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _by_tokens(train: list[dict], val: list[dict]) -> bool:
    """Curves against tokens when every row has them, except for RL runs: their `tokens` count prompt tokens
    only (the replies are sampled inside the step), so a whole GRPO run is ~0.07M of them; steps read better."""
    return all("tokens" in r for r in train + val) and not any("reward" in r for r in train)


def _x(rows: list[dict], use_tokens: bool) -> list[float]:
    return [r["tokens"] / 1e6 if use_tokens else r.get("step", i) for i, r in enumerate(rows)]


def group_keys(keys: list[str]) -> dict[str, list[str]]:
    """Group metric names into panels: `rewards/chosen` + `rewards/margin` -> `rewards`;
    `reward_format` + `reward_len` -> `reward`; `moe_load_layer0..N` -> `moe_load_layer`."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        if "/" in k:
            g = k.split("/", 1)[0]
        elif k.startswith("reward"):
            g = "reward"
        else:
            g = re.sub(r"[_.]?\d+$", "", k) or k
        groups.setdefault(g, []).append(k)
    return groups


def extra_series(train: list[dict], val: list[dict], first: list[str] | tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Numeric metric names beyond the core ones, grouped; `val_X` rides with `X` (as markers). The metrics the
    objective declared (`first`) lead, so they are plotted even when there are more groups than panels."""
    keys: list[str] = []
    for r in train + val:
        for k, v in r.items():
            if k not in CORE_KEYS and _num(v) and k not in keys:
                keys.append(k)
    # `ce` equal to `loss` (no auxiliary loss) would just repeat the loss panel
    if "ce" in keys and all(abs(r.get("ce", r["loss"]) - r["loss"]) < 1e-3 for r in train if "loss" in r):
        keys.remove("ce")
    if "val_ce" in keys and "ce" not in keys:
        keys.remove("val_ce")
    base = [k for k in keys if not (k.startswith("val_") and k[4:] in keys)]
    base.sort(key=lambda k: first.index(k) if k in first else len(first))  # stable: the rest keep their order
    return group_keys(base)


# ---- plots -------------------------------------------------------------------------------------------


def plot_core(
    stage: str,
    train: list[dict],
    val: list[dict],
    ref: tuple[str, dict] | None,
    cfg: dict,
    out_png: Path,
    loss_label: str = "loss",
) -> Path:
    """2x2: loss (train, smoothed, validation, reference), learning rate, gradient norm, tokens/s."""
    use_tokens = _by_tokens(train, val)
    xlabel = "training tokens (millions)" if use_tokens else "step"
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.2))
    ax = axes[0][0]
    tx = _x(train, use_tokens)
    if train and all("loss" in r for r in train):
        y = [r["loss"] for r in train]
        ax.plot(tx, y, color=TRAIN_C, lw=1, label="train")
        ax.plot(tx, smooth(y), color=SMOOTH_C, lw=2, label="train (moving avg)")
    vrows = [r for r in val if "val_loss" in r]
    if vrows:
        ax.plot(_x(vrows, use_tokens), [r["val_loss"] for r in vrows], "o-", color=VAL_C, ms=4, label="validation")
    if ref and use_tokens:
        name, st = ref
        if st.get("train"):
            ax.plot(
                [p[0] / 1e6 for p in st["train"]],
                [p[1] for p in st["train"]],
                "--",
                color=REF_C,
                lw=1.5,
                label=f"reference train ({name} recipe)",
            )
        if st.get("val"):
            ax.plot(
                [p[0] / 1e6 for p in st["val"]],
                [p[1] for p in st["val"]],
                "s:",
                color=REF_C,
                ms=3,
                lw=1,
                label="reference validation",
            )
    ax.set_title(f"{stage}: loss")
    ax.set_ylabel(loss_label if len(loss_label) <= 48 else loss_label[:45] + "...", fontsize=8)
    _finish(ax, xlabel)
    for ax, key, title, log in (
        (axes[0][1], "lr", "learning rate", False),
        (axes[1][0], "grad_norm", "gradient norm (before clipping)", True),
        (axes[1][1], "tokens_per_s", "throughput (tokens/s)", False),
    ):
        rows = [r for r in train if _num(r.get(key))]
        if rows:
            ax.plot(_x(rows, use_tokens), [r[key] for r in rows], color=SMOOTH_C, lw=1.2)
            if key == "grad_norm" and _num(cfg.get("grad_clip")) and cfg["grad_clip"] > 0:
                ax.axhline(cfg["grad_clip"], color=VAL_C, ls="--", lw=1, label=f"clip = {cfg['grad_clip']}")
                ax.legend(fontsize=8)
            if log and min(r[key] for r in rows) > 0:
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#888")
        ax.set_title(title)
        _finish(ax, xlabel, legend=False)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def plot_extra(
    stage: str, train: list[dict], val: list[dict], groups: dict[str, list[str]], out_png: Path
) -> Path | None:
    """One panel per metric group (MoE load, DPO rewards, RL reward components, aux losses, ...)."""
    if not groups:
        return None
    use_tokens = _by_tokens(train, val)
    names = list(groups)[:MAX_PANELS]
    cols = min(3, len(names))
    rows_n = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.2 * rows_n), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, g in enumerate(names):
        ax = axes[i // cols][i % cols]
        keys = groups[g]
        many = len(keys) > 8
        for j, k in enumerate(keys):
            c = colors[j % len(colors)]
            rows = [r for r in train if _num(r.get(k))]
            if rows:
                ys = [r[k] for r in rows]
                ax.plot(
                    _x(rows, use_tokens),
                    smooth(ys) if len(ys) > 40 else ys,
                    color=c,
                    lw=0.8 if many else 1.4,
                    label=None if many else k,
                )
            vk = "val_" + k if not k.startswith("val_") else k
            vrows = [r for r in val if _num(r.get(vk))]
            if vrows:
                ax.plot(_x(vrows, use_tokens), [r[vk] for r in vrows], "o", color=c, ms=3, label=None if many else vk)
        ax.set_title(f"{g}" + (f" ({len(keys)} series)" if many else ""), fontsize=10)
        _finish(ax, "training tokens (millions)" if use_tokens else "step", legend=not many, fontsize=7)
    for i in range(len(names), rows_n * cols):
        axes[i // cols][i % cols].axis("off")
    fig.suptitle(f"{stage}: other logged metrics", fontsize=11)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def _finish(ax, xlabel: str, legend: bool = True, fontsize: int = 8) -> None:
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


# ---- health notes --------------------------------------------------------------------------------------


def health_notes(
    train: list[dict], val: list[dict], ref: tuple[str, dict] | None, lm: bool = True
) -> list[tuple[str, str]]:
    """(level, message) pairs: level is ok / warn / bad. `lm`: the loss is a language-model
    cross-entropy that must fall (not so for DPO / RL objectives)."""
    notes: list[tuple[str, str]] = []
    losses = [r["loss"] for r in train if "loss" in r]
    if any(not (isinstance(v, (int, float)) and math.isfinite(v)) for v in losses):
        notes.append(("bad", "the training loss became NaN or infinite"))
        return notes
    if len(losses) >= 10:
        sm = smooth(losses)
        spikes = sum(1 for i in range(5, len(losses)) if losses[i] > 1.3 * sm[i - 1] and losses[i] - sm[i - 1] > 0.3)
        if spikes:
            notes.append(("warn", f"{spikes} loss spike(s): logged loss more than 30% above its moving average"))
        head, tail = sum(losses[:3]) / 3, sm[-1]
        if tail >= head - 0.05 and lm:
            notes.append(("bad", f"the loss did not go down (start {head:.2f}, end {tail:.2f})"))
        else:
            notes.append(("ok", f"training loss went from {head:.2f} to {tail:.2f} (moving average)"))
    vl = [r["val_loss"] for r in val if _num(r.get("val_loss"))]
    if len(vl) >= 3 and vl[-1] > min(vl) * 1.02:
        notes.append(
            (
                "warn",
                f"validation loss rose from its minimum {min(vl):.3f} to {vl[-1]:.3f}: overfitting "
                "(more epochs than the data supports) or a learning rate too high late in training",
            )
        )
    if vl and len(losses) >= 10:
        gap = vl[-1] - smooth(losses)[-1]
        if gap > 0.5:
            notes.append(
                (
                    "warn",
                    f"validation loss is {gap:.2f} nats above the training loss: memorising the "
                    "training set, or validation data unlike the training data",
                )
            )
    if ref and train and "tokens" in train[-1]:
        name, st = ref
        pts = st.get("train") or []
        t_end = train[-1]["tokens"]
        inside = [p for p in pts if p[0] <= t_end]
        if inside:
            rt, rl = inside[-1]
            own = smooth(losses)[min(range(len(train)), key=lambda i: abs(train[i]["tokens"] - rt))]
            diff = own - rl
            level = "ok" if diff < 0.15 else ("warn" if diff < 0.5 else "bad")
            notes.append(
                (
                    level,
                    f"at {rt / 1e6:.2f}M tokens the loss is {own:.2f}, reference run ({name} recipe) "
                    f"{rl:.2f} ({diff:+.2f})",
                )
            )
    gn = [r["grad_norm"] for r in train if _num(r.get("grad_norm"))]
    if len(gn) >= 10:
        late = sorted(gn[len(gn) // 2 :])
        med = late[len(late) // 2]
        if max(late) > 10 * med:
            notes.append(("warn", f"gradient-norm spikes late in training (max {max(late):.2f}, median {med:.2f})"))
    return notes


# ---- page building ----------------------------------------------------------------------------------------

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Noto Sans CJK SC","PingFang SC","WenQuanYi Zen Hei",sans-serif;
max-width:1120px;margin:24px auto;padding:0 16px;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #08519c;padding-bottom:4px}
h2{font-size:1.3em;margin-top:1.8em;border-bottom:1px solid #ddd}
h3{font-size:1.08em;margin-top:1.3em}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:3px 9px;text-align:left}
th{background:#f0f4f8}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:8px;overflow-x:auto;font-size:.85em}
.note{padding:2px 8px;margin:3px 0;border-left:4px solid #999}
.ok{border-color:#31a354;background:#f1faf2}.warn{border-color:#fd8d3c;background:#fff6ec}
.bad{border-color:#de2d26;background:#fdeeee}
.sample{border:1px solid #ddd;border-radius:4px;padding:6px 10px;margin:8px 0}
.sample .q{font-weight:600}.sample .a{white-space:pre-wrap;margin:4px 0}.sample .m{color:#666;font-size:.85em}
.muted{color:#777;font-size:.9em}
"""


class _Page:
    """Builds the HTML and the markdown side by side."""

    def __init__(self, title: str):
        self.h = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
        ]
        self.md = [f"# {title}", ""]

    def heading(self, text: str, level: int = 2) -> None:
        self.h.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md += ["#" * level + " " + text, ""]

    def para(self, text: str, cls: str = "") -> None:
        self.h.append(f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>")
        self.md += [text, ""]

    def table(self, header: list[str], rows: list[list], num_cols: Container[int] = frozenset()) -> None:
        h = ["<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr>"]
        for r in rows:
            h.append(
                "<tr>"
                + "".join(
                    f'<td class="num">{html.escape(str(c))}</td>'
                    if i in num_cols
                    else f"<td>{html.escape(str(c))}</td>"
                    for i, c in enumerate(r)
                )
                + "</tr>"
            )
        h.append("</table>")
        self.h.append("".join(h))
        self.md += ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
        self.md += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |" for r in rows]
        self.md.append("")

    def image(self, png: Path, rel: str, alt: str) -> None:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        self.h.append(f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>')
        self.md += [f"![{alt}]({rel})", ""]

    def notes(self, notes: list[tuple[str, str]]) -> None:
        for level, msg in notes:
            self.h.append(f'<div class="note {level}">{html.escape(msg)}</div>')
        self.md += [f"- **{level}**: {msg}" for level, msg in notes] + [""]

    def pre(self, text: str, summary: str) -> None:
        self.h.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>")
        self.md += [f"<details><summary>{summary}</summary>", "", "```yaml", text.rstrip(), "```", "", "</details>", ""]

    def samples(self, samples: list[dict]) -> None:
        for s in samples:
            meta = (
                f"answer language {s.get('answer_lang')} · repeated 4-gram rate {s.get('repeated_4gram_rate')} · "
                f"{s.get('tokens')} tokens" + ("" if s.get("finished", True) else " · cut at the limit")
            )
            self.h.append(
                f'<div class="sample"><div class="q">[{html.escape(str(s.get("lang")))}] '
                f'{html.escape(s["question"])}</div><div class="a">{html.escape(s["answer"])}</div>'
                f'<div class="m">{html.escape(meta)}</div></div>'
            )
            self.md += [
                f"**[{s.get('lang')}] {s['question']}**",
                "",
                "> " + s["answer"].replace("\n", "\n> "),
                "",
                f"({meta})",
                "",
            ]

    def html(self) -> str:
        return "\n".join(self.h + ['<p class="muted">written by <code>sprout report</code></p></body></html>'])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _stage_summary(train: list[dict], val: list[dict], lm_loss: bool = True) -> list:
    """One summary row; perplexity only for a language-modelling loss (exp of a DPO or reward loss means nothing)."""
    losses = [r["loss"] for r in train if _num(r.get("loss"))]
    last = train[-1] if train else {}
    vl = [r["val_loss"] for r in val if _num(r.get("val_loss"))]
    return [
        last.get("step", "-"),
        f"{last.get('tokens', 0) / 1e6:.2f}M" if "tokens" in last else "-",
        f"{smooth(losses)[-1]:.3f}" if losses else "-",
        f"{vl[-1]:.3f}" if vl else "-",
        f"{math.exp(min(vl[-1], 50)):.1f}" if vl and lm_loss else "-",
        f"{last['elapsed_s'] / 60:.1f}" if _num(last.get("elapsed_s")) else "-",
    ]


def _data_row(m: dict) -> list:
    def part(split: str) -> tuple[str, str]:
        d = m.get(split) or {}
        tokens = d.get("tokens")
        if d.get("target_tokens") is not None:  # SFT: tokens the loss is computed on
            tokens = f"{d.get('tokens'):,} ({d['target_tokens']:,} trained on)"
        elif tokens is not None:
            tokens = f"{tokens:,}"
        docs = d.get("docs", d.get("conversations"))
        return tokens or "-", f"{docs:,}" if isinstance(docs, int) else "-"

    (tt, td), (vt, vd) = part("train"), part("val")
    bad = f"{m.get('skipped', 0)} skipped" + (f", {m['truncated']} truncated" if m.get("truncated") else "")
    return [m.get("kind", "-"), m.get("source", "-"), tt, td, vt, vd, bad]


def _eval_section(page: _Page, label: str, ev: dict) -> None:
    page.heading("Evaluation" + (f" ({label})" if label else "") + (f": {ev['model']}" if ev.get("model") else ""))
    if ev.get("val_loss"):
        page.para("Held-out loss on the SFT validation split (assistant tokens only):")
        page.table(
            ["model", "loss", "perplexity", "tokens"],
            [[k, f"{v['loss']:.3f}", f"{v['ppl']:.1f}", v["tokens"]] for k, v in ev["val_loss"].items()],
            {1, 2, 3},
        )
    if ev.get("text"):
        t = ev["text"]
        page.table(
            ["file", "loss (nats/token)", "perplexity", "bits/byte", "tokens"],
            [[t["file"], f"{t['loss']:.3f}", f"{t['ppl']:.1f}", f"{t['bits_per_byte']:.3f}", t["tokens"]]],
            {1, 2, 3, 4},
        )
    if ev.get("choice"):
        page.table(
            ["task", "scoring", "accuracy", "95% CI", "n", "chance"],
            [
                [
                    r["task"],
                    r["method"],
                    f"{r['accuracy']:.1%}",
                    f"{r['ci95'][0]:.1%}–{r['ci95'][1]:.1%}",
                    r["total"],
                    f"{r['chance']:.0%}",
                ]
                for r in ev["choice"]
            ],
            {2, 4, 5},
        )
        page.para(
            "An accuracy whose 95% interval lies above chance is a real effect. mean: mean log-probability of "
            "the answer given the question; pmi: the same minus its mean log-probability without the question; "
            "shortest, overlap: no model, the shortest option and the best word match with the question "
            "(references: a model that reads the question should beat both); "
            "letter / option / option_norm: see docs/eval.md.",
            "muted",
        )
    if ev.get("samples"):
        page.heading("Samples", 3)
        page.samples(ev["samples"])
    if ev.get("timings"):
        page.para(
            "Time: " + " · ".join(f"{k.removesuffix('_s')} {v / 60:.1f} min" for k, v in ev["timings"].items()), "muted"
        )


def build_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    recipe: str | None = None,
    reference: bool = True,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write OUT/report.html (self-contained) and OUT/report.md (+ OUT/report_files/*.png). OUT defaults to RUN_DIR."""
    run_dir = Path(run_dir)
    out = Path(out or run_dir)
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    stages = find_stages(run_dir)
    page = _Page(title or f"sprout report: {run_dir.resolve().name}")
    loaded = {}
    for name, folder in stages.items():
        train, val = read_metrics(folder)
        cfg = read_config(folder)
        ref = pick_reference(cfg.get("stage", name), cfg, recipe) if reference else None
        loaded[name] = (folder, train, val, cfg, ref, read_objective(folder))
    page.table(
        ["stage", "steps", "tokens", "train loss (avg)", "val loss", "val ppl", "minutes"],
        [[n] + _stage_summary(t, v, d.get("lm_loss", True)) for n, (_, t, v, _, _, d) in loaded.items()],
        {1, 2, 3, 4, 5, 6},
    )

    for name, (folder, train, val, cfg, ref, desc) in loaded.items():
        page.heading(f"Stage: {name}" + (f" ({desc['stage']})" if desc.get("stage") not in (None, name) else ""))
        page.para(f"folder {folder}", "muted")
        page.para(f"Loss: {desc.get('loss_label', 'loss')}.")
        if desc.get("healthy"):
            page.para(f"A healthy run: {desc['healthy']}", "muted")
        page.notes(health_notes(train, val, ref, lm=bool(desc.get("lm_loss"))))
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        png = plot_core(name, train, val, ref, cfg, files / f"{safe}_training.png", desc.get("loss_label", "loss"))
        page.image(png, f"report_files/{png.name}", f"{name}: loss, learning rate, gradient norm, throughput")
        if ref is None and reference:
            page.para(
                "No reference curve for this configuration (reference curves exist for the built-in recipes).", "muted"
            )
        groups = extra_series(train, val, desc.get("plot_metrics", []))
        extra = plot_extra(name, train, val, groups, files / f"{safe}_metrics.png")
        if extra:
            page.image(extra, f"report_files/{extra.name}", f"{name}: other logged metrics")
        metas = read_data_meta(folder)
        if metas:
            page.heading("Data", 3)
            header = ["kind", "source", "train tokens", "train docs", "val tokens", "val docs", "skipped / truncated"]
            page.table(header, [_data_row(m) for m in metas], {2, 3, 4, 5})
        if (folder / "config.yaml").exists():
            page.pre((folder / "config.yaml").read_text(), f"config.yaml ({name})")

    for label, ev in find_eval(run_dir, stages):
        _eval_section(page, label, ev)

    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(page.html(), encoding="utf-8")
    md_path.write_text("\n".join(page.md), encoding="utf-8")
    return html_path, md_path

"""`sprout report`: a self-contained HTML page and markdown from a run folder."""

import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sprout.eval.report import build_report, extra_series, find_stages, group_keys, health_notes, pick_reference

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _stage(
    folder: Path,
    stage: str,
    n: int = 60,
    extra=None,
    start: float = 8.0,
    end: float = 5.0,
    preset: str = "cpu",
    seq_len: int = 256,
):
    folder.mkdir(parents=True)
    rows = []
    for i in range(1, n + 1):
        t = i * 20480
        row = {
            "step": i * 5,
            "tokens": t,
            "loss": end + (start - end) * math.exp(-i / 12) + 0.05 * math.sin(i),
            "lr": 1e-3 * min(1, i / 5) * (0.55 + 0.45 * math.cos(math.pi * i / n)),
            "grad_norm": 0.5 + 2 * math.exp(-i / 4),
            "tokens_per_s": 3000 + 100 * math.sin(i / 3),
            "elapsed_s": i * 6.0,
            "epoch": i / 500,
        }
        if stage != "dpo":  # as in real metrics: language-modelling stages log their cross-entropy
            row["ce"] = row["loss"]
        row.update((extra or (lambda i: {}))(i))
        rows.append(row)
        if i % 20 == 0:
            rows.append(
                {
                    "step": i * 5,
                    "split": "val",
                    "tokens": t,
                    "elapsed_s": i * 6.0,
                    "val_loss": row["loss"] + 0.1,
                    "val_ppl": math.exp(row["loss"] + 0.1),
                }
            )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.yaml").write_text(
        f"stage: {stage}\npreset: {preset}\nseq_len: {seq_len}\nlr: 0.001\ngrad_clip: 1.0\n"
    )
    meta = folder / "tokenized" / stage
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(
        json.dumps(
            {
                "kind": stage,
                "source": "data/x.jsonl (1 file)",
                "train": {"tokens": 123456, "docs": 789},
                "val": {"tokens": 1234, "docs": 7},
                "skipped": 0,
            }
        )
    )


def _speedrun_like(root: Path) -> Path:
    """pretrain (MoE load per layer), sft, dpo (rewards/...) stages and a speedrun-style eval.json."""
    _stage(
        root / "pretrain",
        "pretrain",
        extra=lambda i: {
            "aux_loss": 0.01 + 0.001 * math.sin(i),
            "moe_load_maxmin": 1 + 2 * math.exp(-i / 10),
            **{f"moe_load_layer{k}": 0.25 + 0.01 * k * math.sin(i) for k in range(4)},
        },
    )
    _stage(root / "sft", "sft", start=6.3, end=5.0)
    _stage(
        root / "dpo",
        "dpo",
        n=30,
        start=0.69,
        end=0.4,
        extra=lambda i: {
            "rewards/chosen": 0.02 * i,
            "rewards/rejected": -0.03 * i,
            "rewards/margin": 0.05 * i,
            "rewards/accuracy": min(1, 0.5 + i / 60),
        },
    )
    ev = {
        "val_loss": {
            "base": {"loss": 6.4, "ppl": 604.6, "tokens": 72078},
            "chat": {"loss": 4.97, "ppl": 144.5, "tokens": 72078},
        },
        "choice": [
            {
                "task": "insuranceqa-zh",
                "method": "pmi",
                "accuracy": 0.481,
                "ci95": [0.405, 0.558],
                "correct": 77,
                "total": 160,
                "chance": 0.25,
            },
            {
                "task": "idiom-zh",
                "method": "mean",
                "accuracy": 0.3,
                "ci95": [0.2, 0.4],
                "correct": 30,
                "total": 100,
                "chance": 0.25,
            },
        ],
        "samples": [
            {
                "lang": "zh",
                "question": "你好，请介绍一下你自己。",
                "answer": "我是一个<小>模型。",
                "answer_lang": "zh",
                "repeated_4gram_rate": 0.0,
                "tokens": 9,
                "finished": True,
            }
        ],
        "timings": {"pretrain_s": 420.0, "sft_s": 360.0, "total_s": 900.0},
    }
    (root / "eval.json").write_text(json.dumps(ev, ensure_ascii=False))
    return root


def test_group_keys_and_extra_series():
    g = group_keys(
        [
            "rewards/chosen",
            "rewards/margin",
            "reward_format",
            "reward",
            "moe_load_layer0",
            "moe_load_layer1",
            "moe_load_maxmin",
            "aux_loss",
        ]
    )
    assert g == {
        "rewards": ["rewards/chosen", "rewards/margin"],
        "reward": ["reward_format", "reward"],
        "moe_load_layer": ["moe_load_layer0", "moe_load_layer1"],
        "moe_load_maxmin": ["moe_load_maxmin"],
        "aux_loss": ["aux_loss"],
    }
    train = [{"step": 1, "loss": 2.0, "ce": 2.0, "kl": 0.1}, {"step": 2, "loss": 1.5, "ce": 1.5, "kl": 0.2}]
    val = [{"split": "val", "val_loss": 1.6, "val_kl": 0.3}]
    assert extra_series(train, val) == {"kl": ["kl"]}  # ce == loss is not repeated; val_kl rides with kl


def test_health_notes_flag_a_diverging_run():
    flat = [{"step": i, "tokens": i * 100, "loss": 7.0 + 0.01 * (i % 3)} for i in range(30)]
    levels = [lvl for lvl, _ in health_notes(flat, [], None)]
    assert "bad" in levels
    nan = flat[:5] + [{"step": 6, "tokens": 600, "loss": float("nan")}]
    assert health_notes(nan, [], None)[0][0] == "bad"
    val = [{"val_loss": v} for v in (5.0, 4.8, 5.2)]
    assert any("overfitting" in m for _, m in health_notes(flat, val, None))


def test_reference_curves_for_the_cpu_recipe():
    ref = pick_reference("pretrain", {"preset": "cpu", "seq_len": 256}, None)
    assert ref is not None and ref[0] == "cpu" and len(ref[1]["train"]) > 10
    assert pick_reference("sft", {"preset": "minimind2", "seq_len": 512}, None) is None
    assert pick_reference("sft", {}, "cpu")[1]["val"]


def test_report_is_self_contained_with_plots_and_eval_table(tmp_path):
    run = _speedrun_like(tmp_path / "run")
    assert list(find_stages(run)) == ["pretrain", "sft", "dpo"]
    html_path, md_path = build_report(run)
    page = html_path.read_text()
    # self-contained: no scripts, stylesheets, or anything fetched from elsewhere
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    assert not re.search(r"""src=["'](?!data:)""", page)
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(pngs) == 5  # loss/lr/grad/throughput per stage + other metrics for pretrain (MoE) and dpo (rewards)
    import base64

    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "<th>task</th><th>scoring</th><th>accuracy</th><th>95% CI</th>" in page
    assert '<td>idiom-zh</td><td>mean</td><td class="num">30.0%</td><td>20.0%–40.0%</td>' in page
    assert "我是一个&lt;小&gt;模型。" in page  # samples escaped
    assert "reference train (cpu recipe)" not in page  # labels live inside the PNGs, checked below
    md = md_path.read_text()
    for name in ("pretrain_training.png", "pretrain_metrics.png", "dpo_metrics.png"):
        assert f"(report_files/{name})" in md and (run / "report_files" / name).stat().st_size > 5000
    assert "| idiom-zh | mean | 30.0% | 20.0%–40.0% | 100 | 25% |" in md
    # perplexity for the language-modelling stages only: exp of a DPO loss means nothing
    assert re.search(r"^\| sft \| 300 \| [^|]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", md, re.M)
    assert re.search(r"^\| dpo \| 150 \| [^|]+ \| [\d.]+ \| [\d.]+ \| - \|", md, re.M)
    assert "preset: cpu" in md and "123,456" in md
    # a single stage folder works as well
    html_one, _ = build_report(run / "sft", out=tmp_path / "one")
    assert html_one.read_text().count("data:image/png;base64,") == 1


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _screenshot(url: str, png: Path, size: str = "1280,2400") -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                _chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                f"--screenshot={png}",
                f"--window-size={size}",
                url,
            ],
            check=True,
            timeout=120,
            capture_output=True,
        )


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="needs Chromium")
def test_report_renders_in_headless_chromium(tmp_path):
    run = _speedrun_like(tmp_path / "run")
    html_path, _ = build_report(run, title="sprout report (test run)")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    _screenshot(html_path.resolve().as_uri(), shot)
    _screenshot(
        (run / "report_files" / "dpo_metrics.png").resolve().as_uri(), ARTIFACTS / "report_dpo_metrics.png", "1100,800"
    )
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        colors = im.convert("RGB").resize((64, 120)).getcolors(64 * 120)
    assert colors is not None and len(colors) > 20  # not a blank page


def test_report_sections_come_from_the_objectives_own_description(tmp_path):
    """A reasoning run and a tools run (3 steps each, built-in data) get their own loss label, healthy-run text
    and metrics; the stages are ordered by when they started, not by a list in the report."""
    from sprout.config import TrainConfig
    from sprout.train import train
    from sprout.train.objectives import get_objective

    run = tmp_path / "post"
    for stage in ("tools", "reasoning"):  # tools first: alphabetical order would put it last
        seq_len = 1024 if stage == "tools" else 128  # a tools conversation lists the tools: ~500 tokens
        train(
            TrainConfig(
                stage=stage,
                preset="tiny",
                out=str(run / stage),
                max_steps=3,
                seq_len=seq_len,
                batch_size=2,
                log_every=1,
                eval_every=0,
                save_every=0,
                val_fraction=0.1,
                objective_args={"n": 40, "tag_weight": 3.0},
            )
        )
    assert list(find_stages(run)) == ["tools", "reasoning"]
    html_path, md_path = build_report(run, reference=False)
    md = md_path.read_text()
    for stage in ("reasoning", "tools"):
        obj = get_objective(stage)
        section = md.split(f"## Stage: {stage}")[1].split("## Stage:")[0]
        assert f"Loss: {obj.loss_label}." in section and obj.healthy in section
        assert f"(report_files/{stage}_metrics.png)" in section  # its declared metric (`ce`) is plotted


def test_rl_curves_are_drawn_against_steps() -> None:
    """An RL run's `tokens` count prompts only, so its curves use steps; other runs keep tokens."""
    from sprout.eval.report import _by_tokens

    lm = [{"step": 1, "tokens": 4096, "loss": 5.0}]
    rl = [{"step": 1, "tokens": 2300, "loss": 0.0, "reward": 0.4}]
    assert _by_tokens(lm, [{"step": 1, "tokens": 4096, "val_loss": 5.1}])
    assert not _by_tokens(rl, [])
    assert not _by_tokens([{"step": 1, "loss": 5.0}], [])  # no token counts at all

"""`sprout --help`, `sprout VERB --help` and argument errors answer without importing the heavy libraries."""

import subprocess
import sys

import pytest

from sprout.cli import GROUPS, VERBS

HEAVY = ("torch", "numpy", "matplotlib", "transformers")
PROBE = """
import sys
from sprout.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = [m for m in {heavy!r} if m in sys.modules]
print("HEAVY:" + ",".join(heavy))
sys.exit(code)
"""


def _run(args: list[str]) -> tuple[int, str, str]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True, text=True, timeout=120
    )
    heavy = r.stdout.strip().splitlines()[-1]
    assert heavy.startswith("HEAVY:"), r.stdout + r.stderr
    return r.returncode, heavy.removeprefix("HEAVY:"), r.stdout + r.stderr


@pytest.mark.parametrize("args", [["--help"]] + [[*key.split(), "--help"] for key in [*VERBS, *GROUPS]])
def test_help_imports_no_heavy_library(args):
    code, heavy, out = _run(args)
    assert code == 0 and heavy == "", (heavy, out)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "no-such-stage"],
        ["chat"],
        ["eval"],
        ["tokenizer"],
        ["data", "validate", "x.jsonl", "--kind", "nope"],
        ["chat", "--model", "M", "lr=1"],
        ["export", "gguf", "--model", "M", "--out", "m.gguf", "--dtype", "q4_k"],
        ["import", "minimind", "--out", "O"],
    ],
)
def test_argument_errors_exit_2_without_heavy_imports(args):
    code, heavy, out = _run(args)
    assert code == 2 and heavy == "", (heavy, out)
    assert "usage: sprout" in out and "Traceback" not in out


def test_train_help_lists_every_registered_stage():
    from sprout.train.objectives import get_objective
    from sprout.train.stages import STAGES

    _, _, out = _run(["train", "--help"])
    for name in STAGES:
        assert f"  {name} " in out
        assert get_objective(name).name == name  # the table points at the module that registers it


def test_every_verb_and_group_is_reachable():
    from sprout.cli import build_parser

    parser = build_parser()
    for key in VERBS:
        words = key.split()
        if key == "eval skills":
            words += ["tools", "MODEL"]
        elif key == "eval rl":
            words += ["MODEL"]
        elif key in ("data download",):
            words += ["minimind"]
        elif key == "data validate":
            words += ["FILE"]
        elif key == "report":
            words += ["RUN"]
        elif key == "train":
            words += ["sft"]
        elif key == "import minimind":
            words += ["model.pth"]
        required = {
            "chat": ["--model", "M"],
            "serve": ["--model", "M"],
            "export merge-lora": ["--model", "M", "--lora", "L", "--out", "O"],
            "distill generate": ["--teacher", "T", "--prompts", "P", "--out", "O"],
            "tokenizer train": ["--out", "O"],
            "eval harness": ["--model", "M"],
            "export gguf": ["--model", "M", "--out", "O"],
            "export ollama": ["--model", "M", "--out", "O"],
            "import minimind": ["--out", "O"],
        }.get(key, [])
        a = parser.parse_args(words + required)
        assert a.run is VERBS[key].run, key
    assert all(any(k.startswith(g + " ") for k in VERBS) for g in GROUPS)

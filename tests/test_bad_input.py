"""Every class of bad input gives one exact line on stderr, exit code 1 and no traceback, for
`sprout data validate`, `sprout train` and `sprout eval`.

The matrix runs `sprout.cli.main` in-process (the same `run_cli` wrapper a shell runs; a traceback
would be printed to the captured stderr, and an unconverted exception would escape main); a few
cases also run as real subprocesses (`python -m sprout.cli ...`) to check the process exit code.
`--debug` / SPROUT_DEBUG=1 print the traceback before the same line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_chat_model

from sprout.cli import main
from sprout.data import readers

HINT = "fix the record, or pass --skip-invalid to skip bad records and count them"
UTF8 = "save the file as UTF-8 text (is it binary or in another encoding?)"
GOOD_TEXT = json.dumps({"text": "a fine first document"}) + "\n"
USER, BOT = {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}


def _jsonl(*records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _write(tmp: Path, name: str, content: bytes | dict[str, bytes]) -> Path:
    """A file, or a folder of shards when content maps shard names to bytes."""
    path = tmp / name
    if isinstance(content, dict):
        path.mkdir()
        for shard, data in content.items():
            (path / shard).write_bytes(data)
    else:
        path.write_bytes(content)
    return path


# (id, file name, content, kind, message after "sprout: error: {path}") - the message the user sees.
# Files whose kind is pretrain start with a valid document, so eval (which sniffs the first record
# to choose between text and conversations) reads them as text too and reports the same line.
CASES = [
    (
        "missing-file",
        "nope.jsonl",
        None,
        "pretrain",
        ": no such file or folder; check the path (is it relative to another folder?)",
    ),
    (
        "missing-field",
        "a.jsonl",
        GOOD_TEXT.encode() + _jsonl({"txt": "x"}),
        "pretrain",
        f":2: missing field 'text'; {HINT}",
    ),
    (
        "wrong-type",
        "a.jsonl",
        GOOD_TEXT.encode() + _jsonl({"text": 3}),
        "pretrain",
        f":2: text must be a string, got int; {HINT}",
    ),
    (
        "invalid-json",
        "a.jsonl",
        GOOD_TEXT.encode() + b'{"text": "unclosed}\n',
        "pretrain",
        f":2: invalid JSON: Unterminated string starting at column 10; {HINT}",
    ),
    (
        "invalid-utf8",
        "a.jsonl",
        GOOD_TEXT.encode() + b'{"text": "caf\xe9"}\n',
        "pretrain",
        f":2: byte 0xe9 at byte offset {len(GOOD_TEXT) + 13} is not valid UTF-8 (invalid continuation byte); {UTF8}",
    ),
    (
        "binary-file",
        "a.jsonl",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        "pretrain",
        f":1: byte 0x89 at byte offset 0 is not valid UTF-8 (invalid start byte); {UTF8}",
    ),
    (
        "empty-content",
        "a.jsonl",
        GOOD_TEXT.encode() + _jsonl({"text": "   "}),
        "pretrain",
        f":2: text is empty; {HINT}",
    ),
    (
        "not-an-object",
        "a.jsonl",
        GOOD_TEXT.encode() + b"[1, 2]\n",
        "pretrain",
        f":2: a record must be a JSON object, got list; {HINT}",
    ),
    (
        "json-not-a-list",
        "a.json",
        b'"just a string"',
        "pretrain",
        f":1: a .json file must hold a list of records (use .jsonl for one record per line); {HINT}",
    ),
    (
        "unsupported-type",
        "a.csv",
        b"text\nhello\n",
        "pretrain",
        ": unsupported file type '.csv'; use one of .jsonl, .json, .parquet",
    ),
    (
        "folder-without-data",
        "shards",
        {"notes.txt": b"hello"},
        "pretrain",
        ": folder has no data files (.jsonl, .json, .parquet)",
    ),
    (
        "mixed-schema-shards",
        "shards",
        {"a.jsonl": GOOD_TEXT.encode(), "b.jsonl": _jsonl({"conversations": [USER, BOT]})},
        "pretrain",
        f"/b.jsonl:1: missing field 'text'; {HINT}",
    ),
    (
        "corrupt-parquet",
        "a.parquet",
        b"PAR1 this is not really parquet",
        "pretrain",
        ": not a readable parquet file (Parquet magic bytes not found in footer. Either the file is corrupted or this "
        "is not a parquet file.); check the file is complete (re-download or re-export it)",
    ),
    (
        "unknown-role",
        "s.jsonl",
        _jsonl({"conversations": [USER, {"role": "bot", "content": "x"}]}),
        "sft",
        f":1: conversations[1].role must be one of system, user, assistant, tool, got 'bot'; {HINT}",
    ),
    (
        "wrong-role-order",
        "s.jsonl",
        _jsonl({"conversations": [USER, {"role": "system", "content": "x"}, BOT]}),
        "sft",
        f":1: conversations[1]: a system message may only come first; {HINT}",
    ),
    (
        "assistant-first",
        "s.jsonl",
        _jsonl({"conversations": [BOT, USER]}),
        "sft",
        ":1: conversations: the conversation starts with an assistant message; the first turn must be the user's; "
        + HINT,
    ),
    (
        "empty-assistant",
        "s.jsonl",
        _jsonl({"conversations": [USER, {"role": "assistant", "content": ""}]}),
        "sft",
        f":1: conversations: every assistant message is empty (nothing to train on); {HINT}",
    ),
    (
        "orphan-tool-result",
        "s.jsonl",
        _jsonl({"conversations": [USER, {"role": "tool", "content": "42"}, BOT]}),
        "sft",
        f":1: conversations[1]: a tool message must follow an assistant (tool call) or another tool message; {HINT}",
    ),
]
EMPTY = ("empty-file", "e.jsonl", b"", "pretrain")


def _parquet(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


CASES.append(
    (
        "mixed-schema-parquet-shards",
        "pq",
        {
            "a.parquet": _parquet([{"text": "one"}, {"text": "two"}]),
            "b.parquet": _parquet([{"conversations": [USER, BOT]}]),
        },
        "pretrain",
        f"/b.parquet:1: missing field 'text'; {HINT}",
    )
)

# The other loader kinds, through `sprout data validate --kind` (their stages read with the same code).
KIND_CASES = [
    (
        "dpo",
        {"chosen": [USER, BOT], "rejected": [USER]},
        "rejected must end with an assistant message, ends with 'user'",
    ),
    ("reward", {"chosen": [USER, BOT]}, "missing field 'rejected'"),
    ("rlaif", {"conversations": [{"role": "system", "content": "be nice"}]}, "conversations has no user message"),
    ("agent_rl", {"conversations": [USER], "gt": "42"}, "gt must be a list, got str"),
    ("tokenizer", {"title": "no text here"}, "no text to learn from: needs 'text' or 'conversations'"),
]


@pytest.mark.parametrize("kind,record,problem", KIND_CASES, ids=[c[0] for c in KIND_CASES])
def test_every_loader_kind(kind, record, problem, tmp_path, capsys):
    pair = {"chosen": [USER, BOT], "rejected": [USER, BOT]}
    good = {
        "dpo": pair,
        "reward": pair,
        "rlaif": {"conversations": [USER]},
        "agent_rl": {"conversations": [USER], "gt": ["42"]},
        "tokenizer": {"text": "some words"},
    }[kind]
    path = _write(tmp_path, "k.jsonl", _jsonl(good, record))
    code, _, err = _run(["data", "validate", str(path), "--kind", kind], capsys)
    _expect(code, err, f"{path}:2: {problem}; {HINT}")
    code, out, _ = _run(["data", "validate", str(path), "--kind", kind, "--skip-invalid"], capsys)
    assert code == 0 and out.splitlines()[0] == f"{path}: 1 valid {kind} records"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _expect(code: int, err: str, message: str) -> None:
    assert "Traceback" not in err
    assert err == f"sprout: error: {message}\n"
    assert code == 1


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_data_validate(case, tmp_path, capsys):
    _, fname, content, kind, tail = case
    path = tmp_path / fname if content is None else _write(tmp_path, fname, content)
    code, _, err = _run(["data", "validate", str(path), "--kind", kind], capsys)
    _expect(code, err, f"{path}{tail}")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_train(case, tmp_path, capsys):
    _, fname, content, kind, tail = case
    path = tmp_path / fname if content is None else _write(tmp_path, fname, content)
    stage = "pretrain" if kind == "pretrain" else "sft"
    code, _, err = _run(
        [
            "train",
            stage,
            "--data",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--max-steps",
            "1",
            "preset=tiny",
            "seq_len=32",
            "batch_size=2",
            "device=cpu",
        ],
        capsys,
    )
    _expect(code, err, f"{path}{tail}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model")
    save_tiny_chat_model(path)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_eval(case, tmp_path, capsys, model_dir):
    _, fname, content, _, tail = case
    path = tmp_path / fname if content is None else _write(tmp_path, fname, content)
    code, _, err = _run(
        [
            "eval",
            "--model",
            str(model_dir),
            "--data",
            str(path),
            "--tasks",
            "--out",
            str(tmp_path / "eval"),
            "--device",
            "cpu",
        ],
        capsys,
    )
    _expect(code, err, f"{path}{tail}")


def test_empty_file(tmp_path, capsys, model_dir):
    path = _write(tmp_path, *EMPTY[1:3])
    code, _, err = _run(["data", "validate", str(path), "--kind", "pretrain"], capsys)
    _expect(code, err, f"{path}: no records: the data is empty; give a file with one JSON record per line")
    code, _, err = _run(["train", "pretrain", "--data", str(path), "--out", str(tmp_path / "o"), "preset=tiny"], capsys)
    _expect(
        code,
        err,
        f'{path} (1 file): no usable pretraining documents; give records like {{"text": "..."}}, '
        "one per line (see docs/data.md)",
    )
    code, _, err = _run(
        ["eval", "--model", str(model_dir), "--data", str(path), "--tasks", "--out", str(tmp_path / "eval")], capsys
    )
    _expect(
        code,
        err,
        f"{path}: no documents to score (the file holds no records); "
        "give --data a file with `text` or `conversations` records",
    )


def test_enormous_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(readers, "MAX_LINE_BYTES", 4096)  # the real limit is 64 MiB; the logic is the same
    path = _write(tmp_path, "big.jsonl", GOOD_TEXT.encode() + _jsonl({"text": "x" * 10_000}) + GOOD_TEXT.encode())
    code, _, err = _run(["data", "validate", str(path), "--kind", "pretrain"], capsys)
    _expect(
        code,
        err,
        f"{path}:2: line is longer than 4,096 bytes; split the record or check that this is a JSON-lines file",
    )
    code, out, err = _run(["data", "validate", str(path), "--kind", "pretrain", "--skip-invalid"], capsys)
    assert code == 0 and out.splitlines()[:3] == [
        f"{path}: 2 valid pretrain records",
        "skipped 1 invalid records:",
        "  1 x line is longer than 4,096 bytes",
    ]


def test_skip_invalid_counts_by_reason(tmp_path, capsys):
    path = _write(
        tmp_path,
        "mix.jsonl",
        _jsonl(
            {"conversations": [USER, BOT]},
            {"conversations": [BOT]},
            {"conversations": [USER, {"role": "x", "content": "a"}]},
            {"conversations": [USER, {"role": "y", "content": "b"}]},
            {"messages": [USER, BOT]},
        )
        + b"{oops\n",
    )
    code, out, err = _run(["data", "validate", str(path), "--skip-invalid"], capsys)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"{path}: 2 valid sft records",
        "skipped 4 invalid records:",
        "  2 x conversations[i].role must be one of system, user, assistant, tool",
        "  1 x conversations: the conversation starts with an assistant message; the first turn must be the user's",
        "  1 x invalid JSON: Expecting property name enclosed in double quotes",
        "first ones:",
        f"  {path}:2: conversations: the conversation starts with an assistant message; "
        "the first turn must be the user's",
        f"  {path}:3: conversations[1].role must be one of system, user, assistant, tool, got 'x'",
        f"  {path}:4: conversations[1].role must be one of system, user, assistant, tool, got 'y'",
        f"  {path}:6: invalid JSON: Expecting property name enclosed in double quotes at column 2",
    ]


def test_sft_truncated_away_is_counted_and_reported(tmp_path, capsys):
    """A conversation whose assistant part lies beyond seq_len is dropped and reported, never a NaN loss."""
    long_user = {"role": "user", "content": "word " * 200}
    path = _write(
        tmp_path,
        "s.jsonl",
        _jsonl(*([{"conversations": [USER, BOT]}] * 30 + [{"conversations": [long_user, BOT]}] * 3)),
    )
    out_dir = tmp_path / "out"
    code, out, err = _run(
        [
            "train",
            "sft",
            "--data",
            str(path),
            "--out",
            str(out_dir),
            "--max-steps",
            "2",
            "preset=tiny",
            "seq_len=64",
            "batch_size=2",
            "device=cpu",
            "log_every=1",
            "eval_every=0",
            "val_fraction=0",
        ],
        capsys,
    )
    assert code == 0, err
    assert (
        "3 cut to seq_len=64; 3 dropped: no assistant token left within seq_len=64 (raise seq_len to keep them)" in out
    )
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) and x < 100 for x in losses)


# ---- real processes --------------------------------------------------------------------------------
def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[1]
    full_env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sprout.cli", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


def test_processes_exit_1_with_one_line(tmp_path, model_dir):
    bad = _write(tmp_path, "a.jsonl", GOOD_TEXT.encode() + b'{"text": "caf\xe9"}\n')
    line = (
        f"sprout: error: {bad}:2: byte 0xe9 at byte offset {len(GOOD_TEXT) + 13} is not valid UTF-8 "
        f"(invalid continuation byte); {UTF8}\n"
    )
    for args in (
        ["data", "validate", str(bad), "--kind", "pretrain"],
        ["train", "pretrain", "--data", str(bad), "--out", str(tmp_path / "o"), "preset=tiny"],
        ["eval", "--model", str(model_dir), "--data", str(bad), "--tasks", "--out", str(tmp_path / "e")],
    ):
        r = _cli(*args)
        assert (r.returncode, r.stderr) == (1, line), args


def test_debug_switch_shows_the_traceback(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope.jsonl"
    line = f"sprout: error: {missing}: no such file or folder; check the path (is it relative to another folder?)\n"
    for argv, env in ((["data", "validate", str(missing), "--debug"], None), (["data", "validate", str(missing)], "1")):
        if env:
            monkeypatch.setenv("SPROUT_DEBUG", env)
        code, _, err = _run(argv, capsys)
        assert code == 1
        assert err.startswith("Traceback (most recent call last):") and err.endswith(line)
        assert "raise DataError" in err  # the traceback reaches the line that raised


def test_missing_model_folder(tmp_path, capsys):
    missing = tmp_path / "no-model"
    code, _, err = _run(
        ["train", "sft", "--model", str(missing), "--out", str(tmp_path / "o"), "--max-steps", "1"], capsys
    )
    _expect(
        code,
        err,
        f"{missing}: no tokenizer.json (sprout reads fast tokenizers; save the tokenizer with "
        "transformers' save_pretrained to get one)",
    )
    code, _, err = _run(["eval", "--model", str(missing), "--tasks"], capsys)
    _expect(code, err, f"{missing} is not a model folder: {missing / 'config.json'} is missing")

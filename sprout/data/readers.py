"""Read and validate dataset records from .jsonl, .json, .parquet files or folders of shards.

Every problem is reported as `FILE:LINE: what is wrong`, so a user can open the file at the
right place. For parquet files the "line" is the row number (1-based).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

KINDS = ("pretrain", "sft", "dpo", "rlaif", "agent_rl")
ROLES = ("system", "user", "assistant", "tool")
SUFFIXES = (".jsonl", ".json", ".parquet")
_MAX_KEPT_ERRORS = 5


class DataError(ValueError):
    """A record that cannot be used, with its location: `FILE:LINE: what is wrong`."""

    def __init__(self, path: str | Path, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {problem}")


@dataclass
class ReadStats:
    """Counters filled by `read_records` (valid records yielded, invalid ones skipped)."""

    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few messages, for the report

    def summary(self) -> str:
        if not self.skipped:
            return f"read {self.read} records"
        return f"read {self.read} records, skipped {self.skipped} invalid records (first: {self.errors[0]})"


# ---- validators: return a problem description, or None when the record is fine ---------------

def _check_json_field(value: Any, where: str) -> str | None:
    """`tools` / `tool_calls` may be a JSON string or an already-parsed value."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return f"{where} is not valid JSON ({e.msg} at column {e.colno})"
    if not isinstance(value, list):
        return f"{where} must be a list, got {type(value).__name__}"
    return None


def _check_messages(msgs: Any, name: str, need_assistant: bool = False, need_user: bool = False) -> str | None:
    if not isinstance(msgs, list) or not msgs:
        return f"{name} must be a non-empty list of messages"
    for i, m in enumerate(msgs):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            return f"{where} must be an object with role and content, got {type(m).__name__}"
        role = m.get("role")
        if role not in ROLES:
            return f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}"
        content = m.get("content")
        # An assistant turn that only calls tools may leave content out.
        if content is None and not (role == "assistant" and m.get("tool_calls") is not None):
            return f"{where}.content is missing"
        if content is not None and not isinstance(content, str):
            return f"{where}.content must be a string, got {type(content).__name__}"
        rc = m.get("reasoning_content")
        if rc is not None and not isinstance(rc, str):
            return f"{where}.reasoning_content must be a string, got {type(rc).__name__}"
        for key in ("tool_calls", "tools"):
            if m.get(key) is not None:
                problem = _check_json_field(m[key], f"{where}.{key}")
                if problem:
                    return problem
    roles = [m["role"] for m in msgs]
    if need_assistant and "assistant" not in roles:
        return f"{name} has no assistant message (nothing to train on)"
    if need_user and "user" not in roles:
        return f"{name} has no user message"
    return None


def _check_top_tools(rec: dict) -> str | None:
    return _check_json_field(rec["tools"], "tools") if rec.get("tools") is not None else None


def _check_pretrain(rec: dict) -> str | None:
    if "text" not in rec:
        return "missing field 'text'"
    text = rec["text"]
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "text is empty"
    return None


def _conversation_key(rec: dict) -> str | None:
    """MiniMind writes `conversations`; OpenAI-style files write `messages`. Both are accepted."""
    return next((k for k in ("conversations", "messages") if k in rec), None)


def _check_sft(rec: dict) -> str | None:
    key = _conversation_key(rec)
    if key is None:
        return "missing field 'conversations'"
    return _check_messages(rec[key], key, need_assistant=True) or _check_top_tools(rec)


def _check_dpo(rec: dict) -> str | None:
    for key in ("chosen", "rejected"):
        if key not in rec:
            return f"missing field '{key}'"
        problem = _check_messages(rec[key], key)
        if problem:
            return problem
        if rec[key][-1]["role"] != "assistant":
            return f"{key} must end with an assistant message, ends with {rec[key][-1]['role']!r}"
    return None


def _check_rlaif(rec: dict) -> str | None:
    key = _conversation_key(rec)
    if key is None:
        return "missing field 'conversations'"
    return _check_messages(rec[key], key, need_user=True) or _check_top_tools(rec)


def _check_agent_rl(rec: dict) -> str | None:
    problem = _check_rlaif(rec)
    if problem:
        return problem
    if "gt" not in rec:
        return "missing field 'gt'"
    if not isinstance(rec["gt"], list):
        return f"gt must be a list, got {type(rec['gt']).__name__}"
    return None


VALIDATORS: dict[str, Callable[[dict], str | None]] = {
    "pretrain": _check_pretrain,
    "sft": _check_sft,
    "dpo": _check_dpo,
    "rlaif": _check_rlaif,
    "agent_rl": _check_agent_rl,
}


# ---- raw readers: yield (line, record-or-DataError) ------------------------------------------

_Raw = Iterator[tuple[int, Any]]


def _read_jsonl(path: Path) -> _Raw:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, DataError(path, lineno, f"invalid JSON: {e.msg} at column {e.colno}")


def _read_json(path: Path) -> _Raw:
    """A .json file holding a list of records; each record gets the line where it starts."""
    text = path.read_text(encoding="utf-8")
    dec = json.JSONDecoder()
    ws = " \t\r\n"

    def skip(i: int) -> int:
        while i < len(text) and text[i] in ws:
            i += 1
        return i

    i = skip(0)
    if i < len(text) and text[i] == "{":  # a single record
        try:
            obj, _ = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            yield e.lineno, DataError(path, e.lineno, f"invalid JSON: {e.msg} at column {e.colno}")
            return
        yield text.count("\n", 0, i) + 1, obj
        return
    if i >= len(text) or text[i] != "[":
        yield 1, DataError(path, 1, "a .json file must hold a list of records (use .jsonl for one record per line)")
        return
    i, line, counted = skip(i + 1), 1, 0
    if i < len(text) and text[i] == "]":
        return
    while True:
        line += text.count("\n", counted, i)
        counted = i
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            # A broken element breaks the structure of the rest of the file: stop here.
            yield e.lineno, DataError(path, e.lineno, f"invalid JSON: {e.msg} at column {e.colno}")
            return
        yield line, obj
        i = skip(i)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i < len(text) and text[i] == "]":
            return
        else:
            ln = text.count("\n", 0, i) + 1
            yield ln, DataError(path, ln, "invalid JSON: expected ',' or ']' after a record")
            return


def _drop_nulls(x: Any) -> Any:
    """Parquet gives every struct the union of all fields (missing ones as None); drop those."""
    if isinstance(x, dict):
        return {k: _drop_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_drop_nulls(v) for v in x]
    return x


def _read_parquet(path: Path) -> _Raw:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield row, _drop_nulls(rec)


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def data_files(path: str | Path) -> list[Path]:
    """The data files behind `path`: the file itself, or every supported file in a folder (sorted, recursive)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted((f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES),
                       key=lambda f: f.relative_to(p).as_posix())
        if not files:
            raise DataError(p, None, f"folder has no data files ({', '.join(SUFFIXES)})")
        return files
    if p.suffix not in SUFFIXES:
        raise DataError(p, None, f"unsupported file type {p.suffix!r}; use one of {', '.join(SUFFIXES)}")
    return [p]


def read_located(
    path: str | Path, kind: str, skip_invalid: bool = False, stats: ReadStats | None = None
) -> Iterator[tuple[Path, int, dict]]:
    """`read_records` that also yields each record's file and line, for later error messages."""
    if kind not in VALIDATORS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    check = VALIDATORS[kind]
    stats = stats if stats is not None else ReadStats()
    for f in data_files(path):
        for line, rec in _READERS[f.suffix](f):
            if isinstance(rec, DataError):
                err = rec
            elif not isinstance(rec, dict):
                err = DataError(f, line, f"a record must be a JSON object, got {type(rec).__name__}")
            else:
                problem = check(rec)
                if problem is None:
                    stats.read += 1
                    yield f, line, rec
                    continue
                err = DataError(f, line, problem)
            record_invalid(err, skip_invalid, stats)


def record_invalid(err: DataError, skip_invalid: bool, stats: ReadStats) -> None:
    """Raise `err`, or with `skip_invalid` count it in `stats` (keeping the first few messages)."""
    if not skip_invalid:
        raise err
    stats.skipped += 1
    if len(stats.errors) < _MAX_KEPT_ERRORS:
        stats.errors.append(str(err))


def read_records(
    path: str | Path, kind: str, skip_invalid: bool = False, stats: ReadStats | None = None
) -> Iterator[dict]:
    """Yield the valid records of a file or folder, validated for `kind`.

    An invalid record raises `DataError`, unless `skip_invalid` is set: then it is counted in
    `stats` (pass a `ReadStats` to see how many and why) and reading goes on.
    """
    for _, _, rec in read_located(path, kind, skip_invalid, stats):
        yield rec

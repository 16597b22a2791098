"""Read and validate dataset records from .jsonl, .json, .parquet files or folders of shards.

Every problem is reported as `FILE:LINE: what is wrong`, so a user can open the file at the
right place. For parquet files the "line" is the row number (1-based).
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sprout.errors import UserError, decode_error

# reward: preference pairs for a reward model (the DPO format); tokenizer: any record with text to learn from.
KINDS = ("pretrain", "sft", "dpo", "reward", "rlaif", "agent_rl", "tokenizer")
ROLES = ("system", "user", "assistant", "tool")
SUFFIXES = (".jsonl", ".json", ".parquet")
_MAX_KEPT_ERRORS = 5
# A line longer than this is reported (and skipped with --skip-invalid) instead of being read into memory.
MAX_LINE_BYTES = 64 * 2**20
_SKIP_HINT = "fix the record, or pass --skip-invalid to skip bad records and count them"


class DataError(UserError):
    """A record that cannot be used, with its location: `FILE:LINE: what is wrong`."""

    def __init__(self, path: str | Path, line: int | None, problem: str, advice: str | None = None) -> None:
        self.path = str(path)
        super().__init__(problem, file=path, line=line, advice=advice)

    def reason(self) -> str:
        """The kind of problem without its specifics, for counting: `conversations[3].role ..., got 'x'`
        and `conversations[0].role ..., got 'y'` are one reason."""
        text = re.sub(r"\[\d+\]", "[i]", self.problem)
        text = re.sub(r"(, got | at column | at byte offset ).*$", "", text)
        return re.sub(r"^byte 0x[0-9a-f]{2}", "byte", text)


@dataclass
class ReadStats:
    """Counters filled by `read_records` (valid records yielded, invalid ones skipped)."""

    read: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few messages, for the report
    reasons: Counter = field(default_factory=Counter)  # skipped records per kind of problem
    empty_files: list[str] = field(default_factory=list)  # shards without a single record

    def summary(self) -> str:
        text = f"read {self.read} records"
        if self.skipped:
            by_reason = "; ".join(f"{n} x {r}" for r, n in self.reasons.most_common())
            text += f", skipped {self.skipped} invalid records (first: {self.errors[0]}; by reason: {by_reason})"
        if self.empty_files:
            text += f", {len(self.empty_files)} empty file(s) (first: {self.empty_files[0]})"
        return text


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
    order = _check_role_order(roles, name)
    if order:
        return order
    if need_assistant and not any(
        m["role"] == "assistant" and (m.get("content") or m.get("tool_calls") or m.get("reasoning_content"))
        for m in msgs
    ):
        if "assistant" in roles:
            return f"{name}: every assistant message is empty (nothing to train on)"
        return f"{name} has no assistant message (nothing to train on)"
    if need_user and "user" not in roles:
        return f"{name} has no user message"
    return None


def _check_role_order(roles: list[str], name: str) -> str | None:
    """Orders no chat template renders sensibly: a system turn after the start, a conversation opened
    by the assistant, a tool result that answers no assistant turn."""
    for i, role in enumerate(roles):
        if role == "system" and i > 0:
            return f"{name}[{i}]: a system message may only come first"
        if role == "tool" and (i == 0 or roles[i - 1] not in ("assistant", "tool")):
            return f"{name}[{i}]: a tool message must follow an assistant (tool call) or another tool message"
    first = next((r for r in roles if r != "system"), None)
    if first == "assistant":
        return f"{name}: the conversation starts with an assistant message; the first turn must be the user's"
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


def _check_tokenizer_text(rec: dict) -> str | None:
    """Tokenizer training reads `text` and every message's content; a record must have one of them."""
    if isinstance(rec.get("text"), str):
        return None if rec["text"].strip() else "text is empty"
    for key in ("conversations", "messages", "chosen", "rejected"):
        if key in rec:
            return _check_messages(rec[key], key)
    return "no text to learn from: needs 'text' or 'conversations'"


VALIDATORS: dict[str, Callable[[dict], str | None]] = {
    "pretrain": _check_pretrain,
    "sft": _check_sft,
    "dpo": _check_dpo,
    "reward": _check_dpo,
    "rlaif": _check_rlaif,
    "agent_rl": _check_agent_rl,
    "tokenizer": _check_tokenizer_text,
}


# ---- raw readers: yield (line, record-or-DataError) ------------------------------------------

_Raw = Iterator[tuple[int, Any]]


def _read_jsonl(path: Path) -> _Raw:
    """Lines are read as bytes and decoded one by one, so a bad byte is reported with its line and
    offset and an enormous line is never held in memory whole."""
    offset = 0  # byte offset of the current line in the file
    with open(path, "rb") as f:
        for lineno in itertools.count(1):
            raw = f.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            start = offset
            offset += len(raw)
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (chunk := f.readline(MAX_LINE_BYTES)) and not chunk.endswith(b"\n"):
                    offset += len(chunk)  # skip the rest of the line without keeping it
                offset += len(chunk)
                yield (
                    lineno,
                    DataError(
                        path,
                        lineno,
                        f"line is longer than {MAX_LINE_BYTES:,} bytes",
                        "split the record or check that this is a JSON-lines file",
                    ),
                )
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                err = decode_error(e, path, lineno, start)
                yield lineno, DataError(path, lineno, err.problem, err.advice)
                continue
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                yield lineno, DataError(path, lineno, f"invalid JSON: {e.msg.removesuffix(' at')} at column {e.colno}")


def _read_json(path: Path) -> _Raw:
    """A .json file holding a list of records; each record gets the line where it starts."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        err = decode_error(e, path, line, 0)
        yield line, DataError(path, line, err.problem, err.advice)
        return
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        yield (
            1,
            DataError(
                path,
                None,
                f"not a readable parquet file ({e})",
                "check the file is complete (re-download or re-export it)",
            ),
        )
        return
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            row += 1
            yield row, _drop_nulls(rec)


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}


def data_files(path: str | Path) -> list[Path]:
    """The data files behind `path`: the file itself, or every supported file in a folder (sorted, recursive)."""
    p = Path(path)
    if not p.exists():
        raise DataError(p, None, "no such file or folder", "check the path (is it relative to another folder?)")
    if p.is_dir():
        files = sorted(
            (f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES), key=lambda f: f.relative_to(p).as_posix()
        )
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
        if f.stat().st_size == 0:
            stats.empty_files.append(str(f))  # an empty shard is not an error, but it is reported
            continue
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
        if err.advice is None:
            err = DataError(err.path, err.line, err.problem, _SKIP_HINT)
        raise err
    stats.skipped += 1
    stats.reasons[err.reason()] += 1
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


def validate(path: str | Path, kind: str, skip_invalid: bool = False) -> str:
    """Read every record of `path` as `kind`; return the report `sprout data validate` prints.

    The first invalid record raises `DataError` (FILE:LINE) unless `skip_invalid`; a file or folder
    without a single valid record raises too, so a script can trust the exit code.
    """
    stats = ReadStats()
    for _ in read_located(path, kind, skip_invalid, stats):
        pass
    if stats.read == 0 and not stats.skipped:
        raise DataError(path, None, "no records: the data is empty", "give a file with one JSON record per line")
    if stats.read == 0:
        raise DataError(
            path,
            None,
            f"no valid {kind} records ({stats.summary()})",
            f"check that --kind {kind} is the format of this data",
        )
    lines = [f"{path}: {stats.read} valid {kind} records"]
    if stats.skipped:
        lines.append(f"skipped {stats.skipped} invalid records:")
        lines += [f"  {n} x {reason}" for reason, n in stats.reasons.most_common()]
        lines.append("first ones:")
        lines += [f"  {msg}" for msg in stats.errors]
    lines += [f"empty file: {f}" for f in stats.empty_files]
    return "\n".join(lines)

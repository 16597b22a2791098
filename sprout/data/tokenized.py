"""Pre-tokenization into flat binary shards that training reads through `np.memmap`.

Layout written by `tokenize_pretrain(out_dir)`:
    meta.json   dtype, token/doc counts per split, source, skipped records, cache key
    train.bin   documents back to back, each followed by the tokenizer's document separator
                (`doc_sep_id`: <|endoftext|>, id 0, in sprout's tokenizers)
    val.bin     the same for the validation documents
Layout written by `tokenize_sft(out_dir)`:
    meta.json                 summary and cache key
    {train,val}/tokens.bin    conversations back to back (rendered with the chat template)
    {train,val}/mask.bin      uint8, 1 on tokens the assistant produces (the SFT targets)
    {train,val}/offsets.npy   int64 start of each conversation, plus the end of the last one
    {train,val}/meta.json     dtype and counts, read by `SFTDataset`

Token ids are uint16 when the vocabulary has fewer than 65536 entries, else uint32. A document goes
to validation when a seeded hash of its text falls below `val_fraction`: deterministic, independent
of file order, and the same document always lands in the same split.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sprout.data.readers import VALIDATORS, DataError, ReadStats, data_files, read_located, record_invalid

_BATCH_DOCS = 1024  # documents per encode_batch call
_FLUSH_TOKENS = 1 << 20  # write to disk every ~1M tokens so memory stays flat on big files
FORMAT_VERSION = 1  # bump when the on-disk layout changes, to invalidate caches


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's full definition (vocab, merges, specials)."""
    backend = getattr(tokenizer, "backend", None)
    if backend is not None and hasattr(backend, "to_str"):
        text = backend.to_str() + (getattr(tokenizer, "chat_template", None) or "")  # a new template re-renders
    else:  # stand-ins without a `tokenizers` backend: fall back to observable behaviour
        text = f"{type(tokenizer).__name__}:{tokenizer.vocab_size}:{tokenizer.encode('sprout 保险 fingerprint')}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _source_fingerprint(source: Any) -> tuple[str | None, str]:
    """(cache-key material or None when the source cannot be fingerprinted, human description)."""
    if isinstance(source, (str, Path)):
        files = data_files(source)
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest(), f"{source} ({len(files)} file{'s' if len(files) != 1 else ''})"
    if isinstance(source, (list, tuple)):
        h = hashlib.sha256()
        for r in source:
            h.update(json.dumps(r, ensure_ascii=False, sort_keys=True).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest(), f"{len(source)} in-memory records"
    return None, "a stream of records"  # a generator: cannot hash without consuming it


def _cache_key(source: Any, tokenizer: Any, params: dict[str, Any]) -> tuple[str | None, str]:
    src, desc = _source_fingerprint(source)
    if src is None:
        return None, desc
    blob = json.dumps(
        {"v": FORMAT_VERSION, "src": src, "tok": tokenizer_fingerprint(tokenizer), **params}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24], desc


def _load_cached(out_dir: Path, key: str | None) -> dict | None:
    meta_path = out_dir / "meta.json"
    if key is None or not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("cache_key") != key or not all((out_dir / f).exists() for f in meta.get("files", [])):
        return None
    meta["cached"] = True
    return meta


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def is_val(key: str, seed: int, val_fraction: float) -> bool:
    """Seeded hash of a document -> uniform in [0, 1); below `val_fraction` means validation."""
    if val_fraction <= 0:
        return False
    h = hashlib.blake2b(key.encode("utf-8"), digest_size=8, key=str(seed).encode()).digest()
    return int.from_bytes(h, "little") / 2**64 < val_fraction


class _SplitWriter:
    """Appends documents (token ids and optionally a mask) to binary files in chunks."""

    def __init__(self, tokens_path: Path, dtype: np.dtype, mask_path: Path | None = None) -> None:
        self.tokens_path, self.mask_path, self.dtype = tokens_path, mask_path, dtype
        tokens_path.parent.mkdir(parents=True, exist_ok=True)
        self._tok_f = open(tokens_path, "wb")
        self._mask_f = open(mask_path, "wb") if mask_path else None
        self._buf: list[np.ndarray] = []
        self._mbuf: list[np.ndarray] = []
        self._buffered = 0
        self.offsets = [0]  # start of each document, then the total

    @property
    def docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def tokens(self) -> int:
        return self.offsets[-1]

    def append(self, ids: np.ndarray, mask: np.ndarray | None = None) -> None:
        self._buf.append(ids.astype(self.dtype, copy=False))
        if self._mask_f is not None:
            if mask is None:
                raise ValueError("this writer stores a loss mask: append(ids, mask) needs the mask")
            self._mbuf.append(mask.astype(np.uint8, copy=False))
        self._buffered += len(ids)
        self.offsets.append(self.offsets[-1] + len(ids))
        if self._buffered >= _FLUSH_TOKENS:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._tok_f.write(np.concatenate(self._buf).tobytes())
            if self._mask_f is not None:
                self._mask_f.write(np.concatenate(self._mbuf).tobytes())
        self._buf, self._mbuf, self._buffered = [], [], 0

    def pop_last(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Remove the last document (used to give a tiny dataset at least one validation document)."""
        self.flush()
        start, end = self.offsets[-2], self.offsets[-1]
        self.offsets.pop()
        self._tok_f.flush()
        ids = np.fromfile(self.tokens_path, dtype=self.dtype, count=end - start, offset=start * self.dtype.itemsize)
        self._tok_f.truncate(start * self.dtype.itemsize)
        self._tok_f.seek(start * self.dtype.itemsize)
        mask = None
        if self._mask_f is not None and self.mask_path is not None:  # both or neither
            self._mask_f.flush()
            mask = np.fromfile(self.mask_path, dtype=np.uint8, count=end - start, offset=start)
            self._mask_f.truncate(start)
            self._mask_f.seek(start)
        return ids, mask

    def close(self) -> None:
        self.flush()
        self._tok_f.close()
        if self._mask_f is not None:
            self._mask_f.close()


def _ensure_val(train: _SplitWriter, val: _SplitWriter, val_fraction: float) -> None:
    # Hash-based selection can pick nothing from a very small dataset; validation then needs one doc.
    if val_fraction > 0 and val.docs == 0 and train.docs >= 2:
        val.append(*train.pop_last())


def _iter_pretrain_texts(source: Any, skip_invalid: bool, stats: ReadStats) -> Iterator[str]:
    if isinstance(source, (str, Path)):
        for _, _, rec in read_located(source, "pretrain", skip_invalid, stats):
            yield rec["text"]
        return
    for i, rec in enumerate(source):
        text = rec if isinstance(rec, str) else rec.get("text") if isinstance(rec, dict) else None
        if isinstance(text, str) and text.strip():
            stats.read += 1
            yield text
        else:
            record_invalid(DataError("<records>", i + 1, "missing or empty 'text'"), skip_invalid, stats)


def _batched(it: Iterable[Any], n: int) -> Iterator[list[Any]]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _encoder(tokenizer: Any) -> Callable[[list[str]], list[list[int]]]:
    # The Rust batch encoder runs on all cores; one Python call per document is several times slower.
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode_batch
    return lambda texts: [tokenizer.encode(t) for t in texts]


def tokenize_pretrain(
    source: str | Path | Iterable[dict | str],
    tokenizer: Any,
    out_dir: str | Path,
    val_fraction: float = 0.02,
    seed: int = 0,
    skip_invalid: bool = False,
) -> dict[str, Any]:
    """Tokenize pretraining text (a file/folder, or records `{"text"}` / strings) into train.bin and
    val.bin under `out_dir`; returns the meta dict. Reuses existing shards when the cache key matches."""
    out = Path(out_dir)
    key, desc = _cache_key(
        source, tokenizer, {"kind": "pretrain", "val": val_fraction, "seed": seed, "skip": skip_invalid}
    )
    cached = _load_cached(out, key)
    if cached:
        return cached
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # a crash mid-way must not leave a reusable cache
    dtype = token_dtype(tokenizer.vocab_size)
    train, val = _SplitWriter(out / "train.bin", dtype), _SplitWriter(out / "val.bin", dtype)
    stats = ReadStats()
    encode = _encoder(tokenizer)
    chars = 0
    sep = tokenizer.doc_sep_id
    t0 = time.perf_counter()
    for texts in _batched(_iter_pretrain_texts(source, skip_invalid, stats), _BATCH_DOCS):
        for text, ids in zip(texts, encode(texts)):
            chars += len(text)
            doc = np.empty(len(ids) + 1, dtype=dtype)
            doc[:-1] = ids
            doc[-1] = sep
            (val if is_val(text, seed, val_fraction) else train).append(doc)
    _ensure_val(train, val, val_fraction)
    train.close()
    val.close()
    seconds = time.perf_counter() - t0
    if train.tokens == 0:
        raise DataError(
            desc,
            None,
            "no usable pretraining documents",
            'give records like {"text": "..."}, one per line (see docs/data.md)',
        )
    meta = {
        "kind": "pretrain",
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "separator_id": sep,
        "train": {"tokens": train.tokens, "docs": train.docs},
        "val": {"tokens": val.tokens, "docs": val.docs},
        "source": desc,
        "read": stats.read,
        "skipped": stats.skipped,
        "skipped_examples": stats.errors,
        "skipped_reasons": dict(stats.reasons),
        "empty_files": stats.empty_files,
        "chars": chars,
        "seconds": round(seconds, 3),
        "chars_per_s": round(chars / max(seconds, 1e-9)),
        "val_fraction": val_fraction,
        "seed": seed,
        "cache_key": key,
        "files": ["train.bin", "val.bin"],
        "cached": False,
    }
    _write_json(out / "meta.json", meta)
    return meta


def describe_meta(meta: dict[str, Any]) -> str:
    """One line for the training log: what was read, and every record that will not be trained on."""
    unit = "documents" if meta["kind"] == "pretrain" else "conversations"
    parts = [
        f"data: {meta['read']:,} records read, {meta['train'].get('docs', meta['train'].get('conversations'))}"
        f" train / {meta['val'].get('docs', meta['val'].get('conversations'))} val {unit}"
    ]
    if meta.get("skipped"):
        reasons = ", ".join(
            f"{n} x {r}" for r, n in sorted(meta.get("skipped_reasons", {}).items(), key=lambda kv: -kv[1])
        )
        parts.append(f"{meta['skipped']} invalid skipped ({reasons})")
    if meta.get("truncated"):
        parts.append(f"{meta['truncated']} cut to seq_len={meta['seq_len']}")
    if meta.get("dropped"):
        parts.append(
            f"{meta['dropped']} dropped: no assistant token left within seq_len={meta['seq_len']} "
            "(raise seq_len to keep them)"
        )
    if meta.get("empty_files"):
        parts.append(f"{len(meta['empty_files'])} empty file(s)")
    return "; ".join(parts)


def _count_ones(path: Path) -> int:
    # memmap: the OS pages the file through, so a multi-GB mask never sits in memory at once.
    return int(np.memmap(path, dtype=np.uint8, mode="r").sum(dtype=np.int64))


def _iter_sft_records(source: Any, kind: str, skip_invalid: bool, stats: ReadStats) -> Iterator[tuple[str, int, dict]]:
    if isinstance(source, (str, Path)):
        for f, line, rec in read_located(source, kind, skip_invalid, stats):
            yield str(f), line, rec
        return
    check = VALIDATORS[kind]
    for i, rec in enumerate(source):
        problem = check(rec) if isinstance(rec, dict) else "a record must be a dict"
        if problem:
            record_invalid(DataError("<records>", i + 1, problem), skip_invalid, stats)
            continue
        stats.read += 1
        yield "<records>", i + 1, rec


def tokenize_sft(
    source: str | Path | Iterable[dict],
    tokenizer: Any,
    out_dir: str | Path,
    seq_len: int,
    val_fraction: float = 0.02,
    seed: int = 0,
    skip_invalid: bool = False,
    kind: str = "sft",
) -> dict[str, Any]:
    """Render each conversation with the chat template and write tokens + assistant mask per split.

    Conversations longer than `seq_len` are cut to `seq_len` tokens (counted in `truncated`);
    ones left without any assistant token after the cut are dropped (counted in `dropped`).
    """
    from sprout.tokenizer import normalize_record

    out = Path(out_dir)
    key, desc = _cache_key(
        source, tokenizer, {"kind": kind, "seq_len": seq_len, "val": val_fraction, "seed": seed, "skip": skip_invalid}
    )
    cached = _load_cached(out, key)
    if cached:
        return cached
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: _SplitWriter(out / s / "tokens.bin", dtype, out / s / "mask.bin") for s in ("train", "val")}
    stats = ReadStats()
    truncated = dropped = 0
    t0 = time.perf_counter()
    for where, line, rec in _iter_sft_records(source, kind, skip_invalid, stats):
        try:
            messages, tools = normalize_record(rec)
            ids, mask = tokenizer.encode_chat(messages, tools)
        except (ValueError, KeyError, TypeError) as e:
            record_invalid(DataError(where, line, str(e)), skip_invalid, stats)
            continue
        if len(ids) > seq_len:
            truncated += 1
            ids, mask = ids[:seq_len], mask[:seq_len]
        # Position 0 is never a target (labels are the *next* token), so a mask only there trains nothing.
        if not any(mask[1:]):
            dropped += 1
            continue
        split = "val" if is_val(json.dumps(rec, ensure_ascii=False, sort_keys=True), seed, val_fraction) else "train"
        writers[split].append(np.asarray(ids, dtype=dtype), np.asarray(mask, dtype=np.uint8))
    _ensure_val(writers["train"], writers["val"], val_fraction)
    summary: dict[str, Any] = {}
    for split, w in writers.items():
        w.close()
        np.save(out / split / "offsets.npy", np.asarray(w.offsets, dtype=np.int64))
        split_meta = {
            "dtype": dtype.name,
            "tokens": w.tokens,
            "conversations": w.docs,
            "target_tokens": _count_ones(w.mask_path) if w.tokens and w.mask_path else 0,
            "seq_len": seq_len,
            "pad_id": tokenizer.pad_id,
        }
        _write_json(out / split / "meta.json", split_meta)
        summary[split] = split_meta
    if summary["train"]["conversations"] == 0:
        raise DataError(
            desc,
            None,
            "no usable conversations (each needs an assistant turn within seq_len)",
            "raise seq_len, or check the data (see docs/data.md)",
        )
    seconds = time.perf_counter() - t0
    meta = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "seq_len": seq_len,
        "train": summary["train"],
        "val": summary["val"],
        "truncated": truncated,
        "dropped": dropped,
        "source": desc,
        "read": stats.read,
        "skipped": stats.skipped,
        "skipped_examples": stats.errors,
        "skipped_reasons": dict(stats.reasons),
        "empty_files": stats.empty_files,
        "seconds": round(seconds, 3),
        "val_fraction": val_fraction,
        "seed": seed,
        "cache_key": key,
        "files": [f"{s}/{n}" for s in ("train", "val") for n in ("tokens.bin", "mask.bin", "offsets.npy", "meta.json")],
        "cached": False,
    }
    _write_json(out / "meta.json", meta)
    return meta

"""Map-style datasets over the shards written by `sprout.data.tokenized`.

Every item is a dict of int64 tensors of the same length T, so a batch is a plain stack.
Labels are already shifted: `labels[t]` is the target for position t, -100 where there is none.
"""

from __future__ import annotations

import json
from bisect import bisect_left, insort
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100


def _meta(folder: Path) -> dict:
    path = folder / "meta.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: tokenize the data first (sprout.data.tokenized)")
    return json.loads(path.read_text(encoding="utf-8"))


class PretrainDataset(Dataset):
    """Non-overlapping windows over the concatenated token stream.

    Item i covers tokens [i*T, i*T + T + 1): `input_ids` = window[:-1], `labels` = window[1:].
    Documents are packed back to back with their `<|endoftext|>` separators, so there is no padding;
    a window may span several documents (the model learns to start afresh after a separator).
    """

    def __init__(self, bin_path: str | Path, seq_len: int, dtype: str | None = None) -> None:
        self.path = Path(bin_path)
        self.seq_len = seq_len
        self.dtype = np.dtype(dtype or _meta(self.path.parent)["dtype"])
        self.n_tokens = self.path.stat().st_size // self.dtype.itemsize
        self._data: np.memmap | None = None
        if len(self) == 0:
            raise ValueError(f"{self.path} holds {self.n_tokens} tokens, too few for one window of {seq_len}+1")

    def __len__(self) -> int:
        return max(0, (self.n_tokens - 1) // self.seq_len)

    def _tokens(self) -> np.memmap:
        # Opened lazily so each DataLoader worker maps the file itself instead of pickling an array.
        if self._data is None:
            self._data = np.memmap(self.path, dtype=self.dtype, mode="r")
        return self._data

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_data": None}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.seq_len
        window = torch.from_numpy(self._tokens()[start : start + self.seq_len + 1].astype(np.int64))
        return {"input_ids": window[:-1], "labels": window[1:]}


def pack_best_fit(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: longest first, each into the fullest row it still fits.

    Rows are grouped by their free space (at most `capacity` distinct values), so finding the best row
    is a bisect over a short sorted list: O(n log capacity) overall, fine for millions of conversations.
    Deterministic: ties are broken by index.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    rows: list[list[int]] = []
    by_free: dict[int, list[int]] = {}  # free space -> rows with exactly that much room
    frees: list[int] = []  # sorted free-space values that have rows
    for i in order.tolist():
        n = int(lengths[i])
        k = bisect_left(frees, n)
        if k < len(frees):
            free = frees[k]
            row = by_free[free].pop()
            if not by_free[free]:
                del frees[k]
        else:
            row, free = len(rows), capacity
            rows.append([])
        rows[row].append(i)
        left = free - n
        if left > 0:
            bucket = by_free.setdefault(left, [])
            if not bucket:
                insort(frees, left)
            bucket.append(row)
    return rows


class SFTDataset(Dataset):
    """Conversations from `tokenize_sft`, as rows of exactly T tokens.

    pack=True: conversations are packed into rows with `pack_best_fit`; `position_ids` restart at 0 for
    each conversation and `doc_ids` number the conversations of a row (padding at the end gets its
    own id), so with `model(..., position_ids, doc_ids)` each conversation sees only itself.
    pack=False: one conversation per row, right-padded with the pad id.
    Labels: the next token where that token is an assistant token, else -100 (also across a
    conversation boundary and in padding).
    """

    def __init__(self, token_dir: str | Path, seq_len: int, pack: bool = True) -> None:
        self.dir = Path(token_dir)
        meta = _meta(self.dir)
        self.dtype = np.dtype(meta["dtype"])
        self.pad_id = int(meta.get("pad_id", 0))
        self.seq_len, self.pack = seq_len, pack
        self.offsets = np.load(self.dir / "offsets.npy")
        # Shards tokenized for a longer seq_len are cut here, the same way tokenize_sft cuts.
        self.lengths = np.minimum(np.diff(self.offsets), seq_len)
        if len(self.lengths) == 0:
            raise ValueError(f"{self.dir} holds no conversations")
        if pack:
            rows = pack_best_fit(self.lengths, seq_len)
            self.row_ptr = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
            self.row_convs = np.fromiter((c for r in rows for c in r), dtype=np.int64, count=int(self.row_ptr[-1]))
        else:
            self.row_ptr = np.arange(len(self.lengths) + 1, dtype=np.int64)
            self.row_convs = np.arange(len(self.lengths), dtype=np.int64)
        self._tok: np.memmap | None = None
        self._mask: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.row_ptr) - 1

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tok": None, "_mask": None}

    def stats(self) -> dict[str, float]:
        """Rows (= sequences per epoch) and the fraction of row tokens that are padding."""
        used = int(self.lengths.sum())
        total = len(self) * self.seq_len
        return {"rows": len(self), "conversations": len(self.lengths), "tokens": used, "pad_fraction": 1 - used / total}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._tok is None or self._mask is None:  # opened together, lazily (per DataLoader worker)
            self._tok = np.memmap(self.dir / "tokens.bin", dtype=self.dtype, mode="r")
            self._mask = np.memmap(self.dir / "mask.bin", dtype=np.uint8, mode="r")
        T = self.seq_len
        convs = self.row_convs[self.row_ptr[i] : self.row_ptr[i + 1]]
        ids = np.full(T, self.pad_id, dtype=np.int64)
        labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
        pos = np.zeros(T, dtype=np.int64)
        doc = np.full(T, len(convs), dtype=np.int64)  # padding: an id of its own
        at = 0
        for j, c in enumerate(convs.tolist()):
            start, n = int(self.offsets[c]), int(self.lengths[c])
            tok = self._tok[start : start + n].astype(np.int64)
            target = self._mask[start + 1 : start + n].astype(bool)
            ids[at : at + n] = tok
            # labels[t] = tok[t+1] when tok[t+1] is an assistant token; the conversation's last
            # position has no next token inside the conversation, so it stays -100.
            labels[at : at + n - 1] = np.where(target, tok[1:], IGNORE_INDEX)
            pos[at : at + n] = np.arange(n)
            doc[at : at + n] = j
            at += n
        pos[at:] = np.arange(T - at)
        return {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos),
            "doc_ids": torch.from_numpy(doc),
        }

"""Atomic training checkpoints for exact resume.

    out/checkpoints/step_0000500/
        model.safetensors   weights (safetensors: loading runs no code)
        optimizer.pt        AdamW state (tensors + plain containers)
        trainer_state.pt    step, tokens, elapsed time, sampler cursor, scaler, RNG states, cfg
        deepspeed/          distributed=deepspeed only: DeepSpeed's per-rank ZeRO partitions
    out/checkpoints/latest  text file naming the newest complete checkpoint directory
    out/checkpoints/best    text file: the checkpoint with the lowest validation loss, and that loss

A checkpoint is written into a temporary directory, flushed to disk, then renamed into place
with os.replace; `latest` is updated the same way afterwards. A crash at any moment therefore
leaves `latest` pointing at a complete checkpoint. A failed write (disk full, no permission)
removes its temporary directory and reports the checkpoint that is still good; old checkpoints
are pruned only after the new one is complete, keeping the newest `keep` plus the best.
Everything is read back with `torch.load(weights_only=True)`, so the Python RNG state is stored
as plain lists and a crafted pickle cannot run code.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model as load_safetensors_model
from safetensors.torch import save_model as save_safetensors_model
from torch import nn

from ..errors import UserError, describe

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.pt"
LATEST = "latest"
BEST = "best"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# ---- RNG state in a weights_only-loadable form --------------------------------------------
def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [
            np_name,
            torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            int(np_pos),
            int(np_has_gauss),
            float(np_gauss),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, g = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, g))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- writing ----------------------------------------------------------------------------------
def _fsync_path(path: Path) -> None:
    """Flush a file (or a directory entry list) to disk; some platforms cannot open directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_path(path.parent)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under root, oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _write_dir(
    tmp: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], staged: dict[str, Path]
) -> None:
    tmp.mkdir()
    save_safetensors_model(model, str(tmp / MODEL_FILE))  # de-duplicates tied weights
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    torch.save(state, tmp / STATE_FILE)
    for name, folder in staged.items():
        os.replace(folder, tmp / name)
        for f in (tmp / name).rglob("*"):
            _fsync_path(f)
    for f in tmp.iterdir():
        _fsync_path(f)
    _fsync_path(tmp)


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
    staged: dict[str, Path] | None = None,
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep` plus the best.
    `staged` folders (name -> folder already written, e.g. DeepSpeed's shards) move into it before it is renamed.

    An OSError (disk full, permission denied) leaves every existing checkpoint as it was and is
    raised as a UserError that names the last good checkpoint.
    """
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not final.exists():  # the same step saved twice (save_every hit at the end) is the same state
            shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crash during an earlier save
            _write_dir(tmp, model, optimizer, state, staged or {})
            os.replace(tmp, final)
            _fsync_path(root)
        for folder in (staged or {}).values():
            shutil.rmtree(folder, ignore_errors=True)  # not moved: this step was on disk already
        _write_text_atomic(root / LATEST, final.name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in (staged or {}).values():
            shutil.rmtree(folder, ignore_errors=True)
        good = latest_checkpoint(root)
        raise UserError(
            f"could not write checkpoint {final.name}: {describe(e) or e}",
            advice=f"the last good checkpoint is {good}, untouched; resume from it with --resume"
            if good
            else "no checkpoint was written yet",
        ) from e
    best = best_checkpoint(root)
    for old in list_checkpoints(root)[:-keep]:
        if old != best:
            shutil.rmtree(old, ignore_errors=True)
    return final


def mark_best(root: Path, step: int, val_loss: float) -> bool:
    """Record checkpoint `step` as the best if its val_loss is the lowest so far; True if it is."""
    path = root / step_dir_name(step)
    if not (path / STATE_FILE).exists() or math.isnan(val_loss):  # no such checkpoint, or no loss to compare
        return False
    pointer = root / BEST
    if pointer.exists():
        name, _, loss = pointer.read_text(encoding="utf-8").partition(" ")
        if (root / name).is_dir() and float(loss) <= val_loss:
            return False
    _write_text_atomic(pointer, f"{path.name} {val_loss!r}\n")
    return True


def best_checkpoint(root: Path) -> Path | None:
    pointer = root / BEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text(encoding="utf-8").split(" ")[0]
    return path if path.is_dir() else None


# ---- reading ----------------------------------------------------------------------------------
def latest_checkpoint(root: Path) -> Path | None:
    """The directory `latest` names, falling back to the newest complete one if `latest` is missing."""
    pointer = root / LATEST
    if pointer.exists():
        path = root / pointer.read_text(encoding="utf-8").strip()
        if (path / STATE_FILE).exists():
            return path
    dirs = list_checkpoints(root)
    return dirs[-1] if dirs else None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer in place; return the trainer state (RNG not yet applied)."""
    for name in (MODEL_FILE, OPTIMIZER_FILE, STATE_FILE):
        if not (path / name).exists():
            raise SystemExit(f"checkpoint {path} is incomplete: {name} is missing")
    device = next(model.parameters()).device
    missing, unexpected = load_safetensors_model(model, str(path / MODEL_FILE), strict=False, device=str(device))
    if missing or unexpected:
        raise SystemExit(
            f"checkpoint {path} does not fit this model (missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}); was it written with a different preset or stage?"
        )
    osd = _load_plain(path / OPTIMIZER_FILE, device)
    refuse_deepspeed(path, osd)
    optimizer.load_state_dict(osd)
    return _load_plain(path / STATE_FILE, "cpu")


def refuse_deepspeed(path: Path, optimizer_state: dict[str, Any]) -> None:
    """A distributed=deepspeed checkpoint keeps its optimizer state in DeepSpeed's shards, not optimizer.pt."""
    if "deepspeed" in optimizer_state:
        raise SystemExit(
            f"checkpoint {path} was written with distributed=deepspeed; resume it the same way "
            f"(or start a new run from its weights with --model)"
        )


def saved_config(path: Path) -> dict[str, Any]:
    """The TrainConfig (as a dict) a checkpoint was written with."""
    return _load_plain(path / STATE_FILE, "cpu")["config"]


def _load_plain(file: Path, device: torch.device | str) -> Any:
    """torch.load restricted to tensors and plain containers: a crafted pickle is refused, never run."""
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; the line naming the refused object is the one that matters.
        lines = [x for x in str(e).splitlines() if "GLOBAL" in x] or [str(e).splitlines()[0]]
        raise UserError(
            f"refusing to load: it holds Python objects other than tensors and plain data ({lines[0].strip()})",
            file=file,
            advice="sprout only reads checkpoints it wrote itself; delete this one or start fresh",
        ) from None

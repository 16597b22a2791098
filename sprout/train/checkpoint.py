"""Atomic training checkpoints for exact resume.

    out/checkpoints/step_0000500/
        model.safetensors   weights (safetensors: loading runs no code)
        optimizer.pt        AdamW state (tensors + plain containers)
        trainer_state.pt    step, tokens, elapsed time, sampler cursor, scaler, RNG states, cfg
    out/checkpoints/latest  text file naming the newest complete checkpoint directory

A checkpoint is written into a temporary directory, flushed to disk, then renamed into place
with os.replace; `latest` is updated the same way afterwards. A crash at any moment therefore
leaves `latest` pointing at a complete checkpoint. Everything is read back with
`torch.load(weights_only=True)`, so the Python RNG state is stored as plain lists.
"""
from __future__ import annotations

import os
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

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.pt"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


# ---- RNG state in a weights_only-loadable form --------------------------------------------
def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
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


def save_checkpoint(
    root: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep only the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    if not final.exists():  # the same step saved twice (save_every hit at the end) is the same state
        tmp = root / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crash during an earlier save
        tmp.mkdir()
        save_safetensors_model(model, str(tmp / MODEL_FILE))  # de-duplicates tied weights
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        torch.save(state, tmp / STATE_FILE)
        for f in tmp.iterdir():
            _fsync_path(f)
        _fsync_path(tmp)
        os.replace(tmp, final)
        _fsync_path(root)
    _write_text_atomic(root / LATEST, final.name + "\n")
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True))
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)

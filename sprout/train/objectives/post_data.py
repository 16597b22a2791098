"""Shared helper: resolve cfg.data or write a built-in post-training set beside the run."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def post_data_source(cfg: Any, name: str, **kw: Any) -> str:
    """cfg.data if given, else the built-in set `name` (sprout.data.builtin_post) written once under cfg.out/data."""
    if cfg.data:
        return cfg.data
    from ...data.builtin_post import write_post_builtin

    path = Path(cfg.out) / "data" / f"builtin-{name}.jsonl"
    if not path.exists():
        write_post_builtin(name, path, **kw)
    return str(path)

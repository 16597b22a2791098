"""Training: one engine (`train`) and pluggable objectives, one per stage.

Names resolve on first use (PEP 562), so `import sprout.train.stages` (the CLI's stage list) stays torch-free.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": ".engine",
    "OBJECTIVES": ".objectives",
    "Objective": ".objectives",
    "build_objective": ".objectives",
    "get_objective": ".objectives",
    "register": ".objectives",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)

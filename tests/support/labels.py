"""Small helpers shared by the label tests."""

from __future__ import annotations

from typing import Any

import numpy as np


def supervised_runs(tokenizer: Any, ids: np.ndarray, mask: np.ndarray) -> list[str]:
    """Decoded text of each contiguous run of True in ``mask``."""
    runs, current = [], []
    for tid, on in zip(ids.tolist(), mask.tolist(), strict=False):
        if on:
            current.append(tid)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(r) for r in runs]

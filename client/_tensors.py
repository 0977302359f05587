"""Decoded batches to torch tensors without copying the buffers (torch is the trainer's, imported lazily);
ragged token rows (``proto._ragged``) are padded first."""

from __future__ import annotations

from typing import Any

import numpy as np

from feedline.proto._codec import DecodedBatch
from feedline.proto._ragged import expand

__all__ = ["to_torch"]


def to_torch(batch: DecodedBatch, *, pin_memory: bool = False) -> dict[str, Any]:
    """Each array as a torch tensor sharing its memory; bfloat16 bits become torch.bfloat16."""
    import torch

    batch = expand(batch)
    out: dict[str, Any] = {}
    for name, arr in batch.tensors.items():
        if batch.dtypes.get(name) == "bfloat16":
            tensor = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(arr)
        out[name] = tensor.pin_memory() if pin_memory else tensor
    return out

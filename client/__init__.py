"""The feedline client: a drop-in for DataLoader that streams tensor batches from the service.

Imports neither transformers nor fastapi; torch is imported only when tensors are built.
"""

from __future__ import annotations

from feedline.proto import FeedlineError, FingerprintMismatch, ResumeStateError, ServiceUnavailable

from ._collate import RemoteCollate
from ._loader import DatasetPlan, RemoteLoader
from ._masks import block_causal_mask, document_ids_from_cu_seqlens
from ._policy import RetryPolicy
from ._reports import BatchReport

__all__ = [
    "BatchReport",
    "DatasetPlan",
    "FeedlineError",
    "FingerprintMismatch",
    "RemoteCollate",
    "RemoteLoader",
    "ResumeStateError",
    "RetryPolicy",
    "ServiceUnavailable",
    "block_causal_mask",
    "document_ids_from_cu_seqlens",
]
assert sorted(__all__) == __all__

for _name in ("BatchReport", "RemoteCollate", "RemoteLoader", "DatasetPlan", "RetryPolicy"):
    globals()[_name].__module__ = "feedline.client"

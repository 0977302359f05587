"""Client-side helpers shared by the client and fault tests."""

from __future__ import annotations

from typing import Any

from feedline.client import RemoteLoader, RetryPolicy

FAST_RETRY = RetryPolicy(attempts=8, initial_backoff=0.05, max_backoff=0.5, timeout=60)


def dataset_loader(target: str | list[str], **kw: Any) -> RemoteLoader:
    return RemoteLoader(target, "qwen2.5", dataset="train.jsonl", retry=FAST_RETRY, **kw)


def batch_blobs(loader: RemoteLoader, on_batch: Any = None) -> list[bytes]:
    out = []
    for i, batch in enumerate(loader):
        out.append(b"".join(batch[k].numpy().tobytes() for k in sorted(batch)))
        if on_batch:
            on_batch(i)
    return out

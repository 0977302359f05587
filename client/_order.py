"""Samples mode's order: exactly what ``DataLoader(samples, sampler=DistributedSampler(...))`` yields to a rank.

A sized ``samples`` (``len()`` and ``[i]``: a list, a torch map-style Dataset, an HF ``datasets.Dataset``) is
ordered per epoch by ``torch.randperm`` seeded with ``seed + epoch`` (the generator DistributedSampler uses, so
the orders are identical), padded by repeating its start to a multiple of ``world_size`` (or cut to one with
``drop_last``), dealt ``rank::world_size``, and batched (the last, short batch dropped with ``drop_last``).
Every rank gets the same number of batches, and each sample is seen once per epoch across ranks (plus the
few repeated to pad, as DistributedSampler does). Any other iterable is read once per epoch, in its order,
on one rank: shuffling and sharding it are the iterable's own job, as for a torch IterableDataset.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from feedline.proto import InvalidOptions
from feedline.proto._plan import DatasetPlan

__all__ = ["SampleSource", "is_sized", "rank_indices"]

_FINGERPRINT_PROBES = 64
"""Rows hashed (evenly spread, plus the length) for a sized source's fingerprint: cheap, and a rewrite that
changes the length or any probed row is caught on resume."""


def rank_indices(num_samples: int, plan: DatasetPlan, epoch: int) -> list[int]:
    """The sample indices ``plan.rank`` sees in ``epoch``, in order (DistributedSampler's, element for element)."""
    import torch  # the trainer's own; the same generator as torch.utils.data.DistributedSampler

    if plan.shuffle:
        generator = torch.Generator()
        generator.manual_seed(plan.seed + epoch)
        order: list[int] = torch.randperm(num_samples, generator=generator).tolist()
    else:
        order = list(range(num_samples))
    world = plan.world_size
    if plan.drop_last:
        total = num_samples // world * world
        order = order[:total]
    else:
        total = -(-num_samples // world) * world
        while order and len(order) < total:
            order += order[: total - len(order)]
    return order[plan.rank : total : world]


def is_sized(samples: Any) -> bool:
    """Whether ``samples`` can be ordered like a map-style Dataset (``len()`` and ``[i]``)."""
    return (
        hasattr(samples, "__len__")
        and hasattr(samples, "__getitem__")
        and not isinstance(samples, (str, bytes, Mapping))
    )


class SampleSource:
    """The rows of samples mode, batch by batch, for one rank and epoch; refuses what it cannot do faithfully."""

    def __init__(self, samples: Iterable[Mapping[str, Any]], plan: DatasetPlan, *, shuffle_given: bool) -> None:
        self.samples, self.plan = samples, plan
        self.sized = is_sized(samples)
        self.one_shot = not self.sized and iter(samples) is samples  # a generator or other iterator
        self._used = False
        self._batches: tuple[int, list[list[int]]] | None = None  # (epoch, its batches), computed once per epoch
        if not self.sized and plan.world_size > 1:
            raise InvalidOptions(
                "world_size > 1 shards samples= like a DistributedSampler, which needs len() and [i] (a list or "
                "a map-style Dataset); shard an iterable yourself and pass world_size=1, or use dataset=",
                field="samples",
            )
        if not self.sized and plan.shuffle and shuffle_given:
            raise InvalidOptions(
                "shuffle=True needs samples with len() and [i] (a list or a map-style Dataset); "
                "an iterable is read in its own order, as a DataLoader reads an IterableDataset",
                field="shuffle",
            )

    def fingerprint(self) -> str:
        """A cheap identity of a sized source (its length and a spread of rows); "" for other iterables."""
        if not self.sized:
            return ""
        n = len(self.samples)  # type: ignore[arg-type]
        probes = sorted({i * n // _FINGERPRINT_PROBES for i in range(_FINGERPRINT_PROBES)} - {n}) if n else []
        digest = hashlib.sha256(str(n).encode())
        for i in probes:
            digest.update(json.dumps(self.samples[i], sort_keys=True, default=repr).encode())  # type: ignore[index]
        return f"samples:{n}:{digest.hexdigest()[:32]}"

    def batch_rows(self, epoch: int) -> list[list[int]] | None:
        """This rank's batches of sample indices in ``epoch`` (None for an unsized iterable)."""
        if not self.sized:
            return None
        if self._batches is None or self._batches[0] != epoch:
            indices = rank_indices(len(self.samples), self.plan, epoch)  # type: ignore[arg-type]
            size = self.plan.batch_size
            batches = [indices[i : i + size] for i in range(0, len(indices), size)]
            if self.plan.drop_last and batches and len(batches[-1]) < size:
                batches.pop()
            self._batches = (epoch, batches)
        return self._batches[1]

    def chunks(self, epoch: int, start: int) -> Iterator[tuple[int, Sequence[Mapping[str, Any]]]]:
        """``(batch index, rows)`` of ``epoch`` from batch ``start`` on (a resume skips the delivered ones)."""
        if self.one_shot and self._used:
            raise InvalidOptions(
                "samples= is a one-shot iterator (a generator?) that an earlier iteration already consumed, so this "
                "epoch would have no batches; pass a list, a Dataset, or an object whose __iter__ starts over",
                field="samples",
            )
        self._used = True
        batches = self.batch_rows(epoch)
        if batches is not None:
            rows = self.samples
            return ((i, [rows[j] for j in batches[i]]) for i in range(start, len(batches)))  # type: ignore[index]
        return self._iterable_chunks(start)

    def _iterable_chunks(self, start: int) -> Iterator[tuple[int, Sequence[Mapping[str, Any]]]]:
        rows, size, index = iter(self.samples), self.plan.batch_size, 0
        while True:
            chunk = list(itertools.islice(rows, size))
            if not chunk or (self.plan.drop_last and len(chunk) < size):
                return
            if index >= start:
                yield index, chunk
            index += 1

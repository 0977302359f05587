"""RemoteLoader: replaces the DataLoader; batches stream from the service, resumable and exactly-once.

Two sources, one iterator shape:
- samples mode: rows from any iterable are sent in batches over a CollateStream (a bounded number in flight;
  a new call every ~30 s; a broken or stalled stream continues on another replica with its undelivered
  batches sent again under the same indices);
- dataset mode: the service reads a dataset every replica can see, and the client only sends a cursor;
  when a replica dies mid-stream the stream resumes on another from the next undelivered batch index.
Batches are named by index and computed deterministically, so a retry can neither lose nor repeat one.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import grpc

from feedline.proto import FeedlineError, FingerprintMismatch, InvalidOptions, ResumeStateError
from feedline.proto._codec import decode_batch
from feedline.proto._plan import DatasetPlan
from feedline.proto.v1 import feedline_pb2 as pb

from ._collate import RemoteCollate
from ._order import SampleSource, is_sized
from ._policy import RetryPolicy
from ._receiver import Receiver
from ._reports import BatchReport, ReportCounts, with_rows
from ._sources import dataset_blobs, sample_blobs
from ._tensors import to_torch

__all__ = ["DatasetPlan", "RemoteLoader"]

_STATE_VERSION = 2  # 2: samples mode ordered like a DistributedSampler, dataset fingerprints, report counts
Batches = Iterator[tuple[int, dict[str, Any], Mapping[str, Any]]]  # (batch index, tensors, batch metadata)
_DONE = object()


class RemoteLoader:
    """An iterable of torch tensor batches from feedline replicas.

    ``RemoteLoader(endpoints, "qwen2.5", samples=rows, batch_size=8)`` sends rows;
    ``RemoteLoader(endpoints, "qwen2.5", dataset="train.jsonl", batch_size=8, rank=r, world_size=w)`` names a
    dataset under the servers' data roots (a file, a directory or glob of shards, a saved HF dataset, or an
    object-store URL the servers allow); ``dataset=[{"path": "a.jsonl", "weight": 0.7}, {"path": "b/*.parquet",
    "weight": 0.3}]`` mixes several (or ``"repeat": passes`` per dataset instead of weights), and each batch
    then carries ``dataset_index`` and ``dataset_row`` per sample. ``state_dict()`` is a few integers plus the plan;
    ``load_state_dict()`` makes the next ``iter()`` continue where the saved run stopped.

    Samples mode works like ``DataLoader(samples, batch_size, sampler=DistributedSampler(samples, world_size,
    rank, shuffle, seed, drop_last), drop_last=drop_last)`` with ``set_epoch``: for a sized ``samples`` (``len``
    and ``[i]``) the batches are exactly that DataLoader's (``shuffle`` defaults to True), and ``len(loader)``
    is the number of batches. Any other iterable is read in its own order on one rank (``shuffle`` defaults to
    False, as for an IterableDataset); a one-shot iterator (a generator) serves one iteration and then refuses.

    Reports: ``loader.last_report`` is the ``BatchReport`` of the batch just yielded (what happened to each of
    its rows), ``loader.report_counts`` the run's totals (batches, samples, truncated, dropped, skipped; kept in
    ``state_dict``), ``on_report(report)`` is called for every batch, and one warning is logged per iteration
    when any sample was truncated, dropped or skipped.

    With ``offload`` (the default on POSIX without a credentials object) a receiver process does the gRPC
    calls, failover and frame assembly, and hands finished batches over in shared memory: the trainer
    process only maps them, so its CPU stays with training. ``offload=False`` does that work on a thread of
    the trainer process instead. ``close()`` stops the receiver. ``ragged``: see ``RemoteCollate`` (text rows
    travel unpadded and are padded by the receiver, straight into shared memory).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        processor: str = "qwen2.5",
        *,
        samples: Iterable[Mapping[str, Any]] | None = None,
        dataset: str | Sequence[Mapping[str, Any]] | None = None,
        dataset_fingerprint: str = "",
        batch_size: int = 8,
        seed: int = 0,
        shuffle: bool | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 4,
        max_prefetch_bytes: int = 1 << 30,
        pin_memory: bool = False,
        offload: bool | None = None,
        fingerprint: str | None = None,
        retry: RetryPolicy | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        on_report: Callable[[BatchReport], None] | None = None,
        ragged: bool = True,
        **options: Any,
    ) -> None:
        if (samples is None) == (dataset is None):
            raise InvalidOptions("give exactly one of samples= or dataset=", field="samples")
        if prefetch < 1:
            raise InvalidOptions("must be >= 1", field="prefetch")
        self._remote = RemoteCollate(
            endpoints,
            processor,
            fingerprint=fingerprint,
            retry=retry,
            pin_memory=pin_memory,
            credentials=credentials,
            metadata=metadata,
            ragged=ragged,
            **options,
        )
        can_offload = os.name == "posix" and credentials is None
        if offload and not can_offload:
            raise InvalidOptions(
                "offload=True needs a POSIX system and no grpc credentials object (it cannot "
                "cross into the receiver process)",
                field="offload",
            )
        self.offload = can_offload if offload is None else offload
        self._receiver_process: Receiver | None = None
        self._closer: Any = lambda: None
        self.dataset: str | list[dict[str, Any]] | None = (
            dataset if dataset is None or isinstance(dataset, str) else [_mixture_part(p) for p in dataset]
        )
        self.dataset_fingerprint = dataset_fingerprint
        shuffle_given = shuffle is not None
        if shuffle is None:  # a DataLoader's sampler shuffles what it can index; an iterable keeps its order
            shuffle = dataset is not None or is_sized(samples)
        self.plan = DatasetPlan(
            seed=seed, shuffle=shuffle, batch_size=batch_size, drop_last=drop_last, rank=rank, world_size=world_size
        )
        self._source = SampleSource(samples, self.plan, shuffle_given=shuffle_given) if samples is not None else None
        self._counts = ReportCounts(on_report)
        self.last_report: BatchReport | None = None
        self._resumed_fingerprint = ""  # the dataset fingerprint a loaded state pinned (a mismatch: data changed)
        self.prefetch = prefetch
        self.max_prefetch_bytes = max_prefetch_bytes
        self.epoch = 0
        self._delivered = 0  # batches handed to the trainer in the current epoch
        self._start = 0  # where the next iter() begins (set by load_state_dict)

    # ----------------------------------------------------------------- public API
    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next ``iter()`` serves (its seeded order is ``seed + epoch``, in both modes)."""
        if epoch != self.epoch:
            self.epoch, self._start, self._delivered = epoch, 0, 0

    def __len__(self) -> int:
        """Batches per epoch for this rank (samples mode with a sized ``samples``; otherwise a TypeError, as
        ``len()`` of a DataLoader over an IterableDataset, so trainers fall back to ``max_steps``)."""
        batches = self._source.batch_rows(self.epoch) if self._source is not None else None
        if batches is None:
            raise TypeError(
                "this RemoteLoader has no length: it reads a dataset on the server or an unsized "
                "iterable (give the trainer max_steps)"
            )
        return len(batches)

    @property
    def report_counts(self) -> dict[str, int]:
        """Totals over every batch delivered: batches, samples, truncated, dropped, skipped (in ``state_dict``)."""
        return self._counts.state()

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "mode": "dataset" if self.dataset is not None else "samples",
            "epoch": self.epoch,
            "next_batch": self._delivered,
            "plan": {k: v for k, v in asdict(self.plan).items() if k != "epoch"},
            "processor": self._remote.processor,
            "processor_fingerprint": self._remote.fingerprint,
            "dataset": self.dataset,
            "dataset_fingerprint": self._data_fingerprint(),
            "report_counts": self._counts.state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from ``state``; with another world size, only where the global batch divides evenly."""
        if state.get("version") != _STATE_VERSION:
            raise ResumeStateError(f"state version {state.get('version')!r} is not {_STATE_VERSION}")
        mode = "dataset" if self.dataset is not None else "samples"
        if state.get("mode") != mode:
            raise ResumeStateError(f"state is for {state.get('mode')} mode, this loader is in {mode} mode")
        if state.get("processor_fingerprint") and self._remote.fingerprint not in ("", state["processor_fingerprint"]):
            raise ResumeStateError("the saved run used another processor fingerprint")
        saved = DatasetPlan(**state["plan"])
        if (saved.seed, saved.shuffle, saved.drop_last) != (self.plan.seed, self.plan.shuffle, self.plan.drop_last):
            raise ResumeStateError("seed, shuffle and drop_last must match the saved plan")
        consumed = int(state["next_batch"]) * saved.batch_size * saved.world_size
        global_batch = self.plan.batch_size * self.plan.world_size
        if consumed % global_batch:
            raise ResumeStateError(
                f"{consumed} samples were consumed, not a whole number of global batches of {global_batch}"
            )
        self._check_data(str(state.get("dataset_fingerprint") or ""))
        self._remote.fingerprint = state.get("processor_fingerprint") or self._remote.fingerprint
        self.epoch = int(state["epoch"])
        self._start = self._delivered = consumed // global_batch
        self._counts.restore(state.get("report_counts"))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._remote.pin()
        start, self._delivered = self._start, self._start
        try:
            for index, batch, meta in self._batches(start):
                self._observe(index, meta)
                self._delivered = index + 1
                yield batch
        except FingerprintMismatch as exc:
            resumed = self._resumed_fingerprint and self._resumed_fingerprint == self.dataset_fingerprint
            if exc.field == "dataset.fingerprint" and resumed:
                raise ResumeStateError(
                    f"the dataset changed since the state was saved, so the saved position "
                    f"would resume on other rows: {exc.message}",
                    field="dataset",
                ) from None
            raise
        except FeedlineError as exc:
            raise self._with_row(exc, self._delivered) from None
        finally:
            self._counts.summarise(self.epoch)
        self._start, self._delivered = 0, 0
        self.epoch += 1

    @property
    def receiver_pid(self) -> int | None:
        """Process id of the receiver process (for monitoring its CPU and memory), None until one runs."""
        return self._receiver_process.pid if self._receiver_process is not None else None

    @property
    def stats(self) -> dict[str, int]:
        """What the connection did so far: ``attempts`` (calls sent), ``failovers`` (attempts that failed and
        went to another replica), ``hedges`` (calls also sent to a second replica) and ``hedges_won``,
        ``stalls`` (streams resumed elsewhere for want of a frame), ``refused`` (replicas left out for another
        processor fingerprint), ``dns_changes`` (replica sets seen change). Zero counters are left out."""
        total = collections.Counter(self._remote._connection.stats)
        if self._receiver_process is not None:
            total.update(self._receiver_process.stats)
        return {k: v for k, v in sorted(total.items()) if v}

    def close(self) -> None:
        """Stop the receiver process, if one was started (also done when the loader is garbage collected)."""
        self._closer()

    # ----------------------------------------------------------------- reports and data identity
    def _observe(self, index: int, meta: Mapping[str, Any]) -> None:
        if meta.get("dataset_fingerprint") and not self.dataset_fingerprint:
            self.dataset_fingerprint = str(meta["dataset_fingerprint"])  # pinned for the rest of the run
        batches = self._source.batch_rows(self.epoch) if self._source is not None else None
        rows = batches[index] if batches is not None and index < len(batches) else None
        self.last_report = BatchReport(self.epoch, index, with_rows(meta.get("reports") or [], rows))
        self._counts.observe(self.last_report)

    def _with_row(self, exc: FeedlineError, index: int) -> FeedlineError:
        """A samples-mode error about position ``exc.sample`` of batch ``index`` also names the row of ``samples``
        it came from (the server sees only the batch; dataset mode's errors name the row already)."""
        if self._source is None or exc.sample is None or exc.row is not None:
            return exc
        batches = self._source.batch_rows(self.epoch)
        if batches is None:  # an iterable, read in order: its n-th row
            return exc.at_row(index * self.plan.batch_size + exc.sample)
        if index < len(batches) and exc.sample < len(batches[index]):
            return exc.at_row(batches[index][exc.sample])
        return exc

    def _data_fingerprint(self) -> str:
        return self._source.fingerprint() if self._source is not None else self.dataset_fingerprint

    def _check_data(self, saved: str) -> None:
        """Refuse a state saved on other data: resuming at its position would silently train on other rows."""
        if self._source is not None:
            current = self._source.fingerprint()
            if saved and current and saved != current:
                raise ResumeStateError(
                    f"samples= changed since the state was saved ({saved} then, {current} now): "
                    "its saved position would resume on other rows",
                    field="samples",
                )
            return
        if saved and self.dataset_fingerprint and saved != self.dataset_fingerprint:
            raise ResumeStateError(
                f"the state was saved on dataset fingerprint {saved}, this loader pins {self.dataset_fingerprint}",
                field="dataset_fingerprint",
            )
        self.dataset_fingerprint = self._resumed_fingerprint = saved or self.dataset_fingerprint

    # ----------------------------------------------------------------- sources
    def _batches(self, start: int) -> Batches:
        chunks = self._source.chunks(self.epoch, start) if self._source is not None else None
        request = self._dataset_request(start) if self.dataset is not None else None
        pin = self._remote.pin_memory
        if self.offload:
            spec = {
                "mode": "samples" if request is None else "dataset",
                "remote": self._remote,
                "request": request.SerializeToString() if request is not None else b"",
                "prefetch": self.prefetch,
                "max_bytes": self.max_prefetch_bytes,
                "start": start,
            }
            return self._receiver().batches(spec, chunks, pin_memory=pin)
        if request is not None:
            blobs = _prefetched(dataset_blobs(self._remote, request), self.prefetch, self.max_prefetch_bytes)
        else:
            assert chunks is not None
            blobs = sample_blobs(self._remote, chunks, self.prefetch)
        return _decoded(blobs, pin)

    def _dataset_request(self, start: int) -> pb.StreamDatasetRequest:
        remote = self._remote
        path, parts = (self.dataset, []) if isinstance(self.dataset, str) else ("", self.dataset or [])
        return pb.StreamDatasetRequest(
            dataset=pb.DatasetRef(path=path, fingerprint=self.dataset_fingerprint),
            mixture=[pb.DatasetRef(**part) for part in parts],
            processor=remote.processor,
            processor_fingerprint=remote.fingerprint,
            options=remote._options_msg,
            seed=self.plan.seed,
            epoch=self.epoch,
            shuffle=self.plan.shuffle,
            batch_size=self.plan.batch_size,
            drop_last=self.plan.drop_last,
            rank=self.plan.rank,
            world_size=self.plan.world_size,
            start_batch_index=start,
            ragged=remote.ragged,
        )

    def _receiver(self) -> Receiver:
        if self._receiver_process is None:
            self._receiver_process = Receiver()
            self._closer = weakref.finalize(self, self._receiver_process.close)
        return self._receiver_process


def _decoded(blobs: Iterator[tuple[int, Any]], pin_memory: bool) -> Batches:
    for index, blob in blobs:
        decoded = decode_batch(blob)
        yield index, to_torch(decoded, pin_memory=pin_memory), decoded.meta


def _mixture_part(part: Mapping[str, Any] | str) -> dict[str, Any]:
    """One dataset of a mixture as DatasetRef fields: a path, or a mapping with path, weight, repeat, fingerprint."""
    entry = {"path": part} if isinstance(part, str) else dict(part)
    unknown = set(entry) - {"path", "weight", "repeat", "fingerprint"}
    if unknown or not isinstance(entry.get("path"), str):
        raise InvalidOptions(
            f"a mixture entry needs a 'path' and may set weight, repeat, fingerprint; got {part!r}", field="dataset"
        )
    return entry


def _prefetched(
    blobs: Generator[tuple[int, Any], None, None], prefetch: int, max_bytes: int
) -> Iterator[tuple[int, Any]]:
    """Read ``blobs`` on a background thread into a buffer bounded in batches and bytes (backpressure)."""
    out = _PrefetchBuffer(prefetch, max_bytes)

    def read() -> None:
        try:
            for item in blobs:
                if not out.put(item, item[1].nbytes):
                    return
            out.put(_DONE)
        except Exception as exc:  # noqa: BLE001 - handed to the trainer's thread, which raises it
            out.put(exc)
        finally:
            close = getattr(blobs, "close", None)  # a generator: stop it and its calls now, not at collection
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="feedline-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        out.close()
        reader.join(timeout=5)


class _PrefetchBuffer:
    """A FIFO bounded in items and bytes between the stream reader and the trainer (backpressure)."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._bytes = 0
        self._max_items, self._max_bytes = max_items, max_bytes
        self._cond = threading.Condition()
        self.closed = False

    def put(self, item: Any, nbytes: int = 0) -> bool:
        """Wait for room (one item always fits); False if the consumer closed the buffer."""
        with self._cond:
            while (
                not self.closed
                and self._items
                and (len(self._items) >= self._max_items or self._bytes + nbytes > self._max_bytes)
            ):
                self._cond.wait()
            if self.closed:
                return False
            self._items.append((item, nbytes))
            self._bytes += nbytes
            self._cond.notify_all()
            return True

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()

"""Server-side datasets: rows read by index from files every replica can see, and the epoch plan over them.

A batch is named by (dataset fingerprint, plan, batch index). The plan fixes a global order per epoch
(a seeded permutation), cuts it into global steps of ``batch_size * world_size`` samples and gives rank
``r`` the r-th slice of every step, so every rank has the same number of batches, every sample is visited
exactly once per epoch, and the same request gives the same rows on any replica.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from feedline.proto import FeedlineError, InvalidOptions, InvalidSample, ResumeStateError
from feedline.proto._plan import DatasetPlan

__all__ = ["DatasetPlan", "RowSource", "batch_rows", "num_batches", "open_dataset", "resolve_inside"]

_HASH_CHUNK = 1 << 20


def epoch_order(n: int, plan: DatasetPlan) -> np.ndarray:
    """The global visiting order of one epoch: a permutation seeded by (seed, epoch), or 0..n-1."""
    if not plan.shuffle:
        return np.arange(n, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64([plan.seed, plan.epoch]))
    return rng.permutation(n).astype(np.int64)


def num_batches(n: int, plan: DatasetPlan) -> int:
    """Batches per rank per epoch (the same on every rank)."""
    full, rest = divmod(n, plan.global_batch)
    return full + (1 if rest and not plan.drop_last else 0)


def batch_rows(n: int, plan: DatasetPlan, batch_index: int) -> np.ndarray:
    """Sample indices of this rank's batch ``batch_index``.

    In the last, partial global step the remaining samples are split as evenly as possible over the ranks
    (a rank may get an empty batch rather than a repeated sample).
    """
    total = num_batches(n, plan)
    if not 0 <= batch_index < total:
        raise InvalidOptions(f"batch index {batch_index} is outside 0..{total - 1}", field="start_batch_index")
    order = epoch_order(n, plan)
    step = order[batch_index * plan.global_batch : (batch_index + 1) * plan.global_batch]
    if step.shape[0] == plan.global_batch:
        return step[plan.rank * plan.batch_size : (plan.rank + 1) * plan.batch_size]
    bounds = np.linspace(0, step.shape[0], plan.world_size + 1).astype(np.int64)
    return step[bounds[plan.rank] : bounds[plan.rank + 1]]


def resume_batch_index(samples_consumed: int, plan: DatasetPlan) -> int:
    """The batch index at which a plan with another world size continues the same global order."""
    if samples_consumed % plan.global_batch:
        raise ResumeStateError(
            f"{samples_consumed} samples were consumed, which is not a whole number of global batches of "
            f"{plan.global_batch} (batch_size {plan.batch_size} x world_size {plan.world_size})"
        )
    return samples_consumed // plan.global_batch


class RowSource:
    """Rows of a JSONL file, a Parquet file, or a saved HF `datasets` directory, read by index."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fingerprint = _fingerprint(path)
        self._reader = _reader_for(path)

    def __len__(self) -> int:
        return len(self._reader)

    def rows(self, indices: Sequence[int]) -> list[Mapping[str, Any]]:
        """The rows at ``indices``; a row that cannot be read names its dataset row and its batch position."""
        out = []
        for position, i in enumerate(indices):
            try:
                out.append(self._reader[int(i)])
            except FeedlineError as exc:
                raise exc.at_sample(position) from None
        return out


_DATA_ROOT_HINT = ("Datasets are read only inside the data roots: start the server with --data-root DIR (config "
                   "data_roots, env FEEDLINE_DATA_ROOTS) and name the dataset by its path relative to that directory")


def open_dataset(path: str, roots: Sequence[Path]) -> RowSource:
    """Open a dataset that resolves inside one of ``roots``; the same file is opened once per process."""
    resolved = resolve_inside(path, roots, field="dataset.path")
    stat = resolved.stat()
    try:
        return _open_cached(resolved, stat.st_mtime_ns, stat.st_size)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
        raise InvalidSample(f"{path!r} cannot be read as a dataset: {exc}", field="dataset.path") from exc


@lru_cache(maxsize=16)
def _open_cached(path: Path, mtime_ns: int, size: int) -> RowSource:
    return RowSource(path)


def resolve_inside(path: str, roots: Sequence[Path], *, field: str) -> Path:
    """The real path of ``path`` if it lies inside one of ``roots`` (symlinks resolved), else InvalidSample."""
    if not roots:
        raise InvalidSample("the server has no data root configured", field=field, hint=_DATA_ROOT_HINT)
    if "\x00" in path:
        raise InvalidSample("a path cannot contain a NUL character", field=field)
    for root in roots:
        real_root = Path(os.path.realpath(root))
        candidate = Path(os.path.realpath(real_root / path))
        if candidate.is_relative_to(real_root) and candidate.exists():
            return candidate
    raise InvalidSample(f"{path!r} does not resolve to an existing file inside the server's data roots", field=field,
                        hint=_DATA_ROOT_HINT)


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _reader_for(path: Path) -> Sequence[Mapping[str, Any]]:
    if path.is_dir():
        return _ArrowRows(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return _TableRows(pq.read_table(path))
    return _JsonlRows(path)


class _JsonlRows(Sequence[Mapping[str, Any]]):
    """JSONL rows by index through an index of line offsets (built once)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        offsets = []
        with path.open("rb") as fh:
            pos = 0
            for line in fh:
                if line.strip():
                    offsets.append(pos)
                pos += len(line)
        self._offsets = np.asarray(offsets, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._offsets.shape[0])

    def __getitem__(self, i: int) -> Mapping[str, Any]:  # type: ignore[override]
        with self._path.open("rb") as fh:
            fh.seek(int(self._offsets[i]))
            line = fh.readline()
        try:
            row: Mapping[str, Any] = json.loads(line)
        except ValueError as exc:
            raise InvalidSample(f"dataset line is not JSON: {exc}", row=i) from exc
        return row


class _TableRows(Sequence[Mapping[str, Any]]):
    """Rows of an Arrow table (Parquet, or a saved HF dataset)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def __len__(self) -> int:
        return int(self._table.num_rows)

    def __getitem__(self, i: int) -> Mapping[str, Any]:  # type: ignore[override]
        row: Mapping[str, Any] = self._table.slice(i, 1).to_pylist()[0]
        return row


class _ArrowRows(_TableRows):
    """A directory written by HF `datasets.Dataset.save_to_disk` (Arrow stream files)."""

    def __init__(self, path: Path) -> None:
        import pyarrow as pa

        files = sorted(path.glob("*.arrow"))
        if not files:
            raise InvalidSample(f"{path.name} holds no .arrow files (not a saved HF dataset)", field="dataset.path")
        tables = []
        for file in files:
            with pa.memory_map(str(file)) as source:
                tables.append(pa.ipc.open_stream(source).read_all())
        super().__init__(pa.concat_tables(tables))

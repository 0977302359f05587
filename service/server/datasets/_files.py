"""Where a dataset's files are: one file, a directory or glob of shards, a saved HF dataset, or an object store.

``locate`` turns the path a request names into a ``Location``: the format, the files in a fixed order, each
with the filesystem that reads it (pyarrow's local or S3 filesystem, or an fsspec one), size and mtime.
Nothing is read but listings and stats. Local paths must resolve (symlinks included) inside a ``--data-root``;
URLs must start with a prefix the operator allowed with ``--data-url`` (none by default). S3 credentials,
region and endpoint come from the environment as the AWS SDK reads them (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, instance roles ...).

``fingerprint`` names a dataset's content from metadata: each file's name, size and first and last 64 KiB
(which hold a Parquet footer: row groups, offsets, statistics). It is the same on every replica that sees
the same bytes, copies included (mtimes are not part of it). It detects added, removed, renamed, resized or
re-encoded files and any change to a Parquet footer or to the ends of a file; it does not detect an edit in
the middle of a file that keeps its size (treat shards as immutable: write new files instead).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from feedline.proto import InvalidSample

__all__ = ["DataFile", "Location", "fingerprint", "locate", "resolve_inside"]

_FIELD = "dataset.path"
_GLOB = "*?["
_SAMPLE = 64 << 10
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset and the filesystem that reads it."""

    fs: Any  # pyarrow.fs.FileSystem
    path: str
    name: str  # relative to the dataset's base: part of the fingerprint, the same on every replica
    size: int
    mtime_ns: int
    local: bool

    def head_tail(self) -> bytes:
        if self.size <= 2 * _SAMPLE:
            with self.fs.open_input_file(self.path) as fh:
                return bytes(fh.read())
        with self.fs.open_input_file(self.path) as fh:
            return bytes(fh.read_at(_SAMPLE, 0)) + bytes(fh.read_at(_SAMPLE, self.size - _SAMPLE))


@dataclass(frozen=True)
class Location:
    """A dataset's files, all of one format ("jsonl", "parquet" or "arrow"), in their fixed order."""

    key: str
    kind: str
    files: tuple[DataFile, ...]

    @property
    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        """What changes when a file is replaced (checked before reusing an opened dataset)."""
        return tuple((f.name, f.size, f.mtime_ns) for f in self.files)


def fingerprint(location: Location, head_tails: Sequence[bytes]) -> str:
    h = hashlib.sha256(location.kind.encode())
    for file, sample in zip(location.files, head_tails, strict=True):
        h.update(f"\x00{file.name}\x00{file.size}\x00".encode())
        h.update(hashlib.sha256(sample).digest())
    return h.hexdigest()


def locate(path: str, roots: Sequence[Path], urls: Sequence[str] = ()) -> Location:
    """The files ``path`` names, inside the configured roots (InvalidSample naming dataset.path if not)."""
    if "\x00" in path:
        raise InvalidSample("a path cannot contain a NUL character", field=_FIELD)
    if "://" in path:
        return _locate_url(path, urls)
    base, pattern = _split_glob(path)
    resolved = resolve_inside(base, roots, field=_FIELD)
    root = next(Path(os.path.realpath(r)) for r in roots if resolved.is_relative_to(os.path.realpath(r)))
    if resolved == root and not pattern:
        raise InvalidSample("name a file, directory or glob inside the data root, not the root itself", field=_FIELD)
    from pyarrow import fs as pafs

    local = pafs.LocalFileSystem()
    if pattern:
        matched = [Path(os.path.realpath(p)) for p in sorted(resolved.glob(pattern))]
        files = [p for p in matched if p.is_file() and p.is_relative_to(root)]
    elif resolved.is_dir():
        saved = _saved_dataset_files(resolved)
        files = (
            saved
            if saved is not None
            else sorted(p for p in resolved.rglob("*") if p.suffix in (".jsonl", ".parquet") and p.is_file())
        )
        files = [Path(os.path.realpath(p)) for p in files]
        files = [p for p in files if p.is_relative_to(root)]
    else:
        files = [resolved]
    if not files:
        raise InvalidSample(
            f"{path!r} matches no dataset files (.jsonl, .parquet, or a saved HF dataset)", field=_FIELD
        )
    stats = [p.stat() for p in files]
    named = resolved if resolved.is_dir() else resolved.parent
    data = tuple(
        DataFile(
            local,
            str(p),
            str(p.relative_to(named)) if p.is_relative_to(named) else p.name,
            s.st_size,
            s.st_mtime_ns,
            True,
        )
        for p, s in zip(files, stats, strict=True)
    )
    return Location(f"{resolved}|{pattern}", _kind(path, [p.name for p in files]), data)


_DATA_ROOT_HINT = (
    "Datasets are read only inside the data roots: start the server with --data-root DIR (config data_roots, env "
    "FEEDLINE_DATA_ROOTS) and name the dataset by its path relative to that directory"
)


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
    raise InvalidSample(
        f"{path!r} does not resolve to an existing file inside the server's data roots",
        field=field,
        hint=_DATA_ROOT_HINT,
    )


def _split_glob(path: str) -> tuple[str, str]:
    """(base directory, glob pattern relative to it); pattern "" when ``path`` has no glob characters."""
    parts = PurePosixPath(path).parts
    for i, part in enumerate(parts):
        if any(c in part for c in _GLOB):
            return str(PurePosixPath(*parts[:i])) if i else ".", str(PurePosixPath(*parts[i:]))
    return path, ""


def _saved_dataset_files(directory: Path) -> list[Path] | None:
    """The Arrow files of a ``save_to_disk`` directory, in order (``cache-*.arrow`` left out); None if not one."""
    state = directory / "state.json"
    if state.is_file():
        try:
            names = [entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSample(
                f"{directory.name}/state.json is not a saved HF dataset's state: {exc}", field=_FIELD
            ) from None
        return [directory / name for name in names]
    arrows = sorted(p for p in directory.glob("*.arrow") if not p.name.startswith("cache-"))
    return arrows or None


def _kind(path: str, names: Sequence[str]) -> str:
    kinds = {_FORMATS.get(Path(n).suffix, "jsonl") for n in names}
    if len(kinds) > 1:
        raise InvalidSample(
            f"{path!r} mixes formats ({', '.join(sorted(kinds))}); name one format per dataset", field=_FIELD
        )
    return kinds.pop()


def _locate_url(url: str, allowed: Sequence[str]) -> Location:
    if not allowed:
        raise InvalidSample(
            "this server reads no object-store URLs (the operator allows prefixes with --data-url)", field=_FIELD
        )
    scheme, _, rest = url.partition("://")
    if ".." in PurePosixPath(rest).parts or not any(_under(url, prefix) for prefix in allowed):
        raise InvalidSample(f"{url!r} is not under an allowed --data-url prefix", field=_FIELD)
    base, pattern = _split_glob(rest)
    fs, root = _filesystem(f"{scheme}://{base}")
    from pyarrow import fs as pafs

    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        infos = [info]
    elif info.type == pafs.FileType.Directory or pattern:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        infos = [
            i
            for i in found
            if i.type == pafs.FileType.File
            and (
                fnmatch.fnmatchcase(_relative(i.path, root), pattern)
                if pattern
                else i.extension in ("jsonl", "parquet")
            )
        ]
        infos.sort(key=lambda i: i.path)
    else:
        infos = []
    if not infos:
        raise InvalidSample(f"{url!r} matches no dataset files", field=_FIELD)
    files = tuple(
        DataFile(
            fs,
            i.path,
            _relative(i.path, root) if info.type != pafs.FileType.File else i.base_name,
            int(i.size),
            int(i.mtime_ns or 0),
            False,
        )
        for i in infos
    )
    return Location(url, _kind(url, [f.name for f in files]), files)


def _under(url: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return url == prefix or url.startswith(prefix + "/")


def _relative(path: str, root: str) -> str:
    return path[len(root) :].lstrip("/") if path.startswith(root) else path


def _filesystem(uri: str) -> tuple[Any, str]:
    """pyarrow's filesystem for ``uri`` (s3, gs, hdfs, abfs), else fsspec's wrapped for pyarrow."""
    from pyarrow import fs as pafs

    try:
        fs, root = pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        try:
            import fsspec  # type: ignore[import-untyped]
        except ImportError:
            raise InvalidSample(f"cannot open {uri!r}: {exc}", field=_FIELD) from None
        spec_fs, root = fsspec.core.url_to_fs(uri)
        fs = pafs.PyFileSystem(pafs.FSSpecHandler(spec_fs))
    return fs, str(root)

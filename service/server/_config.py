"""Server configuration: defaults, then a YAML file, then environment variables, then command-line flags.

A YAML file::

    host: 0.0.0.0
    grpc_port: 50051
    http_port: 8000
    workers: 2
    collate_threads: 1     # batches one worker collates at once (0, the default: its share of the CPUs)
    media_roots: [/data/media]
    data_roots: [/data/datasets]
    data_urls: [s3://my-bucket/datasets]   # object-store prefixes StreamDataset may read (none by default)
    dataset_cache_dir: /var/cache/feedline   # JSONL line indexes (default ~/.cache/feedline)
    grace_period_s: 30
    allow_hub: false       # processors by hub id (off: directories and built-in names only, nothing fetched)
    limits: {max_request_bytes: 67108864, max_samples_per_request: 4096, max_chars_per_sample: 1000000,
             max_tokens_per_sample: 262144, max_request_seconds: 300}
    processors:
      qwen2.5: {source: qwen2.5, defaults: {max_length: 4096, truncation: right}}
      my-vlm: {source: /models/my-vlm, trust_remote_code: false}

Environment variables (12-factor, for containers) override the file: ``FEEDLINE_HOST``, ``FEEDLINE_GRPC_PORT``,
``FEEDLINE_HTTP_PORT``, ``FEEDLINE_WORKERS``, ``FEEDLINE_COLLATE_THREADS``, ``FEEDLINE_GRACE_PERIOD_S``,
``FEEDLINE_LOG_LEVEL``, ``FEEDLINE_ALLOW_HUB``,
``FEEDLINE_MEDIA_ROOTS`` / ``FEEDLINE_DATA_ROOTS`` (os.pathsep-separated), ``FEEDLINE_DATA_URLS``
(space-separated), ``FEEDLINE_DATASET_CACHE_DIR``, and one per limit,
``FEEDLINE_<LIMIT NAME IN CAPITALS>`` (e.g. ``FEEDLINE_MAX_REQUEST_BYTES``). Security (service/server/_auth.py):
``FEEDLINE_AUTH_TOKEN_FILE``, ``FEEDLINE_TLS_CERT``, ``FEEDLINE_TLS_KEY``, ``FEEDLINE_TLS_CLIENT_CA``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_DEFAULT",
    "ConfigError",
    "Limits",
    "ProcessorSpec",
    "ServeConfig",
    "default_cache_dir",
    "load_config",
]

BUILTIN_DEFAULT = "qwen2.5"
"""Name and source of the processor served when none is configured."""


class ConfigError(ValueError):
    """The configuration file, an environment variable or a flag is invalid (the server does not start)."""


@dataclass(frozen=True)
class ProcessorSpec:
    """One processor to load: a name clients use, a builtin name or local directory, and request defaults."""

    name: str
    source: str
    trust_remote_code: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    encoder_mode: str = "auto"
    template_date: str | None = None
    """The date templates render (``strftime_now``, ``date_string``), YYYY-MM-DD; None: the fixed default."""

    def __post_init__(self) -> None:
        if self.template_date is not None:
            try:
                datetime.date.fromisoformat(str(self.template_date))
            except ValueError as exc:
                raise ConfigError(
                    f"processors.{self.name}.template_date must be a YYYY-MM-DD date, not {self.template_date!r}"
                ) from exc


@dataclass(frozen=True)
class Limits:
    """Per-request bounds, each checked before the work it bounds (``_caps``); a request past one is refused
    with RequestTooLarge (HTTP 413, gRPC RESOURCE_EXHAUSTED) naming the limit, or RequestTimeout (HTTP 504,
    gRPC DEADLINE_EXCEEDED) past its time budget.

    The defaults fit long-context fine-tuning (a 256k-token sample, 4096 samples or 2M tokens in one request)
    and keep one request to seconds of work per core: characters are counted before any rendering (media parts
    excluded; ``MediaPolicy`` bounds those), tokens after tokenizing and before any tensor is built.
    """

    max_request_bytes: int = 64 << 20
    max_samples_per_request: int = 4096
    max_chars_per_sample: int = 1_000_000
    max_chars_per_request: int = 32_000_000
    max_tokens_per_sample: int = 262_144
    max_tokens_per_request: int = 2_097_152
    max_request_seconds: float = 300.0
    max_in_flight_per_stream: int = 4
    max_frame_bytes: int = 1 << 20
    max_message_bytes: int = 256 << 20
    max_dataset_streams: int = 128  # StreamDataset calls at once per process (each has its own thread)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            seconds = f.name == "max_request_seconds"  # the one limit that may be fractional
            kinds = (int, float) if seconds else (int,)
            if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
                raise ConfigError(
                    f"limits.{f.name} must be a positive {'number' if seconds else 'integer'}, not {value!r}"
                )


@dataclass(frozen=True)
class ServeConfig:
    """Everything `feedline serve` needs; immutable once built."""

    host: str = "0.0.0.0"
    grpc_port: int = 50051
    http_port: int = 8000
    workers: int = 1
    collate_threads: int = 0
    """Batches one worker collates at once; 0 = its share of the CPUs (``collate_threads_for``)."""
    processors: tuple[ProcessorSpec, ...] = ()
    media_roots: tuple[Path, ...] = ()
    data_roots: tuple[Path, ...] = ()
    data_urls: tuple[str, ...] = ()
    dataset_cache_dir: Path = field(default_factory=lambda: default_cache_dir())
    grace_period_s: float = 30.0
    keepalive_time_s: float = 30.0
    max_connection_age_s: float = 300.0
    log_level: str = "info"
    allow_hub: bool = False
    limits: Limits = field(default_factory=Limits)
    auth_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("grpc_port", "http_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be a port number, not {port!r}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"workers must be a positive integer, not {self.workers!r}")
        if (
            not isinstance(self.collate_threads, int)
            or isinstance(self.collate_threads, bool)
            or self.collate_threads < 0
        ):
            raise ConfigError(f"collate_threads must be 0 (auto) or a positive integer, not {self.collate_threads!r}")
        names = [p.name for p in self.processors]
        if len(set(names)) != len(names):
            raise ConfigError(f"processor names must be unique: {names}")

    @property
    def processor_specs(self) -> tuple[ProcessorSpec, ...]:
        """The configured processors, or the builtin Qwen2.5 tokenizer when none is."""
        return self.processors or (ProcessorSpec(BUILTIN_DEFAULT, BUILTIN_DEFAULT),)


_SCALARS = {
    "host": str,
    "grpc_port": int,
    "http_port": int,
    "workers": int,
    "collate_threads": int,
    "grace_period_s": float,
    "keepalive_time_s": float,
    "max_connection_age_s": float,
    "log_level": str,
    "allow_hub": bool,
}
_PATH_LISTS = ("media_roots", "data_roots")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
_PATHS = ("auth_token_file", "tls_cert", "tls_key", "tls_client_ca", "dataset_cache_dir")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/feedline`` (``~/.cache/feedline``): where dataset line indexes are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "feedline"


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServeConfig:
    """Build the config from ``path`` (YAML), then ``env`` (default os.environ), then ``overrides`` (flags).

    ``overrides`` holds already-typed values for top-level keys; ``None`` values are ignored.
    """
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    data.update(_from_env(os.environ if env is None else env, data.get("limits")))
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(data)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return loaded


def _from_env(env: Mapping[str, str], file_limits: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in _SCALARS.items():
        raw = env.get(f"FEEDLINE_{key.upper()}")
        if raw is not None and raw != "":
            out[key] = _convert(kind, raw, f"FEEDLINE_{key.upper()}")
    for key in _PATH_LISTS:
        raw = env.get(f"FEEDLINE_{key.upper()}")
        if raw:
            out[key] = [p for p in raw.split(os.pathsep) if p]
    out.update({key: env[f"FEEDLINE_{key.upper()}"] for key in _PATHS if env.get(f"FEEDLINE_{key.upper()}")})
    if env.get("FEEDLINE_DATA_URLS"):
        out["data_urls"] = env["FEEDLINE_DATA_URLS"].split()
    limits = dict(file_limits) if isinstance(file_limits, dict) else {}
    for f in dataclasses.fields(Limits):
        raw = env.get(f"FEEDLINE_{f.name.upper()}")
        if raw:
            limits[f.name] = _convert(
                float if f.name == "max_request_seconds" else int, raw, f"FEEDLINE_{f.name.upper()}"
            )
    if limits:
        out["limits"] = limits
    return out


def _convert(kind: type, raw: str, name: str) -> Any:
    if kind is bool:
        if raw.strip().lower() not in _BOOLS:
            raise ConfigError(f"{name}={raw!r} is not a boolean (one of {sorted(_BOOLS)})")
        return _BOOLS[raw.strip().lower()]
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None


def _build(data: dict[str, Any]) -> ServeConfig:
    known = {f.name for f in dataclasses.fields(ServeConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known: {sorted(known)}")
    values = dict(data)
    for key, kind in _SCALARS.items():
        if key in values and not isinstance(values[key], kind):
            if kind is float and isinstance(values[key], int) and not isinstance(values[key], bool):
                values[key] = float(values[key])
            else:
                raise ConfigError(f"{key} must be a {kind.__name__}, not {values[key]!r}")
    for key in _PATH_LISTS:
        if key in values:
            values[key] = tuple(Path(p).expanduser() for p in _as_list(values[key], key))
    for key in _PATHS:
        if key in values:
            if not isinstance(values[key], (str, Path)):
                raise ConfigError(f"{key} must be a file path, not {values[key]!r}")
            values[key] = Path(values[key]).expanduser()
    if "data_urls" in values:
        values["data_urls"] = tuple(_url(u) for u in _as_list(values["data_urls"], "data_urls"))
    if "processors" in values:
        values["processors"] = _processors(values["processors"])
    if "limits" in values:
        values["limits"] = _limits(values["limits"])
    return ServeConfig(**values)


def _url(value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(f"data_urls entries must be URLs such as s3://bucket/prefix, not {value!r}")
    return value.rstrip("/")


def _as_list(value: Any, key: str) -> list[Any]:
    if isinstance(value, (str, Path)):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key} must be a list")
    return list(value)


def _processors(value: Any) -> tuple[ProcessorSpec, ...]:
    if isinstance(value, (list, tuple)) and all(isinstance(v, ProcessorSpec) for v in value):
        return tuple(value)
    if not isinstance(value, dict):
        raise ConfigError("processors must be a mapping of name to {source, defaults, trust_remote_code}")
    specs = []
    known = {f.name for f in dataclasses.fields(ProcessorSpec)} - {"name"}
    for name, entry in value.items():
        entry = {"source": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "source" not in entry:
            raise ConfigError(f"processors.{name} needs a 'source' (builtin name or directory)")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ConfigError(f"processors.{name}: unknown key(s) {unknown}; known: {sorted(known)}")
        if not isinstance(entry.get("defaults", {}), dict):
            raise ConfigError(f"processors.{name}.defaults must be a mapping of collate options")
        specs.append(ProcessorSpec(name=str(name), **{**entry, "source": str(entry["source"])}))
    return tuple(specs)


def _limits(value: Any) -> Limits:
    if isinstance(value, Limits):
        return value
    if not isinstance(value, dict):
        raise ConfigError("limits must be a mapping")
    known = {f.name for f in dataclasses.fields(Limits)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown limit(s) {unknown}; known: {sorted(known)}")
    return Limits(**value)

"""The processors a server holds, by name, and whether it is ready (every configured processor loaded)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from feedline.proto import FingerprintMismatch, ServiceUnavailable, UnknownProcessor

from ..media._loading import MediaPolicy
from ..tokenizers._processor import Processor, load_processor
from ..tokenizers._sources import resolve_source
from ._config import Limits, ProcessorSpec
from ._datasets import DataAccess

__all__ = ["ProcessorRegistry", "ServingState"]

_LOGGER = logging.getLogger("feedline.service")

Loader = Callable[..., Processor]


class ProcessorRegistry:
    """Processors by name, loaded once from their specs; a processor that failed keeps its failure reason.

    The first configured processor is the default one (used when a request names none).
    """

    def __init__(
        self, specs: Iterable[ProcessorSpec], *, loader: Loader = load_processor, allow_hub: bool = False
    ) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._loader = loader
        self._allow_hub = allow_hub
        self._loaded: dict[str, Processor] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, *processors: Processor) -> ProcessorRegistry:
        """A ready registry over processors already loaded (tests, embedding)."""
        registry = cls(ProcessorSpec(p.name, p.source or p.name) for p in processors)
        registry._loaded = {p.name: p for p in processors}
        return registry

    def check_sources(self) -> None:
        """Resolve every spec's source without loading it: an unknown name or a missing directory raises
        UnknownProcessor naming the processor, so a server refuses to start instead of staying unready."""
        for name, spec in self._specs.items():
            try:
                resolve_source(spec.source, allow_hub=self._allow_hub)
            except UnknownProcessor as exc:
                raise UnknownProcessor(f"processors.{name}: {exc.message}", field="processor") from None

    def load_all(self) -> bool:
        """Load every processor not loaded yet; return readiness. Failures are logged and kept, not raised."""
        for name, spec in self._specs.items():
            if name in self._loaded:
                continue
            try:
                processor = self._loader(
                    name,
                    spec.source,
                    trust_remote_code=spec.trust_remote_code,
                    defaults=spec.defaults or None,
                    encoder_mode=spec.encoder_mode,
                    template_date=spec.template_date,
                    allow_hub=self._allow_hub,
                )
            # The boundary where any loader failure (transformers raises many kinds) becomes "not ready, because".
            except Exception as exc:  # noqa: BLE001
                reason = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._failed[name] = reason
                _LOGGER.error("processor failed to load", extra={"processor": name, "reason": reason})
                continue
            with self._lock:
                self._loaded[name] = processor
                self._failed.pop(name, None)
            _LOGGER.info("processor loaded", extra={"processor": name, "fingerprint": processor.fingerprint})
        return self.ready

    @property
    def ready(self) -> bool:
        return len(self._loaded) == len(self._specs)

    @property
    def default_name(self) -> str:
        return next(iter(self._specs))

    def status(self) -> dict[str, dict[str, Any]]:
        """Per configured processor: loaded or not, and the failure reason if loading failed."""
        return {name: {"loaded": name in self._loaded, "error": self._failed.get(name)} for name in self._specs}

    def processors(self) -> list[Processor]:
        return list(self._loaded.values())

    def get(self, name: str | None = None, *, fingerprint: str | None = None) -> Processor:
        """The processor under ``name`` (the default one if empty), checked against a pinned ``fingerprint``."""
        name = name or self.default_name
        processor = self._loaded.get(name)
        if processor is None:
            if name in self._failed:
                raise ServiceUnavailable(f"processor {name!r} failed to load: {self._failed[name]}", field="processor")
            if name in self._specs:
                raise ServiceUnavailable(f"processor {name!r} is still loading", field="processor")
            raise UnknownProcessor(f"no processor {name!r}; loaded: {sorted(self._loaded)}", field="processor")
        if fingerprint and fingerprint != processor.fingerprint:
            raise FingerprintMismatch(
                f"processor {name!r} has fingerprint {processor.fingerprint}, the request pinned {fingerprint}",
                field="fingerprint",
            )
        return processor

    def infos(self) -> list[Mapping[str, Any]]:
        return [p.info() for p in self._loaded.values()]


class Calls:
    """The gRPC calls this process has begun and not yet ended, counted from the handler's start to the call's
    end in gRPC core (its answer written), so a drain can tell when the last answer has left."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def begin(self) -> None:
        with self._idle:
            self._count += 1

    def end(self) -> None:
        with self._idle:
            self._count -= 1
            if self._count == 0:
                self._idle.notify_all()

    @property
    def active(self) -> int:
        """How many calls are in flight now."""
        return self._count

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no call is in flight or ``deadline`` (``time.monotonic``) passes; whether it is idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, max(0.0, deadline - time.monotonic()))


class ServingState:
    """What both servers of one process share: registry, limits, data roots, media policy, draining flag, and
    the gRPC calls in flight."""

    def __init__(
        self,
        registry: ProcessorRegistry,
        *,
        limits: Limits | None = None,
        data_roots: Iterable[Path] = (),
        media_roots: Iterable[Path] = (),
        data_urls: Iterable[str] = (),
        dataset_cache_dir: Path | None = None,
    ) -> None:
        self.registry = registry
        self.limits = limits or Limits()
        self.data_roots = tuple(Path(p) for p in data_roots)
        self.data_access = DataAccess(self.data_roots, tuple(data_urls), dataset_cache_dir)
        self.media = MediaPolicy(roots=tuple(Path(p) for p in media_roots))
        self.draining = threading.Event()
        self.calls = Calls()
        self._on_drain: list[Callable[[], None]] = []

    @property
    def ready(self) -> bool:
        """Every configured processor is loaded and the server is not draining."""
        return self.registry.ready and not self.draining.is_set()

    def on_drain(self, callback: Callable[[], None]) -> None:
        self._on_drain.append(callback)

    def drain(self) -> None:
        """Mark the process as draining (readiness and health turn to not serving); idempotent."""
        if self.draining.is_set():
            return
        self.draining.set()
        for callback in self._on_drain:
            callback()

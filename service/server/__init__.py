"""Everything that listens: serving state, the gRPC and HTTP servers, shared request functions, datasets, auth.

The public names load lazily, so ``feedline collate`` (which needs only the config) never imports FastAPI or
the gRPC server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._auth import Security, TlsFiles, TokenAuth
    from ._config import ConfigError, Limits, ProcessorSpec, ServeConfig, load_config
    from ._cpus import available_cpus
    from ._errors import status_for
    from ._grpc import collate_threads_for, create_server, drain_server
    from ._http import BATCH_MEDIA_TYPE, create_app
    from ._logging import JsonFormatter, configure_logging
    from ._registry import ProcessorRegistry, ServingState
    from ._requests import CollateResult, run_collate, run_mask

_WHERE = {
    "BATCH_MEDIA_TYPE": "_http",
    "CollateResult": "_requests",
    "ConfigError": "_config",
    "JsonFormatter": "_logging",
    "Limits": "_config",
    "ProcessorRegistry": "_registry",
    "ProcessorSpec": "_config",
    "Security": "_auth",
    "ServeConfig": "_config",
    "ServingState": "_registry",
    "TlsFiles": "_auth",
    "TokenAuth": "_auth",
    "available_cpus": "_cpus",
    "collate_threads_for": "_grpc",
    "configure_logging": "_logging",
    "create_app": "_http",
    "create_server": "_grpc",
    "drain_server": "_grpc",
    "load_config": "_config",
    "run_collate": "_requests",
    "run_mask": "_requests",
    "status_for": "_errors",
}
__all__ = [
    "BATCH_MEDIA_TYPE",
    "CollateResult",
    "ConfigError",
    "JsonFormatter",
    "Limits",
    "ProcessorRegistry",
    "ProcessorSpec",
    "Security",
    "ServeConfig",
    "ServingState",
    "TlsFiles",
    "TokenAuth",
    "available_cpus",
    "collate_threads_for",
    "configure_logging",
    "create_app",
    "create_server",
    "drain_server",
    "load_config",
    "run_collate",
    "run_mask",
    "status_for",
]
assert sorted(__all__) == __all__ and set(__all__) == set(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)

"""The `feedline` command: `serve` (gRPC + HTTP), and the offline `collate` and `mask` commands.

`feedline serve` loads every processor once, then (with ``--workers N`` > 1) forks N workers before any gRPC
object exists (grpc/grpc#16001). Each worker runs its own gRPC server on the same port with
``grpc.so_reuseport`` (the kernel balances connections; Linux only) and a uvicorn server on one listening
socket inherited from the parent. SIGTERM drains: health and /readyz turn to not serving, no new calls are
accepted, in-flight ones finish within the grace period, then the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._cli_offline import add_offline_commands
from .server._config import ConfigError, ProcessorSpec, ServeConfig, load_config

__all__ = ["build_parser", "main"]

_LOGGER = logging.getLogger("feedline.service")


def build_parser() -> argparse.ArgumentParser:
    """The full `feedline` argument parser (tests and deployment manifests are checked against it)."""
    parser = argparse.ArgumentParser(prog="feedline", description="feedline: LLM/VLM fine-tuning data as a service")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve collation over gRPC and HTTP",
        description="With no arguments, serves the built-in Qwen2.5 tokenizer as 'qwen2.5'.",
    )
    serve.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("FEEDLINE_CONFIG") or None,
        help="YAML config file (env FEEDLINE_CONFIG)",
    )
    serve.add_argument(
        "--processor",
        action="append",
        default=[],
        metavar="[NAME=]SOURCE",
        type=_processor_arg,
        help="serve a processor: a built-in name or a local directory (a hub id with --allow-hub), "
        "under NAME (default: the built-in name or the directory's name); repeatable",
    )
    serve.add_argument(
        "--allow-hub",
        action="store_const",
        const=True,
        default=None,
        help="let processor sources be hub ids (env FEEDLINE_ALLOW_HUB; off: nothing is fetched)",
    )
    serve.add_argument("--host", help="address to bind (env FEEDLINE_HOST; default 0.0.0.0)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port, 0 = any free port (env FEEDLINE_GRPC_PORT; 50051)")
    serve.add_argument("--http-port", type=int, help="HTTP port, 0 = any free port (env FEEDLINE_HTTP_PORT; 8000)")
    serve.add_argument("--workers", type=int, help="worker processes sharing both ports (env FEEDLINE_WORKERS; 1)")
    serve.add_argument(
        "--collate-threads",
        type=int,
        help="batches one worker collates at once (env FEEDLINE_COLLATE_THREADS; 0 = its share of the CPUs); "
        "1 with one worker per CPU spends the least CPU per row",
    )
    serve.add_argument(
        "--media-root",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="directory media files may be read from; repeatable",
    )
    serve.add_argument(
        "--data-root",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="directory StreamDataset may read datasets from; repeatable",
    )
    serve.add_argument(
        "--data-url",
        action="append",
        default=[],
        metavar="URL",
        help="object-store prefix StreamDataset may read (s3://bucket/prefix; credentials from the "
        "environment as the AWS SDK reads them); repeatable (env FEEDLINE_DATA_URLS)",
    )
    serve.add_argument(
        "--dataset-cache-dir",
        type=Path,
        metavar="DIR",
        help="where JSONL line indexes are kept (env FEEDLINE_DATASET_CACHE_DIR; ~/.cache/feedline)",
    )
    serve.add_argument(
        "--grace-period",
        type=float,
        dest="grace_period_s",
        help="seconds in-flight work may take after SIGTERM (env FEEDLINE_GRACE_PERIOD_S; 30)",
    )
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    serve.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help="accepted bearer tokens, one per line (env FEEDLINE_AUTH_TOKEN_FILE; or one token in FEEDLINE_AUTH_TOKEN)",
    )
    serve.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve both ports over TLS (env FEEDLINE_TLS_CERT)")
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's key (env FEEDLINE_TLS_KEY)")
    serve.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="require client certificates signed by this CA: mutual TLS (env FEEDLINE_TLS_CLIENT_CA)",
    )
    serve.set_defaults(func=run_serve)
    add_offline_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from feedline.proto import UnknownProcessor

    from ._quiet import quiet_third_party

    quiet_third_party()

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"feedline {args.command}: {exc}", file=sys.stderr)
        return 2
    except UnknownProcessor as exc:  # the offline commands' --processor
        print(f"feedline {args.command}: {exc.message}", file=sys.stderr)
        return 2


def _processor_arg(value: str) -> ProcessorSpec:
    """``NAME=SOURCE``, or a bare ``SOURCE`` served under its built-in name or its directory's name."""
    name, sep, source = value.partition("=")
    if not sep:
        name, source = Path(value.rstrip("/\\")).name or value, value
    if not name or not source:
        raise argparse.ArgumentTypeError(f"expected SOURCE or NAME=SOURCE, got {value!r}")
    return ProcessorSpec(name=name, source=source)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The serve config: file, then environment, then flags (``--processor`` replaces a same-named entry)."""
    base = load_config(args.config)
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "host",
            "grpc_port",
            "http_port",
            "workers",
            "collate_threads",
            "grace_period_s",
            "log_level",
            "auth_token_file",
            "tls_cert",
            "tls_key",
            "tls_client_ca",
            "allow_hub",
            "dataset_cache_dir",
        )
    }
    if args.processor:
        flagged = {spec.name for spec in args.processor}
        overrides["processors"] = (*(p for p in base.processors if p.name not in flagged), *args.processor)
    if args.media_root:
        overrides["media_roots"] = (*base.media_roots, *args.media_root)
    if args.data_root:
        overrides["data_roots"] = (*base.data_roots, *args.data_root)
    if args.data_url:
        overrides["data_urls"] = (*base.data_urls, *args.data_url)
    return load_config(args.config, overrides=overrides)


def run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from .server._logging import configure_logging

    configure_logging(config.log_level)
    with contextlib.ExitStack() as stack:
        if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Must be set before prometheus_client is imported, in the parent, so every worker shares it.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="feedline-metrics-")
            )
        return _serve(config)


def _serve(config: ServeConfig) -> int:
    from feedline.proto import UnknownProcessor

    from .server._auth import Security
    from .server._registry import ProcessorRegistry, ServingState

    security = Security.from_config(config)
    _LOGGER.info(
        "security",
        extra={
            "auth": security.auth is not None,
            "tls": security.tls is not None,
            "mutual_tls": bool(security.tls and security.tls.client_ca),
        },
    )

    registry = ProcessorRegistry(config.processor_specs, allow_hub=config.allow_hub)
    try:
        registry.check_sources()  # a name that points nowhere stops the start, not a server unready forever
    except UnknownProcessor as exc:
        raise ConfigError(exc.message) from None
    ready = registry.load_all()
    if config.data_roots or config.data_urls:  # the dataset readers' imports before ready, not in a first request
        import pyarrow.parquet  # noqa: F401
    _LOGGER.info("processors", extra={"ready": ready, "status": registry.status()})
    state = ServingState(
        registry,
        limits=config.limits,
        data_roots=config.data_roots,
        media_roots=config.media_roots,
        data_urls=config.data_urls,
        dataset_cache_dir=config.dataset_cache_dir,
    )
    http_sock = _listen(config.host, config.http_port)
    with _reserve_port(config.host, config.grpc_port, enabled=config.workers > 1) as grpc_port:
        if config.workers == 1:
            return _run_single(config, state, http_sock, security)
        _LOGGER.info(
            "listening",
            extra={
                "grpc_port": grpc_port,
                "http_port": http_sock.getsockname()[1],
                "workers": config.workers,
                "collate_threads": _collate_threads(config),
            },
        )
        return _run_workers(config, state, http_sock, grpc_port, security)


def _run_single(config: ServeConfig, state: Any, http_sock: socket.socket, security: Any) -> int:
    from .server._grpc import create_server

    server, port = create_server(
        f"{_grpc_host(config.host)}:{config.grpc_port}", state.registry, state=state, **_grpc_kwargs(config, security)
    )
    _LOGGER.info(
        "listening",
        extra={
            "grpc_port": port,
            "http_port": http_sock.getsockname()[1],
            "workers": 1,
            "collate_threads": _collate_threads(config),
        },
    )
    return _serve_worker(config, state, server, http_sock, security)


def _run_workers(config: ServeConfig, state: Any, http_sock: socket.socket, grpc_port: int, security: Any) -> int:
    children: list[int] = []
    for _ in range(config.workers):
        pid = os.fork()
        if pid == 0:  # the worker: its own gRPC server, created after the fork
            code = 1
            try:
                from .server._grpc import create_server

                server, _ = create_server(
                    f"{_grpc_host(config.host)}:{grpc_port}",
                    state.registry,
                    state=state,
                    reuse_port=True,
                    **_grpc_kwargs(config, security),
                )
                code = _serve_worker(config, state, server, http_sock, security)
            finally:
                logging.shutdown()
                os._exit(code)
        children.append(pid)
    return _supervise(children, config.grace_period_s)


def _supervise(children: list[int], grace_s: float) -> int:
    """Forward SIGTERM/SIGINT to the workers; exit 0 once all exited 0 after a drain, 1 if one died early."""
    draining = False

    def forward(signum: int, frame: Any) -> None:
        nonlocal draining
        draining = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    remaining = set(children)
    while remaining:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        remaining.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not draining:
            failed = True
            _LOGGER.error("worker exited", extra={"worker": pid, "exit_code": code, "draining": draining})
            forward(signal.SIGTERM, None)
    return 1 if failed else 0


def _serve_worker(config: ServeConfig, state: Any, grpc_server: Any, http_sock: socket.socket, security: Any) -> int:
    """Run both servers in this process until SIGTERM/SIGINT, then drain within the grace period."""
    import uvicorn

    from .server._grpc import drain_server
    from .server._http import create_app

    grpc_server.start()
    grace = config.grace_period_s
    uv = _uvicorn_server(
        uvicorn.Config(
            create_app(state, auth=security.auth),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(grace)),
            **security.uvicorn_options(),
        )
    )
    stopped: list[Any] = []

    async def serve() -> None:
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if not stopped:
                _LOGGER.info("draining", extra={"grace_period_s": grace, "grpc_calls": state.calls.active})
                stopped.append(drain_server(grpc_server, state, grace))
                uv.should_exit = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        await uv.serve(sockets=[http_sock])

    asyncio.run(serve())
    done = stopped[0] if stopped else drain_server(grpc_server, state, grace)
    done.wait(grace + 5)
    _LOGGER.info("stopped", extra={"clean": bool(stopped) and uv.started})
    return 0 if stopped and uv.started else 1


def _uvicorn_server(config: Any) -> Any:
    """A uvicorn.Server without its own signal handling (after a shutdown it re-raises SIGTERM: exit -15)."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server(config)


def _collate_threads(config: ServeConfig) -> int:
    """Batches each worker collates at once: the configured number, or the worker's share of the CPUs."""
    from .server._grpc import collate_threads_for

    return config.collate_threads or collate_threads_for(config.workers)


def _grpc_kwargs(config: ServeConfig, security: Any) -> dict[str, Any]:
    return {
        "keepalive_time_s": config.keepalive_time_s,
        "max_connection_age_s": config.max_connection_age_s,
        "collate_threads": _collate_threads(config),
        "auth": security.auth,
        "tls": security.tls,
    }


def _grpc_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _listen(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, created before any fork so every worker accepts on it."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _reserve_port(host: str, port: int, *, enabled: bool) -> Iterator[int]:
    """Hold ``port`` (or a free one if 0) with SO_REUSEPORT so workers can bind it too (grpc's example)."""
    if not enabled:
        yield port
        return
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())

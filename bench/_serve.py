"""Real `feedline serve` subprocesses for benchmarks, their CPU time, and load processes that keep them busy.

    python -m bench._serve load PORT[,PORT...] STREAMS SECONDS REQUESTS_FILE   # one load process (internal)

A load process opens ``STREAMS`` CollateStream calls spread over the given ports (one channel each, so
SO_REUSEPORT spreads them over a server's workers), keeps 4 batches in flight per stream like a prefetching
loader, sends pre-serialised requests and prints ``{"batches": N, "started": T0, "ended": T1}`` (monotonic
clock, from its first request to its end). It never decodes a batch, so it costs the cores little next to the
servers it drives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["Server", "cpu_seconds", "drive", "request_file", "serving"]

ROOT = Path(__file__).resolve().parents[1]
_TICKS = os.sysconf("SC_CLK_TCK")


class Server:
    """One `feedline serve` on 127.0.0.1 with free ports; ``close()`` drains it with SIGTERM.

    ``cpus`` pins the server to those CPUs (Linux affinity, set before it starts, so it sizes its collate
    pool for them, as it would in a container with that CPU set).
    """

    def __init__(self, *args: str, workers: int = 1, cpus: set[int] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEEDLINE_", "PROMETHEUS_"))}
        env["TOKENIZERS_PARALLELISM"] = "false"
        # Logs go to a file, not a pipe: a pipe needs a reader, and a reader thread here would spend this
        # process's CPU (the trainer's, in bench_client) on every line the server logs.
        self._log = tempfile.NamedTemporaryFile("w+", prefix="feedline-serve-", suffix=".log")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feedline.service._cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--workers",
                str(workers),
                "--log-level",
                "info",
                *args,
            ],
            stderr=self._log,
            stdout=subprocess.DEVNULL,
            env=env,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        self.workers = workers
        self.grpc_port, self.http_port = self._listening()
        self.address = f"127.0.0.1:{self.grpc_port}"

    def _listening(self, timeout: float = 300) -> tuple[int, int]:
        """The ports from the server's "listening" log line."""
        deadline = time.monotonic() + timeout
        with open(self._log.name, "rb") as log:
            while time.monotonic() < deadline:
                line = log.readline()
                if not line.endswith(b"\n"):  # nothing new yet (or half a line): wait for more
                    if self.proc.poll() is not None:
                        break
                    log.seek(-len(line), os.SEEK_CUR)
                    time.sleep(0.05)
                    continue
                record = json.loads(line) if line.startswith(b"{") else {}
                if record.get("msg") == "listening":
                    return int(record["grpc_port"]), int(record["http_port"])
        tail = Path(self._log.name).read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"feedline serve did not start listening (exit code {self.proc.poll()}):\n{tail}")

    def wait_ready(self, timeout: float = 180) -> None:
        """Until /readyz answers 200 (every processor loaded, every worker serving)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("feedline serve not ready")

    def metric(self, prefix: str) -> float:
        """Sum of a counter over all its label sets (lines of /metrics starting with ``prefix``)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the server process and its worker processes."""
        return cpu_seconds(self.proc.pid)

    def wait_idle(self, quiet_s: float = 0.3, timeout: float = 30.0) -> None:
        """Return once the server has used no CPU for ``quiet_s`` (work a closed client left in flight, such
        as a warm-up's prefetched batches, must not be counted in the next measurement)."""
        deadline = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = self.cpu_seconds()
            if now - last < 0.01:
                return
            last = now

    def close(self) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


@contextmanager
def serving(*configs: tuple[int, Sequence[str]] | tuple[int, Sequence[str], set[int]]) -> Iterator[list[Server]]:
    """Start one server per ``(workers, args[, cpus])`` at once (their loading overlaps), yield them ready, stop
    them."""
    servers: list[Server] = []
    try:
        for workers, args, *cpus in configs:
            servers.append(Server(*args, workers=workers, cpus=cpus[0] if cpus else None))
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.close()


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of ``pid`` (threads included) and of its live children (Linux /proc)."""
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        pids = [pid, *(int(p) for p in fh.read().split())]
    total = 0.0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a child that ended while we looked
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def request_file(requests: Sequence[bytes]) -> str:
    """Serialised CollateRequests in a temporary file, one hex line each, for load processes to replay."""
    with tempfile.NamedTemporaryFile("wb", suffix=".hex", delete=False) as fh:
        fh.write(b"\n".join(r.hex().encode() for r in requests))
        return fh.name


def drive(
    ports: Sequence[int],
    seconds: float,
    requests_file: str,
    *,
    processes: int = 2,
    streams: int = 8,
    cpus: set[int] | None = None,
) -> float:
    """Run ``processes`` load processes for ``seconds`` against ``ports`` (pinned to ``cpus`` if given); the
    seconds during which load ran (from the first load process's first request to the last one's end, their
    imports excluded: the servers wait meanwhile). What was served, the servers' own counters say."""
    port_list = ",".join(map(str, ports))
    loaders = [
        subprocess.Popen(
            [sys.executable, "-m", "bench._serve", "load", port_list, str(streams), str(seconds), requests_file],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        for _ in range(processes)
    ]
    reports = [json.loads(p.communicate()[0]) for p in loaders]
    return max(r["ended"] for r in reports) - min(r["started"] for r in reports)


def _load(ports: list[int], streams: int, seconds: float, requests_file: str) -> None:
    """Keep ``streams`` CollateStream calls busy for ``seconds``; print the batch count as JSON."""
    import grpc

    from feedline.proto.v1 import CHANNEL_OPTIONS, COLLATE_STREAM

    with open(requests_file, "rb") as fh:
        requests = [bytes.fromhex(line.decode()) for line in fh.read().split()]
    started = time.monotonic()  # system-wide on Linux, so load processes' times compare
    stop_at = time.perf_counter() + seconds
    counts = [0] * streams

    def run(k: int) -> None:
        options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{ports[k % len(ports)]}", options=options) as channel:
            method = channel.stream_stream(COLLATE_STREAM, request_serializer=None, response_deserializer=None)
            window = threading.Semaphore(4)

            def gen() -> Any:
                i = k
                while time.perf_counter() < stop_at:
                    if window.acquire(timeout=0.1):
                        yield requests[i % len(requests)]
                        i += 1

            call = method(gen())
            for _ in call:  # one frame per batch at these sizes
                if time.perf_counter() >= stop_at:
                    call.cancel()
                    break
                counts[k] += 1
                window.release()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"batches": sum(counts), "started": started, "ended": time.monotonic()}))


if __name__ == "__main__":
    if sys.argv[1:2] != ["load"] or len(sys.argv) != 6:
        sys.exit(__doc__)
    _load([int(p) for p in sys.argv[2].split(",")], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])

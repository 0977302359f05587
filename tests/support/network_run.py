"""The network fault harness: replicas and trainer ranks on a private network (``netns.Fabric``), epochs run
by trainer agents in both modes at once, faults injected mid-epoch, and every figure the table reports.

Each replica is a namespace with `feedline serve` on its loopback and a delaying TCP proxy on its eth0:50051
(delay 0 unless a fault sets one); the trainers reach them as ``dns:///replicas.feedline.test:50051``, a name
dnsmasq answers with one A record per replica in service, like a Kubernetes headless Service.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.netns import Fabric, Node, Process, python

__all__ = ["Agent", "Net", "Replica", "Result"]

PORT = 50051
_SERVE_PORT = 50052
_HERE = Path(__file__).resolve().parent
MODES = ("dataset", "samples")


@dataclass
class Replica:
    label: str
    node: Node
    control: Path
    args: tuple[str, ...]
    serve: Process | None = None

    @property
    def address(self) -> str:
        return self.node.ip

    def start(self) -> None:
        """`feedline serve` on this node's loopback (the proxy on eth0 forwards to it)."""
        self.serve = self.node.start(
            f"serve-{self.label}",
            python(
                "-m",
                "feedline.service._cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--grpc-port",
                str(_SERVE_PORT),
                "--http-port",
                "8000",
                "--grace-period",
                "2",
                *self.args,
            ),
        )

    def ready(self) -> bool:
        return self.serve is not None and any(r.get("msg") == "listening" for r in self.serve.lines)

    @property
    def process(self) -> Process:
        assert self.serve is not None, f"{self.label} was never started"
        return self.serve

    def calls(self, since: int = 0, code: str | None = None, methods: tuple[str, ...] = ()) -> int:
        """Calls this replica's current process logged after its first ``since`` log lines (with that status
        ``code``, of those ``methods``, when given)."""
        return sum(
            1
            for r in self.process.lines[since:]
            if r.get("msg") == "rpc" and code in (None, r.get("code")) and (not methods or r.get("method") in methods)
        )

    def delay(self, ms: float) -> None:
        self.control.write_text(str(ms))


@dataclass
class Agent:
    """A trainer process (one rank, one mode) in its rank's namespace; its stdout is read into ``events``."""

    rank: int
    mode: str
    node: Node
    process: Process
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    progress: int = 0

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stdout = self.process.popen.stdout
        assert stdout is not None
        for line in stdout:
            event = json.loads(line)
            if event["event"] == "batch":
                self.progress = event["n"]
            else:
                self.events.put(event)

    def run(self, command: dict[str, Any]) -> None:
        stdin = self.process.popen.stdin
        assert stdin is not None
        self.progress = 0
        stdin.write(json.dumps({**command, "mode": self.mode, "rank": self.rank}) + "\n")
        stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def pids(self) -> list[int]:
        try:
            proc = psutil.Process(self.process.pid)
            return [proc.pid, *(c.pid for c in proc.children(recursive=True))]
        except psutil.Error:
            return []


@dataclass
class Result:
    """One epoch of every agent under one fault."""

    fault: str
    outcomes: dict[tuple[int, str], dict[str, Any]]
    server_peak: int
    client_peak: int
    log_lines: dict[str, int]
    client_logs: list[str]
    target: str
    samples_on: dict[int, str]
    """The replica each rank's samples-mode stream was on when the fault began (one stream per run)."""


class Net:
    """Three replicas in service (plus a spare and a replica with another processor), two trainer ranks."""

    def __init__(self, workdir: Path, repo: Path, data: Path, rows: Path) -> None:
        self.fabric = Fabric(workdir, repo)
        self.data, self.rows = data, rows
        self.options = {"padding": "max_length", "max_length": 16384, "truncation": "right"}
        """1.6 MB batches: more than an HTTP/2 window's worth is still to come when a fault hits"""
        self.batch_bytes = 4 * 16384 * 8 * 3
        """batch_size rows of int64 input_ids, labels and attention_mask"""
        self.ahead = 0
        """Batches rank 0's dataset trainer had received when the last fault was injected (``stream_replica``)"""
        self.fabric.start_dns()
        self.replicas: dict[str, Replica] = {}
        for i, label in enumerate(("r0", "r1", "r2", "r3", "bad")):
            node = self.fabric.node(label, 10 + i)
            control = workdir / f"{label}.delay"
            control.write_text("0")
            extra = ("--processor", "qwen2.5=mistral-7b-v3") if label == "bad" else ()
            replica = Replica(label, node, control, ("--data-root", str(data), *extra))
            node.start(
                f"proxy-{label}",
                python(str(_HERE / "delay_proxy.py"), node.ip, str(PORT), str(_SERVE_PORT), str(control)),
            )
            replica.start()
            self.replicas[label] = replica
        self.in_service = ["r0", "r1", "r2"]
        self.found: list[str] = []  # how each fault's target was found (printed with the figures)
        self.publish()
        self.agents: dict[tuple[int, str], Agent] = {}
        for rank in (0, 1):
            node = self.fabric.node(f"t{rank}", 20 + rank)
            for mode in MODES:
                process = node.start(
                    f"trainer-{rank}-{mode}",
                    python("-m", "tests.support.trainer_agent"),
                    stdin=True,
                    env={"TOKENIZERS_PARALLELISM": "false"},
                )
                self.agents[(rank, mode)] = Agent(rank, mode, node, process)

    def publish(self) -> None:
        self.fabric.publish([self.replicas[label].address for label in self.in_service])

    def wait_ready(self, labels: list[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not all(self.replicas[label].ready() for label in labels):
            for label in labels:
                serve = self.replicas[label].serve
                assert serve is not None and serve.popen.poll() is None, (label, serve.lines[-5:] if serve else None)
            assert time.monotonic() < deadline, f"replicas not ready in {timeout} s"
            time.sleep(0.2)

    def stream_replica(self, rank: int = 0, mode: str = "dataset") -> str:
        """The replica in service that serves ``rank``'s stream in ``mode``: the peer its trainer (and receiver)
        processes have received the most bytes from, per ``ss`` in the rank's namespace."""
        agent = self.agents[(rank, mode)]
        by_ip = {self.replicas[label].address: label for label in self.in_service}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pids = set(agent.pids())
            out = agent.node.sh("ss", "-Htnpi", "state", "established", "dport", "=", f":{PORT}").stdout
            received: dict[str, int] = {}
            for block in re.split(r"\n(?=\S)", out):
                owner = {int(p) for p in re.findall(r"pid=(\d+)", block)}
                peer = re.search(rf"(\d+\.\d+\.\d+\.\d+)\]?:{PORT}", block)  # gRPC's sockets: [::ffff:a.b.c.d]
                got = re.search(r"bytes_received:(\d+)", block)
                if owner & pids and peer and got and peer.group(1) in by_ip:
                    received[peer.group(1)] = received.get(peer.group(1), 0) + int(got.group(1))
            if received:
                peer = max(received, key=received.__getitem__)
                self.found.append(f"rank {rank} {mode}: {received} at batch {agent.progress} -> {by_ip[peer]}")
                if mode == "dataset":
                    self.ahead = -(-received[peer] // self.batch_bytes)
                return by_ip[peer]
            time.sleep(0.1)
        raise AssertionError(f"no connection of rank {rank}'s {mode} trainer (pids {pids}) in: {out}")

    def hold(self, seconds: float, batches: int = 12, longest: float = 20) -> None:
        """Keep a fault on for ``seconds`` and until rank 0's dataset trainer has taken ``batches`` more than it
        had received when the fault began (gRPC reads ahead as far as its flow-control window lets it: 20-35
        batches here), so its stream must get past the fault, not just drain what had arrived before it."""
        lead = self.agents[(0, "dataset")]
        started, goal = time.monotonic(), max(lead.progress, self.ahead) + batches
        while time.monotonic() - started < longest and (
            time.monotonic() - started < seconds or (lead.progress < goal and lead.events.empty())
        ):
            time.sleep(0.05)

    def epoch(
        self, fault: str, inject: Callable[[str], None] | None, *, at: int = 4, step: float = 0.1, timeout: float = 120
    ) -> Result:
        """One epoch on every agent at once; ``inject(target)`` runs (on this thread) once rank 0's dataset
        trainer has taken ``at`` batches, ``target`` being the replica that serves that stream."""
        command = {
            "target": f"dns:///{self.fabric.name}:{PORT}",
            "dataset": "train.jsonl",
            "rows": str(self.rows),
            "world_size": 2,
            "batch_size": 4,
            "step": step,
            "fingerprint": None,
            "options": self.options,
            "ragged": False,  # padded int64 on the wire: the batches must be MB-sized for a fault to meet them
        }
        target, samples_on = "", {}
        marks = {label: len(r.serve.lines) for label, r in self.replicas.items() if r.serve is not None}
        agent_marks = {key: len(a.process.lines) for key, a in self.agents.items()}
        peaks = {"server": 0, "client": 0}
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.25):
                servers = [r.serve.pid for r in self.replicas.values() if r.serve and r.serve.popen.poll() is None]
                peaks["server"] = max(peaks["server"], max((_rss(p) for p in servers), default=0))
                peaks["client"] = max(
                    peaks["client"], max(sum(_rss(p) for p in a.pids()) for a in self.agents.values())
                )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for agent in self.agents.values():
            agent.run(command)
        try:
            if inject is not None:
                lead = self.agents[(0, "dataset")]
                deadline = time.monotonic() + 60
                while lead.progress < at and lead.events.empty() and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert lead.events.empty(), f"rank 0's dataset epoch ended before the fault: {lead.events.get()}"
                target = self.stream_replica()
                samples_on = {rank: self.stream_replica(rank, "samples") for rank in (0, 1)}
                inject(target)
            outcomes = {key: agent.result(timeout) for key, agent in self.agents.items()}
        finally:
            sampling.set()
            sampler.join()
        lines = {
            label: len(r.serve.lines) - marks.get(label, 0) for label, r in self.replicas.items() if r.serve is not None
        }
        logs = [
            f"rank {k[0]} {k[1]}: {line.get('msg', line.get('raw'))}"
            for k, a in self.agents.items()
            for line in a.process.lines[agent_marks[k] :]
        ]
        return Result(fault, outcomes, peaks["server"], peaks["client"], lines, logs, target, samples_on)

    def close(self) -> None:
        self.fabric.close()


def _rss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


def extra_waits(result: dict[str, Any], reference: dict[str, Any]) -> tuple[float, float]:
    """(worst extra wait of any batch over the same batch of the fault-free run, that run's median wait)."""
    extra = max((w - r for w, r in zip(result["waits"], reference["waits"], strict=True)), default=0.0)
    return extra, statistics.median(reference["waits"])


def freeze(process: Process, hold: Callable[[], None]) -> None:
    """SIGSTOP ``process`` for as long as ``hold()`` takes, then SIGCONT."""
    process.popen.send_signal(signal.SIGSTOP)
    try:
        hold()
    finally:
        process.popen.send_signal(signal.SIGCONT)

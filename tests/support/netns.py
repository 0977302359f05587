"""A private network for fault tests: network namespaces joined by veth pairs to a bridge, a DNS server that
answers a headless-Service name with several A records, and the faults a real network has (loss, partitions,
bandwidth caps with nftables and tbf; added latency through a delaying TCP proxy).

Everything lives inside namespaces this module creates (the bridge too, in a "hub" namespace), on the
10.213.7.0/24 test subnet that exists only there: nothing is added to the host's own namespace and no packet
leaves the namespaces. ``Fabric.close()`` stops every process, removes every namespace (with its veths and the
bridge) and the per-namespace resolver files; tests call it from a finalizer, so a failing test cleans up too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SUBNET", "Fabric", "Node", "Process", "unavailable_reason"]

SUBNET = "10.213.7"
"""The test subnet (/24); it exists only inside the namespaces a Fabric creates."""

_ETC_NETNS = Path("/etc/netns")  # `ip netns exec` bind-mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def unavailable_reason() -> str | None:
    """Why namespaces (or the tools the faults need) cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network-namespace fault tests need root (ip netns, nft, tc)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables"), ("tc", "iproute2"), ("dnsmasq", "dnsmasq")):
        if shutil.which(tool) is None:
            return f"network-namespace fault tests need `{tool}` (Debian: apt-get install -y {package})"
    probe = f"flprobe{uuid.uuid4().hex[:6]}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    try:
        veth = _run("ip", "-n", probe, "link", "add", "a0", "type", "veth", "peer", "name", "b0", check=False)
        if veth.returncode != 0:
            return f"cannot create a veth pair in a namespace: {veth.stderr.strip()}"
        tbf = _run(
            "tc",
            "-n",
            probe,
            "qdisc",
            "add",
            "dev",
            "a0",
            "root",
            "tbf",
            "rate",
            "1mbit",
            "burst",
            "16kb",
            "latency",
            "1s",
            check=False,
        )
        if tbf.returncode != 0:
            return f"tc tbf is not available: {tbf.stderr.strip()}"
        nft = _run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe", check=False)
        if nft.returncode != 0:
            return f"nftables is not available in a namespace: {nft.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Process:
    """A process started in a namespace; its stderr lines are kept (JSON lines parsed) for the test."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, name=f"stderr-{self.name}", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"raw": line.rstrip()})

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, sig: int = signal.SIGKILL, wait: float = 10) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


@dataclass
class Node:
    """One namespace on the bridge: ``eth0`` with ``ip``; ``peer`` is its veth end on the hub's bridge."""

    fabric: Fabric
    ns: str
    ip: str
    peer: str

    def sh(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.ns, *args, check=check)

    def start(
        self, name: str, argv: Sequence[str], *, stdin: bool = False, env: dict[str, str] | None = None
    ) -> Process:
        """Run ``argv`` in this namespace (``ip netns exec`` execs it: the pid is the program's own)."""
        popen = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=self.fabric.cwd,
        )
        process = Process(name, popen)
        self.fabric.processes.append(process)
        return process

    # --- faults on this node's link (both directions) -----------------------------------------------------------
    def drop(self, rule: str) -> None:
        """nftables rule in front of ``drop`` for packets in and out of eth0 (``""``: every packet, a partition
        without resets; ``"numgen random mod 100 < 2"``: 2% loss)."""
        self.heal_drops()
        script = (
            f"table inet fault {{\n"
            f' chain in {{ type filter hook input priority 0; iifname "eth0" {rule} drop; }}\n'
            f' chain out {{ type filter hook output priority 0; oifname "eth0" {rule} drop; }}\n}}\n'
        )
        subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", "-f", "-"],
            input=script,
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )

    def heal_drops(self) -> None:
        self.sh("nft", "delete", "table", "inet", "fault", check=False)

    def cap(self, rate: str) -> None:
        """A tbf bandwidth cap on both ends of this node's veth."""
        for ns, dev in ((self.ns, "eth0"), (self.fabric.hub, self.peer)):
            _run(
                "tc",
                "-n",
                ns,
                "qdisc",
                "replace",
                "dev",
                dev,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "32kb",
                "latency",
                "2s",
            )

    def uncap(self) -> None:
        for ns, dev in ((self.ns, "eth0"), (self.fabric.hub, self.peer)):
            _run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)


class Fabric:
    """Namespaces on one bridge, a dnsmasq answering ``name`` with the addresses given to ``publish``."""

    def __init__(self, workdir: Path, cwd: Path, name: str = "replicas.feedline.test") -> None:
        self.tag = f"fl{uuid.uuid4().hex[:6]}"
        self.workdir, self.cwd, self.name = workdir, cwd, name
        self.hub = f"{self.tag}-hub"
        self.namespaces: list[str] = []
        self.processes: list[Process] = []
        self.nodes: dict[str, Node] = {}
        self._hosts = workdir / "replicas.hosts"
        self._dns: Process | None = None
        self._closed = False
        try:
            self._add_namespace(self.hub)
            self._hub("link", "add", "br0", "type", "bridge")
            self._hub("link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _hub(self, *args: str) -> None:
        _run("ip", "-n", self.hub, *args)

    def _add_namespace(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def node(self, label: str, host: int) -> Node:
        """A namespace ``<tag>-<label>`` at 10.213.7.<host>, joined to the bridge, resolving through dnsmasq."""
        ns, peer = f"{self.tag}-{label}", f"v{label}"
        self._add_namespace(ns)
        self._hub("link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._hub("link", "set", peer, "master", "br0", "up")
        ip = f"{SUBNET}.{host}"
        _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        _run("ip", "-n", ns, "link", "set", "eth0", "up")
        (_ETC_NETNS / ns).mkdir(parents=True, exist_ok=True)
        (_ETC_NETNS / ns / "resolv.conf").write_text(f"nameserver {SUBNET}.2\noptions timeout:1 attempts:2\n")
        node = Node(self, ns, ip, peer)
        self.nodes[label] = node
        return node

    # --- DNS ----------------------------------------------------------------------------------------------------
    def start_dns(self) -> None:
        """dnsmasq at 10.213.7.2 answering ``name`` from a hosts file only (no upstream, TTL 0)."""
        node = self.node("dns", 2)
        self._hosts.write_text("")
        self._hosts.chmod(0o644)
        self._dns = node.start(
            "dnsmasq",
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--log-facility=-",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={self._hosts}",
                f"--listen-address={node.ip}",
                "--bind-interfaces",
                "--local-ttl=0",
                "--user=root",
                "--pid-file=",
            ],
        )

    def publish(self, addresses: Sequence[str]) -> None:
        """Make ``name`` resolve to exactly ``addresses`` (dnsmasq re-reads its hosts file on SIGHUP)."""
        assert self._dns is not None
        self._hosts.write_text("".join(f"{ip} {self.name}\n" for ip in addresses))
        os.kill(self._dns.pid, signal.SIGHUP)
        time.sleep(0.2)

    def resolves(self, node: Node) -> list[str]:
        """What ``name`` resolves to from ``node`` (getent, the same resolver path the client's getaddrinfo takes)."""
        out = node.sh("getent", "ahostsv4", self.name, check=False).stdout
        return sorted({line.split()[0] for line in out.splitlines() if line.strip()})

    # --- cleanup ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every process, then delete every namespace (veths and the bridge go with them) and resolver file."""
        if self._closed:
            return
        self._closed = True
        for process in reversed(self.processes):
            process.stop()
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "del", ns, check=False)
            shutil.rmtree(_ETC_NETNS / ns, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """Namespaces, resolver directories and processes of this fabric still present (empty after close)."""
        listed = _run("ip", "netns", "list").stdout
        left = [line.split()[0] for line in listed.splitlines() if line.startswith(self.tag)]
        left += [str(p) for p in _ETC_NETNS.glob(f"{self.tag}-*")]
        left += [p.name for p in self.processes if p.popen.poll() is None]
        return left


def python(*args: str) -> list[str]:
    """argv for this interpreter, unbuffered."""
    return [sys.executable, "-u", *args]

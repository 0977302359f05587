"""Real `feedline serve` processes for end-to-end tests (loopback only; every test stops what it starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import httpx


class Served:
    """A `feedline serve` subprocess on 127.0.0.1 with any free ports; ready once /readyz says so.

    ``wait_ready=False`` returns once both ports listen (for a server that is not meant to become ready, or
    one that speaks TLS). ``env`` adds variables to the environment, which starts without ``FEEDLINE_*``.
    """

    def __init__(self, *args: str, wait_ready: bool = True, env: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEEDLINE_", "PROMETHEUS_"))} | (env or {})
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "feedline.service._cli",
                "serve",
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--host",
                "127.0.0.1",
                *args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.logs: list[dict[str, Any]] = []
        self._listening = threading.Event()
        threading.Thread(target=self._read_logs, daemon=True).start()
        assert self._listening.wait(120), self.logs
        listening = next(r for r in self.logs if r.get("msg") == "listening")
        self.grpc_port, self.http_port = listening["grpc_port"], listening["http_port"]
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=60)
        deadline = time.monotonic() + (60 if wait_ready else 0)
        while time.monotonic() < deadline:
            try:
                if self.http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)

    def _read_logs(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                self.logs.append(json.loads(line))
            except ValueError:
                self.logs.append({"raw": line})
            if self.logs[-1].get("msg") == "listening":
                self._listening.set()

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

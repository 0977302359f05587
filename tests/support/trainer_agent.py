"""One trainer rank for the network fault tests, run inside its own network namespace.

``python -m tests.support.trainer_agent`` reads one JSON command per line on stdin and answers on stdout:
``{"mode": "dataset"|"samples", "target": ..., "rank": r, "world_size": w, "rows": path, "fingerprint": fp,
"step": seconds, "retry": {...}}`` runs one epoch with a fresh RemoteLoader (offload on, as users get it),
taking one batch per ``step`` seconds like a training loop, and prints ``{"event": "batch", "n": i}`` as it
goes and ``{"event": "done", "digests": [...], "waits": [...], "stats": {...}, "rss": bytes}`` at the end
(``{"event": "error", ...}`` if the epoch fails). A digest is the SHA-256 of a batch's tensors in key order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import threading
import time
from typing import Any

import psutil

from feedline.client import RemoteLoader, RetryPolicy


def _digest(batch: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(batch[key].numpy().tobytes())
    return h.hexdigest()


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _epoch(command: dict[str, Any]) -> dict[str, Any]:
    with open(command["rows"], encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines]
    common = dict(
        fingerprint=command["fingerprint"],
        batch_size=command["batch_size"],
        prefetch=4,
        retry=RetryPolicy(**command.get("retry", {})),
        ragged=command.get("ragged", True),
        **command.get("options", {}),
    )
    if command["mode"] == "dataset":
        loader = RemoteLoader(
            command["target"],
            "qwen2.5",
            dataset=command["dataset"],
            seed=5,
            rank=command["rank"],
            world_size=command["world_size"],
            **common,
        )
    else:  # each rank sends its own share of the rows
        mine = rows[command["rank"] :: command["world_size"]]
        loader = RemoteLoader(command["target"], "qwen2.5", samples=mine, **common)
    digests, waits, peak = [], [], 0
    try:
        it = iter(loader)
        while True:
            started = time.monotonic()
            batch = next(it, None)
            waits.append(time.monotonic() - started)
            if batch is None:
                waits.pop()
                break
            digests.append(_digest(batch))
            _say({"event": "batch", "n": len(digests)})
            if len(digests) % 10 == 1:
                peak = max(peak, _rss([psutil.Process().pid, loader.receiver_pid or 0]))
            time.sleep(command["step"])
        return {"event": "done", "digests": digests, "waits": waits, "stats": loader.stats, "rss": peak}
    finally:
        loader.close()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format='{"level": "%(levelname)s", "msg": "%(message)s"}'
    )
    lock = threading.Lock()
    for line in sys.stdin:
        command = json.loads(line)
        with lock:
            try:
                _say(_epoch(command))
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails with it
                _say({"event": "error", "error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()

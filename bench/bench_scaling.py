"""Service throughput against worker processes (1, 2) and replicas (1, 2 on one machine), in one run.

    python -m bench.bench_scaling [--quick] [--seconds 20]

Five real `feedline serve` processes are started at once (the built-in Qwen2.5 tokenizer): A with one worker,
B with one worker, C with ``--workers 2``, D with one worker pinned to one CPU, E with one worker and
``--collate-threads 1``. Each configuration is then driven by two load processes keeping 16 CollateStream
streams busy (4 batches in flight each) with batches of 16 real-text chats: 1 worker = A, 2 replicas = A and B
(streams split between their ports), 2 workers = C, 1 worker on 1 CPU = D, 1 worker with 1 collate thread = E.
The configurations take turns in ``ROUNDS`` windows each (one with ``--quick``), so the machine's drift falls
on all of them alike. Printed: rows/s, tokens/s, the servers' CPU (cores actually used) and the ratios.

Two ratios answer two questions. "2 workers / 1 worker on 1 CPU" is the scaling of worker processes: a worker
per CPU, does the second add a CPU's worth (ideal 2.0)? "2 workers / 1 worker" compares with a single worker
that may use every CPU: a worker collates one batch per CPU it may use on its thread pool (the tokenizer runs
without the GIL), so on 2 cores one worker already gets most of what two can (ideal 1.0 to 2.0, depending
on how GIL-bound one worker is). The load processes share the same cores, so "cores used" says how much CPU
the service really got.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from bench._corpus import chat_rows
from bench._progress import steps
from bench._serve import Server, drive, request_file, serving

__all__ = ["run"]

BATCH_ROWS = 16
CONFIGS = ("1 worker on 1 CPU", "1 worker", "1 worker, 1 collate thread", "2 workers", "2 replicas")
EFFICIENCY = ("1 worker", "1 worker on 1 CPU", "1 worker, 1 collate thread")
"""The single-worker configurations whose rows per CPU-second are set against the in-process engine's."""
WORKER_TARGET = 0.9  # issue 19: one worker at saturation, rows per CPU-second against the in-process engine
CORES_TARGET = 1.8  # issue 19: 2 workers on 2 cores against one worker pinned to one core


def _engine_rows_per_cpu_s(repeats: int) -> float:
    """The in-process engine's rows per CPU-second on the same 32 batches (``collate`` in this process, one
    thread, best of ``repeats``): what a worker's rows per CPU-second is measured against."""
    from bench._processors import qwen25
    from feedline.service import CollateOptions, collate

    processor, options = qwen25(), CollateOptions()
    rows = chat_rows(BATCH_ROWS * 32, seed=0)
    batches = [rows[i * BATCH_ROWS : (i + 1) * BATCH_ROWS] for i in range(32)]
    collate(processor, batches[0], options)  # warm
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for batch in batches:
            collate(processor, batch, options)
        best = min(best, time.process_time() - start)
    return len(rows) / best


def _requests() -> list[bytes]:
    """32 batches as feedline's clients send them: each batch's rows as one msgpack array (``samples_msgpack``),
    answered in the ragged wire form."""
    from feedline.client._requests import pack_rows
    from feedline.proto.v1 import feedline_pb2 as pb

    rows = chat_rows(BATCH_ROWS * 32, seed=0)
    return [
        pb.CollateRequest(
            samples_msgpack=pack_rows(rows[i * BATCH_ROWS : (i + 1) * BATCH_ROWS]), batch_index=i, ragged=True
        ).SerializeToString()
        for i in range(32)
    ]


ROUNDS = 4
"""Each configuration's load window is cut into this many, the configurations taking turns round by round (in
a rotated order), so a spell of load from outside or the machine's drift falls on every one alike."""


def _window(servers: list[Server], seconds: float, requests_file: str) -> tuple[float, float, float]:
    """CPU seconds, rows and tokens of ``servers`` (their own counters) over one load window of ``seconds``."""

    def totals() -> tuple[float, float, float]:
        return (
            sum(s.cpu_seconds() for s in servers),
            sum(s.metric("feedline_samples_total") for s in servers),
            sum(s.metric('feedline_tokens_total{kind="input"') for s in servers),
        )

    before = totals()
    drive([s.grpc_port for s in servers], seconds, requests_file)
    cpu, rows, tokens = (b - a for a, b in zip(before, totals(), strict=False))
    return cpu, rows, tokens


def _measure(
    configs: dict[str, list[Server]], seconds: float, requests_file: str, rounds: int
) -> dict[str, dict[str, float]]:
    """Rows, tokens and CPU per configuration over ``seconds`` of load each, in ``rounds`` interleaved windows
    (after a warm-up of every worker and connection); totals over the windows, so each is a time average."""
    for servers in configs.values():
        drive([s.grpc_port for s in servers], min(2.0, seconds / 3), requests_file)
    names = list(configs)
    sums = {name: [0.0, 0.0, 0.0] for name in names}
    for k in steps(range(rounds), "scaling"):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            window = _window(configs[name], seconds / rounds, requests_file)
            sums[name] = [a + b for a, b in zip(sums[name], window, strict=True)]
    return {
        name: {
            "rows_per_s": rows / seconds,
            "tokens_per_s": tokens / seconds,
            "server_cores_used": cpu / seconds,  # the servers are idle outside the load windows
            "rows_per_server_cpu_s": rows / cpu if cpu else 0.0,
        }
        for name, (cpu, rows, tokens) in sums.items()
    }


def run(quick: bool, seconds: float | None = None) -> dict[str, Any]:
    """Throughput for 1 worker, 2 workers and 2 replicas; ratios to 1 worker."""
    seconds = seconds or (3.0 if quick else 20.0)
    requests_file = request_file(_requests())
    result: dict[str, Any] = {
        "batch_rows": BATCH_ROWS,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "load_streams": 16,
        "load_processes": 2,
        "loadavg_before": os.getloadavg()[0],
    }
    engine = _engine_rows_per_cpu_s(3 if quick else 5)
    try:
        started = time.perf_counter()
        pinned = {min(os.sched_getaffinity(0))}
        with serving((1, ()), (1, ()), (2, ()), (1, (), pinned), (1, ("--collate-threads", "1"))) as (a, b, c, d, e):
            result["servers_start_s"] = time.perf_counter() - started
            configs = {
                "1 worker": [a],
                "2 workers": [c],
                "2 replicas": [a, b],
                "1 worker on 1 CPU": [d],
                "1 worker, 1 collate thread": [e],
            }
            result["rounds"] = 1 if quick else ROUNDS
            result.update(_measure(configs, seconds, requests_file, result["rounds"]))
    finally:
        os.unlink(requests_file)
    # Measured before and after the servers' runs (the better kept), so a spell of load during one does not
    # decide the reference.
    result["engine rows per CPU s"] = max(engine, _engine_rows_per_cpu_s(3 if quick else 5))
    base = result["1 worker"]["rows_per_s"]
    result["ratio 2 workers / 1 worker"] = result["2 workers"]["rows_per_s"] / base
    result["ratio 2 replicas / 1 replica"] = result["2 replicas"]["rows_per_s"] / base
    result["ratio 2 workers / 1 worker on 1 CPU"] = (
        result["2 workers"]["rows_per_s"] / result["1 worker on 1 CPU"]["rows_per_s"]
    )
    for name in EFFICIENCY:
        result[f"ratio {name} rows per CPU s / engine"] = (
            result[name]["rows_per_server_cpu_s"] / result["engine rows per CPU s"]
        )
    result["worker target"] = WORKER_TARGET
    result["cores target"] = CORES_TARGET
    result["loadavg_after"] = os.getloadavg()[0]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s per configuration")
    parser.add_argument("--seconds", type=float, help="load duration per configuration (default 20)")
    args = parser.parse_args()
    result = run(args.quick, args.seconds)
    print(
        f"{result['cpus']} CPUs; {BATCH_ROWS} chats per batch, 16 streams from 2 load processes, "
        f"{result['seconds']:.0f} s per configuration; servers started in {result['servers_start_s']:.0f} s"
    )
    print(f"{'configuration':>26} {'rows/s':>8} {'Mtok/s':>7} {'cores used':>11} {'rows/CPU s':>11}")
    for name in CONFIGS:
        r = result[name]
        print(
            f"{name:>26} {r['rows_per_s']:8.0f} {r['tokens_per_s'] / 1e6:7.2f} {r['server_cores_used']:11.2f} "
            f"{r['rows_per_server_cpu_s']:11.0f}"
        )
    print(
        f"rows per CPU-second, 1 worker at saturation / in-process engine ({result['engine rows per CPU s']:.0f}): "
        f"{result['ratio 1 worker rows per CPU s / engine']:.2f}x (pinned to 1 CPU: "
        f"{result['ratio 1 worker on 1 CPU rows per CPU s / engine']:.2f}x; free with one collate thread "
        f"(--collate-threads 1): {result['ratio 1 worker, 1 collate thread rows per CPU s / engine']:.2f}x; "
        f"target {WORKER_TARGET}x)"
    )
    print(
        f"2 workers / 1 worker on 1 CPU: {result['ratio 2 workers / 1 worker on 1 CPU']:.2f}x "
        f"(target {CORES_TARGET}x); "
        f"2 workers / 1 worker: {result['ratio 2 workers / 1 worker']:.2f}x; "
        f"2 replicas / 1 replica: {result['ratio 2 replicas / 1 replica']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Service throughput against worker processes (1, 2) and replicas (1, 2 on one machine), in one run.

    python -m bench.bench_scaling [--quick] [--seconds 20]

Five real `feedline serve` processes are started at once (the built-in Qwen2.5 tokenizer): A with one worker,
B with one worker, C with ``--workers 2``, D with one worker pinned to one CPU, E with one worker and
``--collate-threads 1``. Each configuration is then driven by two load processes keeping 16 CollateStream
streams busy (4 batches in flight each) with batches of 16 real-text chats: 1 worker = A, 2 replicas = A and B
(streams split between their ports), 2 workers = C, 1 worker on 1 CPU = D (the load free to run on the other
CPU), 1 worker and its load on 1 CPU = D with the load processes pinned to D's CPU, 1 worker with 1 collate
thread = E. The in-process engine (``collate`` in this process, one thread, the same batches) takes its turn
as one more configuration. The configurations take turns in ``ROUNDS`` windows each (one with ``--quick``),
so the machine's drift falls on all of them alike, the engine included. Printed: rows/s, tokens/s, the
servers' CPU and the load processes' CPU (cores actually used) and the ratios.

Three ratios answer three questions. Rows per server CPU-second against the engine's, both summed over their
interleaved windows: what does serving add to the engine's work at saturation? (The engine's best single pass,
as earlier runs reported it, is printed too: an extreme of a noisy machine set against an average.)
"2 workers / 1 worker and its load on 1 CPU" is the scaling of worker processes with the load where this
machine must put it, beside the servers: each server shares its CPUs with the load that drives it (ideal
2.0). "2 workers / 1 worker on 1 CPU" leaves the pinned worker's load free to use the other CPU, so the two
workers give the load a share of their cores that the pinned one does not (the load's cores used are
printed); "2 workers / 1 worker" compares with a single worker that may use every CPU: a worker collates one
batch per CPU it may use on its thread pool (the tokenizer runs without the GIL), so on 2 cores one worker
already gets most of what two can.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

from bench._corpus import chat_rows
from bench._progress import steps
from bench._serve import Server, drive, request_file, serving

__all__ = ["run"]

BATCH_ROWS = 16
PINNED = "1 worker on 1 CPU"
PINNED_WITH_LOAD = "1 worker and its load on 1 CPU"
CONFIGS = (PINNED_WITH_LOAD, PINNED, "1 worker", "1 worker, 1 collate thread", "2 workers", "2 replicas")
EFFICIENCY = ("1 worker", PINNED, "1 worker, 1 collate thread")
"""The single-worker configurations whose rows per CPU-second are set against the in-process engine's."""
WORKER_TARGET = 0.9  # issue 19: one worker at saturation, rows per CPU-second against the in-process engine
CORES_TARGET = 1.8  # issue 19: 2 workers on 2 cores against one worker pinned to one core


def _engine_batches() -> Callable[[], int]:
    """The in-process engine on the same 32 batches the servers get: a function that collates all of them once
    (``collate`` in this process, one thread) and returns the rows."""
    from bench._processors import qwen25
    from feedline.service import CollateOptions, collate

    processor, options = qwen25(), CollateOptions()
    rows = chat_rows(BATCH_ROWS * 32, seed=0)
    batches = [rows[i * BATCH_ROWS : (i + 1) * BATCH_ROWS] for i in range(32)]

    def collate_all() -> int:
        for batch in batches:
            collate(processor, batch, options)
        return len(rows)

    collate_all()  # warm
    return collate_all


def _engine_best(collate_all: Callable[[], int], repeats: int) -> float:
    """The engine's best pass over the batches, in rows per CPU-second (what earlier runs compared with)."""
    best = 0.0
    for _ in range(repeats):
        start = time.process_time()
        rows = collate_all()
        best = max(best, rows / (time.process_time() - start))
    return best


Window = tuple[float, float, float, float, float]
"""CPU seconds, rows, tokens, the load processes' CPU seconds and the seconds the work ran, of one window."""


def _engine_window(collate_all: Callable[[], int], seconds: float) -> Window:
    """The engine collating for ``seconds`` (whole passes over the batches), as a server's window: no tokens
    counted, no load."""
    rows, start_cpu, started = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        rows += collate_all()
    return time.process_time() - start_cpu, rows, 0.0, 0.0, time.perf_counter() - started


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


class _Config:
    """Servers and where their load runs (``load_cpus`` None: wherever the kernel puts it)."""

    def __init__(self, servers: list[Server], load_cpus: set[int] | None = None) -> None:
        self.servers, self.load_cpus = servers, load_cpus

    def window(self, seconds: float, requests_file: str) -> Window:
        """One load window of ``seconds``: the servers' CPU, rows and tokens (their own counters), the load
        processes' CPU, and how long the load ran."""
        before, load_before = self._totals(), _children_cpu_s()
        span = drive([s.grpc_port for s in self.servers], seconds, requests_file, cpus=self.load_cpus)
        cpu, rows, tokens = (b - a for a, b in zip(before, self._totals(), strict=True))
        return cpu, rows, tokens, _children_cpu_s() - load_before, span

    def _totals(self) -> tuple[float, float, float]:
        return (
            sum(s.cpu_seconds() for s in self.servers),
            sum(s.metric("feedline_samples_total") for s in self.servers),
            sum(s.metric('feedline_tokens_total{kind="input"') for s in self.servers),
        )


def _children_cpu_s() -> float:
    """CPU seconds of this process's ended children (the load processes; the servers run on)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measure(
    configs: dict[str, _Config], collate_all: Callable[[], int], seconds: float, requests_file: str, rounds: int
) -> dict[str, dict[str, float]]:
    """Rows, tokens and CPU per configuration (and the engine) over ``seconds`` each, in ``rounds`` interleaved
    windows (after a warm-up of every worker and connection); totals over the windows per second that the work
    ran, so each is a time average."""
    for config in configs.values():
        config.window(min(2.0, seconds / 3), requests_file)
    names = [*configs, "engine"]
    sums = {name: [0.0] * 5 for name in names}
    for k in steps(range(rounds), "scaling"):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            window = (
                _engine_window(collate_all, seconds / rounds)
                if name == "engine"
                else configs[name].window(seconds / rounds, requests_file)
            )
            sums[name] = [a + b for a, b in zip(sums[name], window, strict=True)]
    return {
        name: {
            "rows_per_s": rows / span,
            "tokens_per_s": tokens / span,
            "server_cores_used": cpu / span,  # the servers are idle outside the load windows
            "load_cores_used": load / span,  # with each load process's start, while the servers wait
            "rows_per_server_cpu_s": rows / cpu if cpu else 0.0,
            "seconds": span,
        }
        for name, (cpu, rows, tokens, load, span) in sums.items()
    }


def run(quick: bool, seconds: float | None = None) -> dict[str, Any]:
    """Throughput for every configuration; ratios between them and against the engine."""
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
    collate_all = _engine_batches()
    engine_best = _engine_best(collate_all, 3 if quick else 5)
    try:
        started = time.perf_counter()
        pinned = {min(os.sched_getaffinity(0))}
        with serving((1, ()), (1, ()), (2, ()), (1, (), pinned), (1, ("--collate-threads", "1"))) as (a, b, c, d, e):
            result["servers_start_s"] = time.perf_counter() - started
            configs = {
                "1 worker": _Config([a]),
                "2 workers": _Config([c]),
                "2 replicas": _Config([a, b]),
                PINNED: _Config([d]),
                PINNED_WITH_LOAD: _Config([d], pinned),
                "1 worker, 1 collate thread": _Config([e]),
            }
            result["rounds"] = 1 if quick else ROUNDS
            result.update(_measure(configs, collate_all, seconds, requests_file, result["rounds"]))
    finally:
        os.unlink(requests_file)
    # Before and after the servers' runs (the better kept), as earlier runs measured the reference.
    result["engine best pass rows per CPU s"] = max(engine_best, _engine_best(collate_all, 3 if quick else 5))
    result["engine rows per CPU s"] = result["engine"]["rows_per_server_cpu_s"]
    base = result["1 worker"]["rows_per_s"]
    result["ratio 2 workers / 1 worker"] = result["2 workers"]["rows_per_s"] / base
    result["ratio 2 replicas / 1 replica"] = result["2 replicas"]["rows_per_s"] / base
    for pin in (PINNED, PINNED_WITH_LOAD):
        result[f"ratio 2 workers / {pin}"] = result["2 workers"]["rows_per_s"] / result[pin]["rows_per_s"]
    for name in EFFICIENCY:
        for engine in ("engine", "engine best pass"):
            result[f"ratio {name} rows per CPU s / {engine}"] = (
                result[name]["rows_per_server_cpu_s"] / result[f"{engine} rows per CPU s"]
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
    print(f"{'configuration':>31} {'rows/s':>8} {'Mtok/s':>7} {'cores used':>11} {'load cores':>11} {'rows/CPU s':>11}")
    for name in (*CONFIGS, "engine"):
        r = result[name]
        print(
            f"{name:>31} {r['rows_per_s']:8.0f} {r['tokens_per_s'] / 1e6:7.2f} {r['server_cores_used']:11.2f} "
            f"{r['load_cores_used']:11.2f} {r['rows_per_server_cpu_s']:11.0f}"
        )
    for engine in ("engine", "engine best pass"):
        print(
            f"rows per CPU-second at saturation / {engine} ({result[f'{engine} rows per CPU s']:.0f}): "
            + ", ".join(f"{name} {result[f'ratio {name} rows per CPU s / {engine}']:.2f}x" for name in EFFICIENCY)
        )
    print(
        f"target {WORKER_TARGET}x. 2 workers / {PINNED_WITH_LOAD}: "
        f"{result[f'ratio 2 workers / {PINNED_WITH_LOAD}']:.2f}x "
        f"(target {CORES_TARGET}x); / {PINNED}: {result[f'ratio 2 workers / {PINNED}']:.2f}x; "
        f"2 workers / 1 worker: {result['ratio 2 workers / 1 worker']:.2f}x; "
        f"2 replicas / 1 replica: {result['ratio 2 replicas / 1 replica']:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wire throughput against batch size, and the client's decode time, measured side by side in one run.

    python -m bench.bench_wire            # full run (~3 minutes)
    python -m bench.bench_wire --quick    # under a minute

A gRPC server process streams pre-encoded tensor batches of 1-64 MB (as the service sends them: serialized
``Frame`` messages of 1 MiB, sync server, feedline's channel options) to a client on loopback that reassembles
and decodes each batch. Printed: GB/s, the client's assemble+decode time per batch, and the same stream parsed
as protobuf messages instead (the ratio that decided raw framing). Service throughput against workers and
replicas is ``bench.bench_scaling``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import numpy as np

from bench._progress import steps
from bench._serve import cpu_seconds

__all__ = ["run"]

_ROOT = Path(__file__).resolve().parents[1]
_MB = 1 << 20
_SIZES_MB = (1, 2, 4, 8, 16, 32, 64)
_WIRE_METHOD = "/bench.Wire/Stream"


# --- wire ------------------------------------------------------------------------------------------------------


def _wire_server() -> None:
    """Child process: stream pre-encoded batches; request = b"<size_mb>,<count>,<frame|raw>"."""
    import grpc

    from feedline.proto import encode_batch, split_frames
    from feedline.proto.v1 import CHANNEL_OPTIONS

    rng = np.random.default_rng(0)
    frames = {}
    for size in _SIZES_MB:
        n = size * _MB // 8
        tensors = {
            "input_ids": rng.integers(0, 150_000, n // 2, dtype=np.int64),
            "pixel_values": rng.standard_normal(n // 2 * 2, dtype=np.float32),
        }
        frames[size] = split_frames(encode_batch(tensors, {"reports": [{"index": 0}]}), wrap=True)

    def stream(request: bytes, context: Any) -> Any:
        size, count = (int(x) for x in request.decode().split(","))
        for _ in range(count):
            yield from frames[size]

    handler = grpc.method_handlers_generic_handler(
        "bench.Wire",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(stream, request_deserializer=None, response_serializer=None),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), options=list(CHANNEL_OPTIONS))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def _wire_run(
    port: int, size: int, count: int, parse_protobuf: bool, server_pid: int = 0
) -> tuple[float, float, float]:
    """(GB/s end to end, client assemble+decode seconds per batch, GB/s if neither side waited for a core)."""
    import grpc

    from feedline.proto import FrameAssembler, decode_batch
    from feedline.proto.v1 import CHANNEL_OPTIONS, feedline_pb2

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=list(CHANNEL_OPTIONS)) as channel:
        deserializer = feedline_pb2.Frame.FromString if parse_protobuf else None
        call = channel.unary_stream(_WIRE_METHOD, request_serializer=None, response_deserializer=deserializer)
        assembler = FrameAssembler()
        decode_s, batches = 0.0, 0
        server_cpu, client_cpu = cpu_seconds(server_pid) if server_pid else 0.0, time.process_time()
        start = time.perf_counter()
        for message in call(f"{size},{count}".encode()):
            t = time.perf_counter()
            blob = assembler.add(message.frame if parse_protobuf else message)
            if blob is not None:
                decode_batch(blob)
                batches += 1
            decode_s += time.perf_counter() - t
        elapsed = time.perf_counter() - start
        client_cpu = time.process_time() - client_cpu
        server_cpu = (cpu_seconds(server_pid) - server_cpu) if server_pid else 0.0
    assert batches == count
    gb = size * count / 1024
    return gb / elapsed, decode_s / count, gb / max(client_cpu, server_cpu, 1e-9)


def bench_wire(total_mb: int, repeats: int, sizes: Sequence[int] = _SIZES_MB) -> dict[str, Any]:
    """GB/s (raw frames and protobuf-parsed; wall and CPU-bound) and client decode time per batch size.

    Medians of ``repeats``. CPU-bound GB/s = bytes / the busier side's CPU seconds: the rate one stream would
    reach with a core each for client and server (stable on a shared machine, where wall-clock GB/s is not).
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_wire", "--_wire-server"], stdout=subprocess.PIPE, text=True, cwd=_ROOT
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        _wire_run(port, 8, 4, False)  # warm up the connection path
        rows = []
        for size in steps(sizes, "wire"):
            count = max(3, total_mb // size)
            raw = [_wire_run(port, size, count, False, proc.pid) for _ in range(repeats)]
            pbs = [_wire_run(port, size, count, True, proc.pid) for _ in range(repeats)]
            gbs, decode_s, cpu_gbs = (float(np.median([r[i] for r in raw])) for i in range(3))
            pb_gbs, pb_cpu_gbs = float(np.median([r[0] for r in pbs])), float(np.median([r[2] for r in pbs]))
            rows.append(
                {
                    "batch_mb": size,
                    "raw_gbs": gbs,
                    "raw_cpu_bound_gbs": cpu_gbs,
                    "protobuf_gbs": pb_gbs,
                    "protobuf_cpu_bound_gbs": pb_cpu_gbs,
                    "raw_over_protobuf_cpu": cpu_gbs / pb_cpu_gbs,
                    "decode_ms": decode_s * 1e3,
                    "decode_gbs": size / 1024 / decode_s,
                }
            )
        blob = np.ones(32 * _MB, dtype=np.uint8)
        t = time.perf_counter()
        for _ in range(10):
            blob.copy()
        memcpy = 10 * 32 / 1024 / (time.perf_counter() - t)
        return {"total_mb_per_run": total_mb, "repeats": repeats, "sizes": rows, "memcpy_gbs": memcpy}
    finally:
        proc.kill()
        proc.wait()


def run(quick: bool) -> dict[str, Any]:
    """The suite's entry: 4 sizes, 128 MB per run, 1 repeat quick; 7 sizes, 1536 MB, 5 repeats full."""
    return bench_wire(128, 1, (1, 4, 16, 64)) if quick else bench_wire(1536, 5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="384 MB per run, 3 repeats (under a minute)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--_wire-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._wire_server:
        _wire_server()
        return 0
    total_mb, repeats = (384, 3) if args.quick else (1536, 5)
    print(f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    figures = bench_wire(total_mb, repeats)
    print(f"one stream over loopback gRPC, 1 MiB frames, {total_mb} MB per run, median of {repeats}")
    print("GB/s = wall clock; cpu-bound GB/s = bytes / the busier side's CPU seconds (what a core each would give)")
    print(
        f"{'batch':>7} {'GB/s':>6} {'cpu-bound':>10} {'pb GB/s':>8} {'pb cpu-bound':>13} {'raw/pb':>7} "
        f"{'decode ms':>10} {'decode GB/s':>12}"
    )
    for r in figures["sizes"]:
        print(
            f"{r['batch_mb']:>5}MB {r['raw_gbs']:>6.2f} {r['raw_cpu_bound_gbs']:>10.2f} {r['protobuf_gbs']:>8.2f} "
            f"{r['protobuf_cpu_bound_gbs']:>13.2f} {r['raw_over_protobuf_cpu']:>6.2f}x {r['decode_ms']:>10.2f} "
            f"{r['decode_gbs']:>12.1f}"
        )
    print(f"reference: memcpy of 32 MB in this process {figures['memcpy_gbs']:.1f} GB/s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A TCP proxy that adds latency, for the network fault tests (this kernel has no netem).

``python delay_proxy.py LISTEN_HOST LISTEN_PORT UPSTREAM_PORT CONTROL_FILE`` relays every connection to
127.0.0.1:UPSTREAM_PORT. Each chunk read in either direction is written out CONTROL_FILE's number of
milliseconds later (0 when the file is empty or missing; read every 100 ms), in order. When either side
closes or resets, both sides are closed (a reset is passed on as a reset), so a killed server looks killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import time
from pathlib import Path

_DELAY = [0.0]


async def _control(path: Path) -> None:
    while True:
        try:
            text = path.read_text().strip()
            _DELAY[0] = float(text) / 1000 if text else 0.0
        except (OSError, ValueError):
            _DELAY[0] = 0.0
        await asyncio.sleep(0.1)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, other: asyncio.StreamWriter) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            data = await reader.read(1 << 16)
            await queue.put((time.monotonic() + _DELAY[0], data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        _reset(writer)
        _reset(other)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: int) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        _reset(writer)
        return
    await asyncio.gather(_pipe(reader, up_writer, writer), _pipe(up_reader, writer, up_writer))
    writer.close()
    up_writer.close()


async def _main(host: str, port: int, upstream: int, control: Path) -> None:
    asyncio.ensure_future(_control(control))
    server = await asyncio.start_server(lambda r, w: _handle(r, w, upstream), host, port)
    print("proxy listening", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])))

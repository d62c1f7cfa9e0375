"""A host-side TCP server for the many-flows tests (run as its own process).

``serve PORT SIZE``: for each connection, read one line ``GET <i>`` and answer
with ``content(i, SIZE)``, then close. ``hold PORT``: accept connections and
keep them open, silent, until killed. Prints ``READY`` when listening.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys


def content(i: int, size: int) -> bytes:
    block = hashlib.sha256(b"flow-%d" % i).digest()
    return (block * (size // 32 + 1))[:size]


async def main() -> None:
    mode, port = sys.argv[1], int(sys.argv[2])
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    held = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            i = int(line.split()[1])
            writer.write(content(i, size))
            await writer.drain()
        finally:
            writer.close()

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(serve if mode == "serve" else hold, "127.0.0.1", port, backlog=4096)
    print("READY", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

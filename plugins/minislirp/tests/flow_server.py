"""A host-side TCP server for the many-flows tests (run as its own process).

``serve PORT SIZE``: for each connection, read one line ``GET <i>`` and answer
with ``content(i, SIZE)``, then close. ``hold PORT``: accept connections and
keep them open, silent, until killed. ``sink PORT``: for each connection, read
one line ``PUT <i>``, then everything up to EOF, answer ``<bytes> <sha256>`` and
close (the client's EOF comes only after every byte was read). Prints
``READY`` when listening.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import threading
from collections.abc import Iterator


def content(i: int, size: int) -> bytes:
    block = hashlib.sha256(b"flow-%d" % i).digest()
    return (block * (size // 32 + 1))[:size]


async def main() -> None:
    size = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    await run(sys.argv[1], int(sys.argv[2]), size, lambda: print("READY", flush=True))


async def run(mode: str, port: int, size: int, on_ready) -> None:
    """Serve until cancelled; ``on_ready()`` once listening (also usable in a thread of a test)."""
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

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readline()
            digest = hashlib.sha256()
            n = 0
            while data := await reader.read(1 << 20):
                digest.update(data)
                n += len(data)
            writer.write(b"%d %s\n" % (n, digest.hexdigest().encode()))
            await writer.drain()
        finally:
            writer.close()

    handler = {"serve": serve, "hold": hold, "sink": sink}[mode]
    server = await asyncio.start_server(handler, "127.0.0.1", port, backlog=4096)
    on_ready()
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def served_in_thread(mode: str, port: int, size: int = 0) -> Iterator[int]:
    """Run :func:`run` on its own event loop in a thread of this process for the ``with`` block; yields ``port``.

    In-process on purpose where a test or bench wants the server to compete with minislirp's thread for the CPU.
    """
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    task = loop.create_task(run(mode, port, size, ready.set))

    def serve() -> None:
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        loop.close()

    thread = threading.Thread(target=serve, name=f"flow-server-{mode}", daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"flow server ({mode}) not listening on port {port} within 10 s")
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(10)


if __name__ == "__main__":
    asyncio.run(main())

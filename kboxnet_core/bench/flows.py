"""Many concurrent TCP flows: a sink server and a time-bounded client (the scale curve).

The client (run inside the guest: ``python3 -m kboxnet_core.bench.flows
HOST PORT --flows N --time T``) opens N connections, writes to all of them
for T seconds from one selector loop, closes them and prints one JSON object
with the bytes it wrote. The sink counts the bytes it received per flow, so
the harness can check that nothing was lost.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time

from .background import BackgroundServer


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need + 64))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run_client(host: str, port: int, flows: int, seconds: float, chunk: int = 65536) -> dict:
    raise_fd_limit(flows)
    sel = selectors.DefaultSelector()
    payload = memoryview(b"\0" * chunk)
    socks: list[socket.socket] = []
    sent = 0
    errors = 0
    first_error = ""
    t_connect = time.perf_counter()
    for _ in range(flows):
        s = socket.create_connection((host, port), timeout=30)
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_WRITE)
    connect_s = time.perf_counter() - t_connect
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for key, _ in sel.select(timeout=0.2):
            try:
                sent += key.fileobj.send(payload)  # type: ignore[union-attr]
            except BlockingIOError:
                pass
            except OSError as exc:
                errors += 1
                first_error = first_error or f"send: {exc}"
                sel.unregister(key.fileobj)
    # half-close and wait for the sink's EOF: only then has every byte written been delivered
    # (a sandbox's namespace may vanish as soon as this process exits)
    sel.close()
    sel = selectors.DefaultSelector()
    for s in socks:
        try:
            s.shutdown(socket.SHUT_WR)
            sel.register(s, selectors.EVENT_READ)
        except OSError as exc:
            errors += 1
            first_error = first_error or f"shutdown: {exc}"
    pending = len(sel.get_map())
    drain_deadline = time.perf_counter() + 30 + flows / 20
    while pending and time.perf_counter() < drain_deadline:
        for key, _ in sel.select(timeout=0.5):
            try:
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError as exc:
                data = b""
                errors += 1
                first_error = first_error or f"recv: {exc}"
            if not data:
                sel.unregister(key.fileobj)
                pending -= 1
    elapsed = time.perf_counter() - t0
    for s in socks:
        s.close()
    return {"flows": flows, "bytes": sent, "seconds": round(elapsed, 3), "connect_s": round(connect_s, 3),
            "gbps": round(sent * 8 / elapsed / 1e9, 3), "errors": errors, "undelivered_flows": pending,
            "first_error": first_error}


class SinkServer(BackgroundServer):
    """Counts bytes per accepted connection from one selector thread; ``received`` totals closed flows."""

    thread_name = "kboxnet-sink"

    def __init__(self, sock: socket.socket) -> None:
        raise_fd_limit(4096)
        super().__init__(sock)
        self.sock.setblocking(False)
        self.received = 0
        self.closed_flows = 0
        self._buf = bytearray(1 << 20)

    def reset(self) -> None:
        self.received = 0
        self.closed_flows = 0

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "accept")
        sel.register(self._stop_fd, selectors.EVENT_READ, "stop")
        counts: dict[socket.socket, int] = {}
        while True:
            for key, _ in sel.select():
                if key.data == "stop":
                    for c in counts:
                        c.close()
                    sel.close()
                    return
                if key.data == "accept":
                    try:
                        conn, _ = self.sock.accept()
                    except OSError:
                        continue
                    conn.setblocking(False)
                    counts[conn] = 0
                    sel.register(conn, selectors.EVENT_READ, "data")
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    n = conn.recv_into(self._buf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                if n:
                    counts[conn] += n
                    continue
                sel.unregister(conn)
                self.received += counts.pop(conn)
                self.closed_flows += 1
                conn.close()  # the client waits for this EOF



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flows", description=__doc__)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--flows", type=int, default=10)
    ap.add_argument("--time", type=float, default=5.0)
    args = ap.parse_args(argv)
    json.dump(run_client(args.host, args.port, args.flows, args.time), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

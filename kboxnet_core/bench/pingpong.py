"""TCP request/response latency and connection setup rate (client and server).

The client runs inside the guest (``python3 -m kboxnet_core.bench.pingpong
HOST PORT``) and prints one JSON object. The server is an echo server the
harness runs in its host namespace. Both loops are bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import threading
import time

from .background import BackgroundServer


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    idx = min(len(sorted_vals) - 1, max(0, round(q * (len(sorted_vals) - 1))))
    return sorted_vals[idx]


def run_client(host: str, port: int, count: int, conns: int, size: int, time_limit: float) -> dict:
    """``count`` ping-pongs of ``size`` bytes on one connection, then ``conns`` connect/echo/close."""
    payload = b"x" * size
    rtts: list[float] = []
    deadline = time.monotonic() + time_limit
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter()
            sock.sendall(payload)
            got = 0
            while got < size:
                chunk = sock.recv(size - got)
                if not chunk:
                    raise ConnectionError("server closed")
                got += len(chunk)
            rtts.append((time.perf_counter() - t0) * 1e6)
    done = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + time_limit
    for _ in range(conns):
        if time.monotonic() > deadline:
            break
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"!")
            if sock.recv(1) != b"!":
                raise ConnectionError("bad echo")
        done += 1
    elapsed = time.perf_counter() - t0
    rtts.sort()
    return {
        "rr_count": len(rtts),
        "rr_p50_us": round(_percentile(rtts, 0.50), 1),
        "rr_p99_us": round(_percentile(rtts, 0.99), 1),
        "conn_count": done,
        "conn_per_s": round(done / elapsed, 1) if elapsed > 0 else 0.0,
    }


class EchoServer(BackgroundServer):
    """A threaded TCP echo server on an already listening socket."""

    thread_name = "kboxnet-echo"

    def _serve(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock, self._stop_fd], [], [])
            if self._stop_fd in ready:
                return
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(60)
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    conn.sendall(data)
            except OSError:
                return



def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pingpong", description=__doc__)
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=300)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--time-limit", type=float, default=10.0)
    args = ap.parse_args(argv)
    result = run_client(args.host, args.port, args.count, args.conns, args.size, args.time_limit)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

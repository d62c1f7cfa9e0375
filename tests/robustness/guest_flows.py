"""Guest-side client for the robustness tests (runs inside the guest namespace).

usage: guest_flows.py hold HOST PORT N        open N connections, print READY, keep reading until EOF/reset
       guest_flows.py many HOST PORT N        open N connections at once, report how many connected/failed
"""

from __future__ import annotations

import socket
import sys
import time


def hold(host: str, port: int, n: int) -> int:
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=10)
        socks.append(s)
    print("READY", len(socks), flush=True)
    got = 0
    deadline = time.monotonic() + 60
    for s in socks:
        s.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while chunk := s.recv(65536):
                got += len(chunk)
        except OSError:
            pass
    print("ENDED", got, flush=True)
    return 0


def many(host: str, port: int, n: int) -> int:
    ok = failed = 0
    errors: dict[str, int] = {}
    socks = []
    t0 = time.monotonic()
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise OSError("no echo")
            socks.append(s)
            ok += 1
        except OSError as exc:
            failed += 1
            key = type(exc).__name__
            errors[key] = errors.get(key, 0) + 1
    took = time.monotonic() - t0
    for s in socks:
        s.close()
    print(f"ok={ok} failed={failed} took={took:.2f} errors={errors}", flush=True)
    return 0


if __name__ == "__main__":
    mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sys.exit({"hold": hold, "many": many}[mode](host, port, n))

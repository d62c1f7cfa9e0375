"""Fault injection against the real product path (``kboxnet run`` / ``kboxnet serve``, minislirp).

Each test asserts what the guest sees and that nothing is left behind: no orphan processes, no
runtime directories, socket files or namespaces.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

HERE = Path(__file__).parent
GUEST = str(HERE / "guest_flows.py")


def kboxnet_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kboxnet_core", *args]


def leftovers_before() -> set[str]:
    return set(glob.glob("/tmp/kboxnet-*"))


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


class DripServer:
    """Accepts connections on loopback and sends a little data now and then (until stopped)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed_by_peer = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self.sock.settimeout(0.1)
        deadline = time.monotonic() + 120
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
                conn.setblocking(False)
                self.conns.append(conn)
            except socket.timeout:
                pass
            for c in list(self.conns):
                try:
                    c.send(b"tick\n")
                    if c.recv(1, socket.MSG_PEEK) == b"":
                        self.closed_by_peer += 1
                        self.conns.remove(c)
                        c.close()
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_by_peer += 1
                    self.conns.remove(c)
                    c.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


def test_sigterm_during_100_active_flows():
    before = leftovers_before()
    server = DripServer()
    proc = subprocess.Popen(kboxnet_cmd("run", "--net", "minislirp", "--", sys.executable, GUEST, "hold",
                                        "10.0.2.2", str(server.port), "100"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY 100"), line + proc.stderr.read()
        time.sleep(0.5)
        assert len(server.conns) == 100
        kids = children_of(proc.pid)
        assert kids, "kboxnet run should have a namespace holder and the command as children"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        server_closed_wait = time.monotonic() + 5
        while server.conns and time.monotonic() < server_closed_wait:
            time.sleep(0.1)
        remaining = len(server.conns)
        server.stop()
    assert took < 10, f"kboxnet took {took:.1f} s to stop"
    assert proc.returncode == 128 + signal.SIGTERM, err  # the command got SIGTERM and died of it
    assert remaining == 0, f"{remaining} host connections still open after kboxnet stopped"
    for pid in kids:
        assert not os.path.exists(f"/proc/{pid}"), f"orphan process {pid} left behind"
    assert leftovers_before() <= before, "runtime files left in /tmp"


def test_host_server_reset_mid_stream_reaches_the_guest():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]

    def serve_then_reset() -> None:
        srv.settimeout(30)
        for _ in range(2):
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n" + b"a" * 200000)
            time.sleep(0.3)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()  # RST

    t = threading.Thread(target=serve_then_reset, daemon=True)
    t.start()
    script = (f"curl -sS -o /dev/null --max-time 20 http://10.0.2.2:{port}/a; echo rc=$?; "
              f"curl -sS -o /dev/null --max-time 20 http://10.0.2.2:{port}/b; echo rc=$?")
    out = subprocess.run(kboxnet_cmd("run", "--net", "minislirp", "--", "sh", "-c", script),
                         capture_output=True, text=True, timeout=90)
    srv.close()
    # curl 56: "Recv failure: Connection reset by peer" -- the guest saw the reset, twice (no hang)
    assert out.stdout.count("rc=56") == 2, out.stdout + out.stderr
    assert "reset" in out.stderr.lower()


def test_emfile_gives_the_guest_fast_failures_and_recovers():
    """With kboxnet at its fd limit, new guest connections fail fast; when flows end, service resumes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def echo() -> None:
        conns = []
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
                c.setblocking(False)
                conns.append(c)
            except socket.timeout:
                pass
            for c in list(conns):
                try:
                    d = c.recv(100)
                    if not d:
                        conns.remove(c)
                        c.close()
                    else:
                        c.send(d)
                except BlockingIOError:
                    pass
                except OSError:
                    conns.remove(c)
        for c in conns:
            c.close()

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    # between the rounds, the first round's flows finish closing (FIN exchange on both sides frees their fds)
    script = (f"{sys.executable} {GUEST} many 10.0.2.2 {port} 150; sleep 3; "
              f"{sys.executable} {GUEST} many 10.0.2.2 {port} 20")
    cmd = ["prlimit", "--nofile=96:96", "--"] + kboxnet_cmd("run", "-v", "--net", "minislirp", "--", "sh", "-c", script)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    finally:
        stop.set()
        t.join(5)
        srv.close()
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("ok=")]
    assert len(lines) == 2, out.stdout + out.stderr[-3000:]
    first = dict(kv.split("=", 1) for kv in lines[0].split()[:3])
    second = dict(kv.split("=", 1) for kv in lines[1].split()[:3])
    assert int(first["ok"]) > 0 and int(first["failed"]) > 0, lines[0]  # the limit was hit
    assert float(first["took"]) < 60, "failures must be fast (RST), not timeouts"
    assert int(second["ok"]) == 20, f"service did not recover after flows ended: {lines[1]}"
    assert out.returncode == 0

"""Fixtures for host-bypass tests: a fresh namespace, host loopback servers, a bypassed runner."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from kboxnet_bypass.config import BypassConfig
from kboxnet_bypass.runner import HostBypassRunner
from kboxnet_bypass.supervisor import SupervisorSettings

from kboxnet_core.backend import NetnsTarget

_seq = itertools.count()


def netns_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


@pytest.fixture
def netns() -> Iterator[NetnsTarget]:
    """An empty network namespace (lo up) named kbn-bp-PID-N, removed afterwards."""
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    name = f"kbn-bp-{os.getpid()}-{next(_seq)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield NetnsTarget(f"/run/netns/{name}", "lo", 0)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


class HostServer:
    """A host-namespace TCP server on 127.0.0.1 that greets and counts every connection."""

    def __init__(self, greeting: bytes = b"hello from host\n") -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.greeting = greeting
        self.accepted = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            try:
                conn.sendall(self.greeting)
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(2)


@pytest.fixture
def servers() -> Iterator[tuple[HostServer, HostServer]]:
    """(allowed, denied): two host loopback servers; tests allow only the first one's port."""
    allowed, denied = HostServer(b"ALLOWED\n"), HostServer(b"DENIED\n")
    yield allowed, denied
    allowed.close()
    denied.close()


@attrs.frozen
class Run:
    rc: int
    out: str
    counters: dict[str, int]

    def json(self) -> object:
        return json.loads(self.out)


def run_bypassed(
    netns: NetnsTarget,
    argv: list[str],
    allow: list[str],
    deny: list[str] | None = None,
    timeout: float = 60,
    epoll_rearm: bool = True,
    out_path: Path | None = None,
) -> Run:
    """Run ``argv`` under host-bypass in ``netns``; its stdout goes to ``out_path`` via sh."""
    cfg = BypassConfig(allow=allow, deny=deny if deny is not None else [], epoll_rearm=epoll_rearm)
    runner = HostBypassRunner(SupervisorSettings(cfg.policy(), 10.0, cfg.epoll_rearm, True))
    if out_path is not None:
        cmd = " ".join(_shq(a) for a in argv) + f" > {_shq(str(out_path))}"
        argv = ["sh", "-c", cmd]
    pid = runner.spawn(argv, netns, dict(os.environ))
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        time.sleep(0.02)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        runner.close()
        raise AssertionError(f"{argv} did not finish in {timeout}s; counters {runner.counters()}")
    runner.close()
    out = out_path.read_text() if out_path is not None and out_path.exists() else ""
    return Run(os.waitstatus_to_exitcode(status), out, dict(runner.counters()))


def _shq(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


CLIENTS = Path(__file__).parent / "clients"
PY = sys.executable


def compile_c(name: str, tmp_path: Path, extra: list[str] | None = None) -> Path:
    """Compile tests/clients/NAME.c with gcc (skip when there is no compiler)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("needs a C compiler for this client")
    exe = tmp_path / name
    subprocess.run([gcc, "-O2", "-o", str(exe), str(CLIENTS / f"{name}.c"), "-lpthread", *(extra or [])], check=True)
    return exe

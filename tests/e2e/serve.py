"""Start ``kboxnet serve`` for a test, inside a given namespace, and stop it by pid."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kboxnet_core.testing.netns import Netns
from kboxnet_core.testing.procs import stop_process


def write_config(path: Path, backend: str, dns_port: int, mtu: int = 1500, egress: bool = True) -> Path:
    """A config for ``backend``; ``egress`` adds a policy that allows only loopback, IPv4 and IPv6
    (not every backend can enforce one: passt refuses to start with egress rules)."""
    text = f'[net]\nbackend = "{backend}"\nmtu = {mtu}\ndns = ["127.0.0.1:{dns_port}"]\n'
    if egress:
        text += '[net.egress]\nallow = ["127.0.0.0/8", "::1/128"]\n'
    path.write_text(text)
    return path


def kboxnet_argv() -> list[str]:
    """The kboxnet CLI of this interpreter (not whatever ``kboxnet`` PATH finds first)."""
    return [sys.executable, "-m", "kboxnet_core"]


@contextmanager
def kboxnet_serve(netns: Netns, socket_path: Path, backend: str, config: Path, log: Path,
                  timeout: float = 20.0) -> Iterator[subprocess.Popen]:
    """``kboxnet serve --once`` in ``netns``; yields once it reports ready (``--ready-fd``)."""
    r, w = os.pipe()
    argv = [*kboxnet_argv(), "serve", "-v", "--socket", str(socket_path), "--backend", backend,
            "--config", str(config), "--once", "--no-fallback", "--ready-fd", str(w)]
    with log.open("wb") as out:
        proc = netns.popen(argv, stdout=out, stderr=subprocess.STDOUT, pass_fds=(w,))
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        msg = os.read(r, 64) if ready else b""
        if b"READY=1" not in msg:
            stop_process(proc)
            raise RuntimeError(f"kboxnet serve did not get ready: {log.read_text(errors='replace')[-2000:]}")
        yield proc
    finally:
        os.close(r)
        stop_process(proc, timeout=10)

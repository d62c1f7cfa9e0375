"""Start, watch and stop one passt (or pasta) process.

Readiness: passt has no ready signal in ``--fd`` mode and writes nothing
until the guest speaks. The last thing its start-up does, in every release
since 2021, is install its seccomp filter (``isolate_postfork()``), right
before entering the event loop: configuration, sockets, namespaces and the
privilege drop are all done by then, and any failure before it makes passt
exit with status 1. So the process is *ready* when ``/proc/PID/status``
says ``Seccomp: 2`` (filter mode). This needs no pid file (which old
versions write after dropping to ``nobody``, needing a world-writable
directory) and no connection (which would become passt's one client).

No orphans: the child gets ``PR_SET_PDEATHSIG(SIGKILL)`` before exec, so it
dies when the thread that spawned it dies (the session spawns from its own
long-lived monitor thread for that reason) even if kboxnet is SIGKILLed;
and with ``--fd`` passt also exits when its socket's peer closes. The
second guarantee is the one that holds when kboxnet runs as root: passt
then drops to ``nobody``, and the kernel clears the parent-death signal on
any change of effective or filesystem uid/gid (prctl(2)).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl
STDERR_LINES = 20
#: lines passt 2023 prints on every start when there is no /dev/log (noise)
_NOISE = ("Failed to send", "Don't run as root", "Started as root")
#: printed by passt (all releases to date) when the host has no IPv6 default route: it then
#: turns IPv6 off for the guest (no router advertisement, no DHCPv6), whatever the options say
IPV6_OFF = "No external routable interface for IPv6"
IPV6_OFF_WARNING = ("the guest gets no IPv6 although [net.ipv6] is enabled: passt found no IPv6 default "
                    "route on the host (\"No external routable interface for IPv6\") and turned IPv6 off")


def _make_preexec(parent: int):
    def preexec() -> None:  # runs in the child between fork and exec
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def seccomp_mode(pid: int) -> int | None:
    """``Seccomp:`` of ``/proc/PID/status`` (0, 1 or 2), None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Seccomp:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return 0


class PasstProcess:
    """A running passt: stderr tail, exit status, readiness, termination.

    Create it from the thread that should own the child (PDEATHSIG is tied
    to the spawning thread).

    :param on_line: called (in the stderr reader thread) with each line passt prints, noise excluded.
    """

    def __init__(self, argv: Sequence[str], pass_fds: Sequence[int] = (), name: str = "passt",
                 on_line: Callable[[str], None] | None = None) -> None:
        self.argv = list(argv)
        self.name = name
        self._on_line = on_line
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=tuple(pass_fds), close_fds=True,
                                     preexec_fn=_make_preexec(os.getpid()))
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read_stderr, name=f"{name}-stderr-{self.pid}",
                                        daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if not line or line.startswith(_NOISE):
                continue
            self.tail.append(line)
            log.info("%s[%d]: %s", self.name, self.pid, line)
            if self._on_line is not None:
                self._on_line(line)
        self.proc.stderr.close()

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_ready(self, timeout: float) -> bool:
        """True once passt finished its start-up (seccomp filter installed); False if it exited."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            if self.proc.poll() is not None:
                return False
            if seccomp_mode(self.pid) == 2:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def stderr_text(self) -> str:
        self._reader.join(0.5)
        return " | ".join(self.tail)

    def exit_description(self) -> str:
        code = self.proc.returncode
        if code is None:
            return f"{self.name} still running"
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        text = self.stderr_text()
        return f"{self.name} {how}" + (f": {text}" if text else "")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self, grace: float = 2.0) -> int:
        """SIGTERM, then SIGKILL after ``grace`` s; returns the exit status."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(grace) is None:
                self.signal(signal.SIGKILL)
                self.proc.wait()
        self._reader.join(1.0)
        return self.proc.returncode

"""The network paths a benchmark runs through: references and kboxnet backends.

Every path connects a "guest" (a network namespace, or ``kboxnet run``'s
own) to the harness's "host" namespace, where the servers listen. Traffic
never leaves namespaces the harness created (see
:class:`kboxnet_core.testing.HostNetns`).
"""

from __future__ import annotations

import abc
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import attrs

from ..testing.netns import HostNetns, Netns
from ..testing.procs import stop_process, wait_for


@attrs.frozen
class Attached:
    """How to run a command "in the guest" of a path, and where the servers are.

    :ivar prefix: argv prefix that runs a command as the guest.
    :ivar server: the address the guest uses to reach the host namespace's servers.
    """

    prefix: tuple[str, ...]
    server: str
    #: processes that carry the traffic (for RSS); empty when the command itself is the middle
    middle: tuple[int, ...] = ()
    #: the process started with ``prefix`` is the middle (kboxnet run) rather than the guest command
    prefix_is_middle: bool = False


class GuestPath(abc.ABC):
    """One way of connecting a guest to the host namespace."""

    name: str = ""
    kind: str = "reference"

    def unavailable(self) -> str | None:
        """None if usable here, else why not."""
        return None

    @abc.abstractmethod
    def attach(self, host: HostNetns, mtu: int) -> AbstractContextManager[Attached]:
        """Context manager yielding an :class:`Attached` for this MTU."""


def _wait_addr(ns: Netns, needle: str, proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited {proc.returncode}")
        out = subprocess.run(["ip", "-n", ns.name, "-4", "-o", "addr"], capture_output=True, text=True).stdout
        return needle in out

    wait_for(ready, timeout, what=f"address {needle} in {ns.name}")


class VethPath(GuestPath):
    """Native kernel path: a veth pair between guest and host namespaces (the ceiling)."""

    name = "veth"

    @contextmanager
    def attach(self, host: HostNetns, mtu: int) -> Iterator[Attached]:
        with Netns(area="bg") as guest:
            host.host.ip("link", "add", "bv-h", "mtu", str(mtu), "type", "veth", "peer", "name", "bv-g",
                         "mtu", str(mtu), "netns", guest.name)
            try:
                host.host.ip("addr", "add", "10.223.0.1/24", "dev", "bv-h")
                host.host.ip("link", "set", "bv-h", "up")
                guest.ip("addr", "add", "10.223.0.2/24", "dev", "bv-g")
                guest.ip("link", "set", "bv-g", "up")
                yield Attached(tuple(guest.prefix()), "10.223.0.1")
            finally:
                subprocess.run(["ip", "-n", host.host.name, "link", "del", "bv-h"], capture_output=True)


class Slirp4netnsPath(GuestPath):
    """slirp4netns (libslirp) on a tap in the guest namespace; gateway 10.0.2.2 = host loopback."""

    name = "slirp4netns"

    def unavailable(self) -> str | None:
        return None if shutil.which("slirp4netns") else "slirp4netns not installed"

    @contextmanager
    def attach(self, host: HostNetns, mtu: int) -> Iterator[Attached]:
        with Netns(area="bs") as guest:
            proc = host.host.popen(["slirp4netns", "-c", "--mtu", str(mtu), "--netns-type=path", guest.path,
                                    "tap0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_addr(guest, "10.0.2.100", proc)
                yield Attached(tuple(guest.prefix()), "10.0.2.2", (proc.pid,))
            finally:
                stop_process(proc)


class PastaPath(GuestPath):
    """Bare passt in its tap mode (pasta), no relay; the guest reaches the host's
    loopback through the gateway address (passt maps it)."""

    name = "pasta"

    def unavailable(self) -> str | None:
        return None if shutil.which("pasta") else "pasta not installed (apt-get install passt)"

    @contextmanager
    def attach(self, host: HostNetns, mtu: int) -> Iterator[Attached]:
        with Netns(area="bp") as guest:
            proc = host.host.popen(
                ["pasta", "-f", "-q", "-e", "--runas", "0", "--config-net", "-m", str(mtu),
                 "-t", "none", "-u", "none", "-T", "none", "-U", "none", "--netns", guest.path],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_addr(guest, HostNetns.HOST_ADDR, proc)
                yield Attached(tuple(guest.prefix()), HostNetns.GW_ADDR, (proc.pid,))
            finally:
                stop_process(proc)


class KboxnetPath(GuestPath):
    """A kboxnet frame backend, through ``kboxnet run --net NAME`` started in the host namespace."""

    kind = "backend"

    def __init__(self, backend: str, reason: str | None = None) -> None:
        self.name = backend
        self._reason = reason

    def unavailable(self) -> str | None:
        return self._reason

    @contextmanager
    def attach(self, host: HostNetns, mtu: int) -> Iterator[Attached]:
        argv = (*host.host.prefix(), sys.executable, "-m", "kboxnet_core", "run", "-q", "--net", self.name,
                "--mtu", str(mtu), "--")
        yield Attached(argv, "10.0.2.2", prefix_is_middle=True)


def kboxnet_backends(names: tuple[str, ...]) -> list[KboxnetPath]:
    """``names`` as paths, each with why it is unusable (from ``kboxnet backends --json``)."""
    proc = subprocess.run([sys.executable, "-m", "kboxnet_core", "backends", "--json"], capture_output=True,
                          text=True, timeout=60)
    try:
        rows = {row["name"]: row for row in json.loads(proc.stdout)}
    except (ValueError, KeyError, TypeError):
        rows = {}
    paths = []
    for name in names:
        row = rows.get(name)
        if row is None:
            paths.append(KboxnetPath(name, "not installed (kboxnet backends does not list it)"))
        elif row.get("kind") != "frame":
            paths.append(KboxnetPath(name, f"not a frame backend ({row.get('kind')})"))
        elif not row.get("available"):
            paths.append(KboxnetPath(name, str(row.get("reason") or "unavailable")))
        else:
            paths.append(KboxnetPath(name))
    return paths


REFERENCES: tuple[type[GuestPath], ...] = (VethPath, Slirp4netnsPath, PastaPath)

"""Create sockets inside another network namespace from this process.

``setns(CLONE_NEWNET)`` changes the namespace of the calling *thread* only,
and a socket stays in the namespace it was created in. So a short-lived
thread enters the namespace, creates and binds the socket, and exits; the
socket can then be served from any thread. Python 3.11 has no ``os.setns``,
hence ctypes.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(name_or_path: str) -> str:
    """``/run/netns/NAME`` for a name made by ``ip netns add``; paths pass through."""
    return name_or_path if "/" in name_or_path else f"/run/netns/{name_or_path}"


def call_in_netns(netns: str | None, func: Callable[[], T]) -> T:
    """Run ``func`` in a fresh thread that has entered ``netns`` (None: this one)."""
    if netns is None:
        return func()
    box: dict[str, object] = {}

    def runner() -> None:
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=runner, name="kboxnet-netns-enter")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def bound_socket(
    netns: str | None,
    host: str,
    port: int,
    kind: int = socket.SOCK_STREAM,
    listen: int | None = 128,
) -> socket.socket:
    """A socket bound to ``(host, port)`` inside ``netns`` (listening for TCP)."""

    def make() -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM and listen is not None:
                sock.listen(listen)
        except BaseException:
            sock.close()
            raise
        return sock

    return call_in_netns(netns, make)

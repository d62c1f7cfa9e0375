"""Connects performed *by the supervisor* on the program's own namespace sockets.

Once a host socket exists in the sandbox, answering CONTINUE to a connect()
is unsafe: the kernel re-reads both the fd and the address afterwards, so a
second thread could ``dup2`` a host socket onto the fd (and flip the address)
in between, and the connect would run on the host socket unmediated. So from
then on every connect() that stays in the namespace is done by the
supervisor on its ``pidfd_getfd`` copy of the socket, with its own copy of
the address. The socket belongs to the namespace, so the connect uses the
namespace's stack: only the caller changes.

Blocking sockets and AF_UNIX pathnames are handled by worker threads. Each
worker unshares its filesystem context (``unshare(CLONE_FS)``) so that it can
``fchdir`` into the program's working directory (relative paths) or into
``/proc/TID/root/DIR`` (absolute paths) and connect to the base name, which
resolves the path as the program would (within the limits in the docs).
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import threading
from collections.abc import Callable

import attrs

from . import abi

Reply = Callable[[int], None]


def _unix_path(raw: bytes) -> bytes | None:
    """The pathname of an AF_UNIX sockaddr (None for abstract or unnamed addresses)."""
    path = raw[2:]
    if not path or path[0] == 0:
        return None
    return path.split(b"\0", 1)[0]


@attrs.define
class _Job:
    tid: int
    copy: int
    raw: bytes
    reply: Reply


class Mediator:
    """A small pool of filesystem-isolated worker threads doing connect() on behalf of targets."""

    def __init__(self, workers: int = 8) -> None:
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._workers = workers
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, tid: int, copy: int, raw: bytes, reply: Reply) -> None:
        """Connect ``copy`` (ours; closed here) to ``raw`` for thread ``tid``; ``reply(errno)``."""
        with self._lock:
            if not self._threads:
                for i in range(self._workers):
                    t = threading.Thread(target=self._main, name=f"kboxnet-bypass-mediator-{i}", daemon=True)
                    t.start()
                    self._threads.append(t)
        self._queue.put(_Job(tid, copy, raw, reply))

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _main(self) -> None:
        try:
            abi.unshare(abi.CLONE_FS)  # a private cwd, so fchdir below affects only this thread
            fs_private = True
        except OSError:
            fs_private = False
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                err = connect_for(job.tid, job.copy, job.raw, fs_private)
            except OSError as exc:
                err = exc.errno or errno.EIO
            finally:
                os.close(job.copy)
            job.reply(err)


def connect_for(tid: int, fd: int, raw: bytes, fs_private: bool) -> int:
    """connect(fd, raw) as thread ``tid`` would resolve it; returns 0 or an errno."""
    family = int.from_bytes(raw[:2], "little") if len(raw) >= 2 else -1
    path = _unix_path(raw) if family == socket.AF_UNIX else None
    if path is None:
        return abi.connect_raw(fd, raw)
    if not fs_private:
        return errno.EACCES  # cannot resolve the path safely without a private cwd
    directory, base = os.path.split(path)
    if path.startswith(b"/"):
        where = f"/proc/{tid}/root".encode() + (directory or b"/")
    else:
        where = f"/proc/{tid}/cwd/".encode() + directory
    try:
        dfd = os.open(where, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno or errno.ENOENT
    try:
        os.fchdir(dfd)
    finally:
        os.close(dfd)
    return abi.connect_raw(fd, raw[:2] + base + b"\0")

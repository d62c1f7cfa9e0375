"""Re-arming epoll registrations of a swapped socket.

An epoll item is keyed by (file, fd number). After ADDFD replaces the
target's fd N, items made before connect() still watch the old socket. To add
the new socket under the same key we need an fd table where N is the new
socket: a dedicated thread unshares its fd table (``unshare(CLONE_FILES)``),
empties it, and does ``dup2(new, N)`` + ``epoll_ctl(ADD, N)`` on a
``pidfd_getfd`` copy of the target's epoll instance. Nothing else ever runs
in that thread, so its private table cannot confuse the rest of the process.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import queue
import struct
import threading

import attrs

from . import abi
from .target import EpollRegistration, open_pidfd

EPOLL_CTL_ADD = 1
_EVENT = struct.Struct("=IQ")  # struct epoll_event is packed on x86_64


@attrs.define
class _Request:
    tid: int
    host_fd: int  # in the supervisor's (main) fd table
    target_fd: int
    regs: list[EpollRegistration]
    done: threading.Event = attrs.field(factory=threading.Event)
    rearmed: int = 0
    error: str = ""


class EpollRearmer:
    """Runs the re-arm requests in a thread with a private fd table."""

    def __init__(self) -> None:
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def rearm(self, tid: int, host_fd: int, target_fd: int, regs: list[EpollRegistration]) -> tuple[int, str]:
        """Add ``host_fd`` as the target's ``target_fd`` to each registration's epoll; (count, error)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name="kboxnet-bypass-epoll", daemon=True)
                self._thread.start()
        req = _Request(tid, host_fd, target_fd, regs)
        self._queue.put(req)
        req.done.wait()
        return req.rearmed, req.error

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)

    def _main(self) -> None:
        abi.unshare(abi.CLONE_FILES)
        os.closerange(0, os.sysconf("SC_OPEN_MAX"))  # only our private copies: the process keeps its fds
        self_pidfd = abi.pidfd_open(os.getpid())
        libc = ctypes.CDLL(None, use_errno=True)
        while True:
            req = self._queue.get()
            if req is None:
                os.close(self_pidfd)
                return
            try:
                self_pidfd = _above(self_pidfd, req.target_fd)
                req.rearmed = self._work(req, self_pidfd, libc)
            except OSError as exc:
                req.error = str(exc)
            finally:
                req.done.set()

    @staticmethod
    def _work(req: _Request, self_pidfd: int, libc: ctypes.CDLL) -> int:
        tpid = _above(open_pidfd(req.tid), req.target_fd)
        src = -1
        placed = False
        count = 0
        try:
            src = _above(abi.pidfd_getfd(self_pidfd, req.host_fd), req.target_fd)
            os.dup2(src, req.target_fd, inheritable=False)
            placed = True
            for reg in req.regs:
                ep = _above(abi.pidfd_getfd(tpid, reg.epfd), req.target_fd)
                try:
                    ev = ctypes.create_string_buffer(_EVENT.pack(reg.events, reg.data), _EVENT.size)
                    if libc.epoll_ctl(ep, EPOLL_CTL_ADD, req.target_fd, ev) == 0:
                        count += 1
                finally:
                    os.close(ep)
        finally:
            if placed:
                os.close(req.target_fd)
            if src >= 0:
                os.close(src)
            os.close(tpid)
        return count


def _above(fd: int, limit: int) -> int:
    """Move ``fd`` above ``limit`` (so that dup2 onto ``limit`` cannot clobber it)."""
    if fd > limit:
        return fd
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, limit + 1)
    os.close(fd)
    return new

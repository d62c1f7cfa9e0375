"""Access to a notified target thread: pidfd, close-on-exec state and epoll registrations.

``notif.pid`` is a *thread* id. Handles opened here are only trusted after
the notification was found still valid (``NOTIF_ID_VALID``) afterwards: then
the thread they name is provably the one blocked in the syscall.
"""

from __future__ import annotations

import errno
import os
import re

import attrs

from . import abi

_EPOLL_LINK = "anon_inode:[eventpoll]"
_TFD = re.compile(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+).*?\bino:\s*([0-9a-f]+)")


def tgid_of(tid: int) -> int:
    with open(f"/proc/{tid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)


def open_pidfd(tid: int) -> int:
    """A pidfd usable with pidfd_getfd for thread ``tid`` (PIDFD_THREAD, else its thread group)."""
    return _open_pidfd(tid)[0]


def _open_pidfd(tid: int) -> tuple[int, bool]:
    """(pidfd, is a thread pidfd) for thread ``tid``."""
    try:
        return abi.pidfd_open(tid, abi.PIDFD_THREAD), True
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return abi.pidfd_open(tgid_of(tid)), False


class PidfdCache:
    """Thread pidfds by TID, kept across notifications: saves a pidfd_open/close per connect.

    Why a kept pidfd still names the right thread: a pidfd refers to one
    ``struct pid``, whose number never changes. While a task is attached to
    it, no other live task can have that number; once its tasks are gone it
    is never attached again (a later thread with the same TID gets a new
    ``struct pid``), and ``pidfd_getfd`` on it fails with ESRCH, after which
    the entry is reopened. So a copy taken through an entry for TID ``T``
    comes from the task that had ``T`` at that moment; the caller's
    ``NOTIF_ID_VALID`` afterwards proves that task is the blocked one, exactly
    as for a freshly opened pidfd.

    Only PIDFD_THREAD pidfds (Linux 6.9+) are kept. The fallback, a pidfd of
    the thread *group* found through /proc, is not tied to the TID, so it is
    opened for each use and closed by the caller (``getfd`` does that itself).
    """

    MAX_ENTRIES = 64  # each entry is an fd of the supervisor process

    def __init__(self) -> None:
        self._fds: dict[int, int] = {}

    def getfd(self, tid: int, fd: int) -> int:
        """A copy of thread ``tid``'s ``fd`` (``pidfd_getfd``); raises OSError."""
        pidfd = self._fds.get(tid)
        if pidfd is not None:
            try:
                return abi.pidfd_getfd(pidfd, fd)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
            del self._fds[tid]  # that thread is gone: the TID was reused
            os.close(pidfd)
        pidfd, is_thread = _open_pidfd(tid)
        if not is_thread:
            try:
                return abi.pidfd_getfd(pidfd, fd)
            finally:
                os.close(pidfd)
        if len(self._fds) >= self.MAX_ENTRIES:
            self.close()
        self._fds[tid] = pidfd
        return abi.pidfd_getfd(pidfd, fd)

    def close(self) -> None:
        for pidfd in self._fds.values():
            os.close(pidfd)
        self._fds.clear()


def fd_flags(tid: int, fd: int) -> int:
    """The ``flags:`` of the target's ``fd`` in fdinfo: the file's status flags plus O_CLOEXEC.

    The only place where the target's close-on-exec flag can be read
    (pidfd_getfd copies always say CLOEXEC); O_NONBLOCK comes with it.
    """
    f = os.open(f"/proc/{tid}/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        text = os.read(f, 4096)
    finally:
        os.close(f)
    start = text.find(b"flags:")
    if start < 0:
        raise OSError(errno.EINVAL, f"no flags in /proc/{tid}/fdinfo/{fd}")
    return int(text[start + 6 :].split(None, 1)[0], 8)


@attrs.frozen
class EpollRegistration:
    """One epoll item watching the target's fd: (epoll fd in the target, events mask, data)."""

    epfd: int
    events: int
    data: int


def parse_epoll_fdinfo(text: str, fd: int, inode: int) -> list[tuple[int, int]]:
    """(events, data) of the items in an epoll fdinfo that watch (``fd``, file ``inode``)."""
    found = []
    for m in _TFD.finditer(text):
        if int(m.group(1)) == fd and int(m.group(4), 16) == inode:
            found.append((int(m.group(2), 16), int(m.group(3), 16)))
    return found


def epoll_fds(tid: int) -> list[int]:
    """The fd numbers of the target's epoll instances (a scan of /proc/TID/fd)."""
    base = f"/proc/{tid}/fd"
    found = []
    try:
        names = os.listdir(base)
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"{base}/{name}") == _EPOLL_LINK:
                found.append(int(name))
        except OSError:
            continue
    return found


def epoll_registrations(tid: int, fd: int, inode: int, epfds: list[int] | None = None) -> list[EpollRegistration]:
    """Every epoll item (in ``epfds``, default: all epoll fds) watching (``fd``, ``inode``)."""
    regs: list[EpollRegistration] = []
    for epfd in epoll_fds(tid) if epfds is None else epfds:
        if abi.kcmp_epoll_tfd(tid, fd, epfd) == errno.ENOENT:
            continue  # one syscall instead of reading and parsing the epoll's fdinfo
        try:
            with open(f"/proc/{tid}/fdinfo/{epfd}") as fh:
                text = fh.read()
        except OSError:
            continue
        regs += [EpollRegistration(epfd, ev, data) for ev, data in parse_epoll_fdinfo(text, fd, inode)]
    return regs


class EpollFdCache:
    """Per-thread cache of epoll fd numbers, valid until the sandbox creates another epoll.

    Every ``epoll_create*`` of the sandbox is trapped and calls :meth:`invalidate`.
    Not seen: an epoll fd that a thread gets by dup() or SCM_RIGHTS after its
    last scan (documented limitation), and pid reuse (the cache is bounded).
    """

    MAX_ENTRIES = 4096

    def __init__(self) -> None:
        self._gen = 0
        self._cache: dict[int, tuple[int, list[int]]] = {}

    def invalidate(self) -> None:
        self._gen += 1

    def get(self, tid: int) -> list[int]:
        hit = self._cache.get(tid)
        if hit is not None and hit[0] == self._gen:
            return hit[1]
        if len(self._cache) >= self.MAX_ENTRIES:
            self._cache.clear()
        fds = epoll_fds(tid)
        self._cache[tid] = (self._gen, fds)
        return fds

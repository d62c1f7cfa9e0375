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
    try:
        return abi.pidfd_open(tid, abi.PIDFD_THREAD)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    return abi.pidfd_open(tgid_of(tid))


def fd_cloexec(tid: int, fd: int) -> bool:
    """The target's close-on-exec flag for ``fd`` (pidfd_getfd copies always say CLOEXEC)."""
    f = os.open(f"/proc/{tid}/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        text = os.read(f, 4096)
    finally:
        os.close(f)
    start = text.find(b"flags:")
    if start < 0:
        return False
    return bool(int(text[start + 6 :].split(None, 1)[0], 8) & abi.O_CLOEXEC_FDINFO)


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

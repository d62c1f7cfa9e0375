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
    with open(f"/proc/{tid}/fdinfo/{fd}", "rb") as fh:
        for line in fh:
            if line.startswith(b"flags:"):
                return bool(int(line.split()[1], 8) & abi.O_CLOEXEC_FDINFO)
    return False


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


def epoll_registrations(tid: int, fd: int, inode: int) -> list[EpollRegistration]:
    """Every epoll item of the target's fd table that watches (``fd``, ``inode``)."""
    regs: list[EpollRegistration] = []
    base = f"/proc/{tid}"
    try:
        names = os.listdir(f"{base}/fd")
    except OSError:
        return regs
    for name in names:
        try:
            if os.readlink(f"{base}/fd/{name}") != _EPOLL_LINK:
                continue
            with open(f"{base}/fdinfo/{name}") as fh:
                text = fh.read()
        except OSError:
            continue
        regs += [EpollRegistration(int(name), ev, data) for ev, data in parse_epoll_fdinfo(text, fd, inode)]
    return regs

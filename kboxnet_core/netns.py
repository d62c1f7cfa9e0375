"""Linux namespace helpers (ctypes: Python 3.11 has no ``os.setns``)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
from collections.abc import Iterator

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFTXQLEN = 0x8943
IFF_UP = 0x1


def setns(fd: int, nstype: int = 0) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def mount(src: str, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    """mount(2); an OSError naming both paths on failure."""
    if _libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {src} on {target}: {os.strerror(err)}")


@contextlib.contextmanager
def entered_netns(path: str) -> Iterator[None]:
    """Run the body with this *thread* inside the network namespace at ``path``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target, CLONE_NEWNET)
        try:
            yield
        finally:
            setns(own, CLONE_NEWNET)
    finally:
        os.close(own)
        os.close(target)


def _ifreq(ifname: str, fmt: str, *values: int) -> bytes:
    return struct.pack("16s" + fmt, ifname.encode(), *values).ljust(40, b"\0")


def set_link(ifname: str, *, mtu: int | None = None, up: bool | None = None, txqueuelen: int | None = None) -> None:
    """Set MTU, up/down and TX queue length of an interface in the current netns."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if mtu is not None:
            fcntl.ioctl(s, SIOCSIFMTU, _ifreq(ifname, "i", mtu))
        if txqueuelen is not None:
            fcntl.ioctl(s, SIOCSIFTXQLEN, _ifreq(ifname, "i", txqueuelen))
        if up is not None:
            res = fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(ifname, "H", 0))
            (flags,) = struct.unpack_from("H", res, 16)
            flags = flags | IFF_UP if up else flags & ~IFF_UP
            fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(ifname, "H", flags))

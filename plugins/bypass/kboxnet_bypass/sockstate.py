"""What a target socket is, and which of its settings move to the host socket that replaces it.

Options are copied only when they differ from a pristine socket of the same
family created in the *namespace* (the child sends two such probes): copying
everything would, e.g., lock buffer sizes and disable autotuning. Options
that mean host-side privilege or routing (SO_MARK, SO_BINDTODEVICE,
IP_TRANSPARENT, ...) are never copied; a socket with a mark, a bound device
or a bound address is not eligible at all.
"""

from __future__ import annotations

import _socket
import socket
import struct
from itertools import starmap

import attrs

from . import abi

IPPROTO_TCP = socket.IPPROTO_TCP
IPPROTO_IP = socket.IPPROTO_IP
IPPROTO_IPV6 = socket.IPPROTO_IPV6
SOL_SOCKET = socket.SOL_SOCKET
SO_RCVBUF, SO_SNDBUF = 8, 7
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32
_U64 = struct.Struct("=Q")
_WILDCARDS = ("0.0.0.0", "::")


@attrs.frozen
class SockOpt:
    """One copyable option: read with ``size`` bytes, written as read (buffers halved)."""

    level: int
    name: int
    size: int = 4
    label: str = ""


_OPTS_COMMON = (
    SockOpt(SOL_SOCKET, 9, label="SO_KEEPALIVE"),
    SockOpt(SOL_SOCKET, SO_RCVBUF, label="SO_RCVBUF"),
    SockOpt(SOL_SOCKET, SO_SNDBUF, label="SO_SNDBUF"),
    SockOpt(SOL_SOCKET, 13, 8, "SO_LINGER"),
    SockOpt(SOL_SOCKET, 20, 16, "SO_RCVTIMEO"),
    SockOpt(SOL_SOCKET, 21, 16, "SO_SNDTIMEO"),
    SockOpt(SOL_SOCKET, 12, label="SO_PRIORITY"),
    SockOpt(SOL_SOCKET, 18, label="SO_RCVLOWAT"),
    SockOpt(SOL_SOCKET, 10, label="SO_OOBINLINE"),
    SockOpt(SOL_SOCKET, 47, 8, "SO_MAX_PACING_RATE"),
    SockOpt(SOL_SOCKET, 60, label="SO_ZEROCOPY"),
    SockOpt(SOL_SOCKET, 29, label="SO_TIMESTAMP"),
    SockOpt(IPPROTO_TCP, 1, label="TCP_NODELAY"),
    SockOpt(IPPROTO_TCP, 2, label="TCP_MAXSEG"),
    SockOpt(IPPROTO_TCP, 3, label="TCP_CORK"),
    SockOpt(IPPROTO_TCP, 4, label="TCP_KEEPIDLE"),
    SockOpt(IPPROTO_TCP, 5, label="TCP_KEEPINTVL"),
    SockOpt(IPPROTO_TCP, 6, label="TCP_KEEPCNT"),
    SockOpt(IPPROTO_TCP, 7, label="TCP_SYNCNT"),
    SockOpt(IPPROTO_TCP, 8, label="TCP_LINGER2"),
    SockOpt(IPPROTO_TCP, 10, label="TCP_WINDOW_CLAMP"),
    SockOpt(IPPROTO_TCP, 12, label="TCP_QUICKACK"),
    SockOpt(IPPROTO_TCP, 13, 16, "TCP_CONGESTION"),
    SockOpt(IPPROTO_TCP, 18, label="TCP_USER_TIMEOUT"),
    SockOpt(IPPROTO_TCP, 25, label="TCP_NOTSENT_LOWAT"),
)
_OPTS_V4 = (
    SockOpt(IPPROTO_IP, 1, label="IP_TOS"),
    SockOpt(IPPROTO_IP, 2, label="IP_TTL"),
    SockOpt(IPPROTO_IP, 10, label="IP_MTU_DISCOVER"),
    SockOpt(IPPROTO_IP, 11, label="IP_RECVERR"),
)
_OPTS_V6 = (
    SockOpt(IPPROTO_IPV6, 67, label="IPV6_TCLASS"),
    SockOpt(IPPROTO_IPV6, 16, label="IPV6_UNICAST_HOPS"),
    SockOpt(IPPROTO_IPV6, 26, label="IPV6_V6ONLY"),
    SockOpt(IPPROTO_IPV6, 23, label="IPV6_MTU_DISCOVER"),
    SockOpt(IPPROTO_IPV6, 25, label="IPV6_RECVERR"),
)


_BY_FAMILY = {
    socket.AF_INET: _OPTS_COMMON + _OPTS_V4,
    socket.AF_INET6: _OPTS_COMMON + _OPTS_V6,
}
_PLAIN = {fam: tuple((o.level, o.name, o.size) for o in opts) for fam, opts in _BY_FAMILY.items()}
SO_SNDTIMEO_INDEX = _OPTS_COMMON.index(SockOpt(SOL_SOCKET, 21, 16, "SO_SNDTIMEO"))


def copyable_options(family: int) -> tuple[SockOpt, ...]:
    return _BY_FAMILY[socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET]


#: option values in :func:`copyable_options` order; None where the kernel refused to read it
Snapshot = tuple


def snapshot(fd: int, family: int) -> Snapshot:
    """Read every copyable option of ``fd`` (one getsockopt per option)."""
    sk = abi.borrow_socket(fd)
    if sk is None:
        read = abi.getsockopt_or_none
        plain = _PLAIN[socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET]
        return tuple(read(fd, level, name, size) for level, name, size in plain)
    try:
        return _snapshot_borrowed(sk, family)
    finally:
        sk.detach()


def _snapshot_borrowed(sk: _socket.socket, family: int) -> Snapshot:
    """The hot path of :func:`snapshot`: the loop runs in C unless an option is refused."""
    plain = _PLAIN[socket.AF_INET6 if family == socket.AF_INET6 else socket.AF_INET]
    get = sk.getsockopt
    try:
        return tuple(starmap(get, plain))
    except OSError:
        pass
    values: list[bytes | None] = []
    for level, name, size in plain:
        try:
            values.append(get(level, name, size))
        except OSError:
            values.append(None)
    return tuple(values)


def differing(target: Snapshot, pristine: Snapshot | None, family: int) -> list[tuple[SockOpt, bytes]]:
    """Options whose value on the target differs from a pristine namespace socket."""
    if target == pristine:
        return []  # the common case: nothing was set before connect()
    opts = copyable_options(family)
    if not pristine:
        pristine = (None,) * len(opts)
    return [(opt, value) for opt, value, base in zip(opts, target, pristine) if value is not None and value != base]


def apply(fd: int, changes: list[tuple[SockOpt, bytes]]) -> list[str]:
    """Set ``changes`` on host socket ``fd``; returns the labels that could not be set."""
    failed: list[str] = []
    for opt, value in changes:
        level, name = opt.level, opt.name
        if level == SOL_SOCKET and name in (SO_RCVBUF, SO_SNDBUF):
            # getsockopt reports twice what was asked for; FORCE keeps values above the sysctl max
            name = SO_RCVBUFFORCE if name == SO_RCVBUF else SO_SNDBUFFORCE
            value = struct.pack("=i", struct.unpack("=i", value)[0] // 2)
        if opt.label == "TCP_CONGESTION":
            value = value.split(b"\0", 1)[0]
        try:
            abi.setsockopt_bytes(fd, level, name, value)
        except OSError:
            failed.append(opt.label)
    return failed


@attrs.frozen
class SocketInfo:
    """What the supervisor needs to know about a target socket (read from its own copy)."""

    domain: int
    type: int
    protocol: int
    cookie: int
    connected: bool
    bound: bool
    has_device: bool
    mark: int

    @property
    def is_tcp(self) -> bool:
        return (
            self.domain in (socket.AF_INET, socket.AF_INET6)
            and self.type == socket.SOCK_STREAM
            and self.protocol in (0, IPPROTO_TCP)
        )


def _is_bound(raw: bytes) -> bool:
    """A sockaddr with a non-wildcard address or a non-zero port."""
    if len(raw) < 4:
        return False
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET:
        return raw[2:8] != bytes(6)
    if family == socket.AF_INET6:
        return raw[2:4] != bytes(2) or raw[8:24] != bytes(16)
    return True


def inspect(fd: int) -> SocketInfo | None:
    """Describe the socket behind ``fd``; None when it is not a socket."""
    return inspect_with_options(fd, False)[0]


def inspect_with_options(fd: int, with_options: bool) -> tuple[SocketInfo | None, Snapshot | None]:
    """:func:`inspect`, plus (when ``with_options`` and the socket is TCP) its :func:`snapshot`.

    One borrowed socket object serves both: this runs for every bypassed connect().
    """
    sk = abi.borrow_socket(fd, detect=True)
    if sk is None:
        info = _inspect_raw(fd)
        want = with_options and info is not None and info.is_tcp
        return info, snapshot(fd, info.domain) if want and info is not None else None
    try:
        info = _inspect_borrowed(sk)
        if with_options and info is not None and info.is_tcp:
            return info, _snapshot_borrowed(sk, info.domain)
        return info, None
    finally:
        sk.detach()


def _inspect_borrowed(sk: _socket.socket) -> SocketInfo:
    """:func:`inspect` on a socket object made with ``borrow_socket(fd, detect=True)``."""
    get = sk.getsockopt
    domain, type_, proto = sk.family, sk.type, sk.proto
    try:
        cookie = _U64.unpack(get(SOL_SOCKET, abi.SO_NETNS_COOKIE, 8))[0]
    except (OSError, struct.error):
        cookie = 0
    if domain not in (socket.AF_INET, socket.AF_INET6):
        return SocketInfo(domain, type_, proto, cookie, False, False, False, 0)
    device = get(SOL_SOCKET, abi.SO_BINDTODEVICE, 16).strip(b"\0") != b""
    mark = get(SOL_SOCKET, abi.SO_MARK)
    try:
        host, port = sk.getsockname()[:2]
        bound = port != 0 or host not in _WILDCARDS
    except (OSError, ValueError):
        bound = True  # cannot tell: treat as bound (stays in the namespace)
    connected = False
    if bound:  # connect() and listen() bind a port: an unbound socket is not connected
        try:
            sk.getpeername()
            connected = True
        except OSError:  # ENOTCONN
            pass
    return SocketInfo(domain, type_, proto, cookie, connected, bound, device, mark)


def _inspect_raw(fd: int) -> SocketInfo | None:
    read = abi.getsockopt_or_none
    dom = read(fd, SOL_SOCKET, abi.SO_DOMAIN, 4)
    if dom is None:
        return None
    domain = _int(dom)
    type_ = _int(read(fd, SOL_SOCKET, abi.SO_TYPE, 4))
    proto = _int(read(fd, SOL_SOCKET, abi.SO_PROTOCOL, 4))
    raw_cookie = read(fd, SOL_SOCKET, abi.SO_NETNS_COOKIE, 8)
    cookie = struct.unpack("=Q", raw_cookie)[0] if raw_cookie and len(raw_cookie) == 8 else 0
    if domain not in (socket.AF_INET, socket.AF_INET6):
        return SocketInfo(domain, type_, proto, cookie, False, False, False, 0)
    connected = abi.sock_name(fd, peer=True) is not None
    name = abi.sock_name(fd)
    bound = True if name is None else _is_bound(name)
    device = (read(fd, SOL_SOCKET, abi.SO_BINDTODEVICE, 16) or b"").strip(b"\0") != b""
    mark = _int(read(fd, SOL_SOCKET, abi.SO_MARK, 4))
    return SocketInfo(domain, type_, proto, cookie, connected, bound, device, mark)


def _int(raw: bytes | None) -> int:
    if not raw or len(raw) < 4:
        return 0
    return struct.unpack_from("=i", raw)[0]

"""Kernel ABI for seccomp user notification on x86_64: constants, structs, thin wrappers.

Everything goes through ``ctypes`` (raw ``syscall``) and ``fcntl.ioctl``; no
libseccomp. Struct layouts and ioctl numbers are those of the kernel UAPI
(``linux/seccomp.h``); the numbers below are for x86_64 only, which
:func:`kboxnet_bypass.probe.probe_kernel` checks before anything is used.
"""

from __future__ import annotations

import _socket
import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
import threading

import attrs

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_tls = threading.local()  # per-thread reusable ctypes buffers for the hot path
_raw_syscall = _libc.syscall
_raw_syscall.restype = ctypes.c_long
_L = ctypes.c_long


def _syscall(nr: int, *args: object) -> int:
    """``syscall(2)`` with every integer passed as a full ``long``.

    syscall() is variadic: a Python int would go as a C int, leaving the upper
    half of the 64-bit register undefined (seen as EINVAL from process_vm_readv).
    """
    return _raw_syscall(_L(nr), *(_L(a) if isinstance(a, int) else a for a in args))

# --- syscall numbers (x86_64 native table) ---------------------------------------------------
NR_SECCOMP = 317
NR_PIDFD_OPEN = 434
NR_PIDFD_GETFD = 438
NR_PROCESS_VM_READV = 310
NR_KCMP = 312
KCMP_EPOLL_TFD = 7
NR_X86_64 = {
    "socket": 41,
    "connect": 42,
    "sendto": 44,
    "sendmsg": 46,
    "bind": 49,
    "listen": 50,
    "sendmmsg": 307,
    "io_uring_setup": 425,
    "epoll_create": 213,
    "epoll_create1": 291,
}
#: i386 table (a 64-bit task can use it through ``int 0x80``).
NR_I386 = {
    "socketcall": 102,
    "bind": 361,
    "connect": 362,
    "listen": 363,
    "sendto": 369,
    "sendmsg": 370,
    "sendmmsg": 345,
    "io_uring_setup": 425,
}
X32_SYSCALL_BIT = 0x40000000

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003

# --- seccomp -------------------------------------------------------------------------------------
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_NOTIF_SIZES = 3
SECCOMP_FILTER_FLAG_NEW_LISTENER = 8
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 0x20
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SECCOMP_ADDFD_FLAG_SETFD = 1
SECCOMP_ADDFD_FLAG_SEND = 2

SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102
SECCOMP_IOCTL_NOTIF_ADDFD = 0x40182103
SECCOMP_IOCTL_NOTIF_SET_FLAGS = 0x40082104
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1

PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_FILES = 0x00000400
CLONE_FS = 0x00000200
PIDFD_THREAD = os.O_EXCL

# --- sockets -------------------------------------------------------------------------------------
SOL_SOCKET = 1
SO_TYPE = 3
SO_BINDTODEVICE = 25
SO_MARK = 36
SO_PROTOCOL = 38
SO_DOMAIN = 39
SO_NETNS_COOKIE = 71
MSG_FASTOPEN = 0x20000000
O_CLOEXEC_FDINFO = 0o2000000  # the ``flags:`` line of /proc/PID/fdinfo/FD is octal

_NOTIF = struct.Struct("=QII iIQ6Q")  # seccomp_notif: id, pid, flags, seccomp_data
_RESP = struct.Struct("=QqiI")  # seccomp_notif_resp: id, val, error, flags
_ADDFD = struct.Struct("=QIIII")  # seccomp_notif_addfd: id, flags, srcfd, newfd, newfd_flags
_U64 = struct.Struct("=Q")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


@attrs.frozen
class Notification:
    """One ``struct seccomp_notif``: a syscall of a target thread waiting for our answer.

    :ivar id: the notification cookie (valid until we reply or the task dies).
    :ivar pid: the *thread* id of the caller (in our pid namespace).
    :ivar nr: syscall number; :ivar arch: AUDIT_ARCH_* of the entry point.
    :ivar args: the six raw register arguments.
    """

    id: int
    pid: int
    nr: int
    arch: int
    args: tuple[int, ...]


def notif_recv(listener: int) -> Notification:
    """``SECCOMP_IOCTL_NOTIF_RECV`` (the buffer must be zeroed)."""
    buf = bytearray(_NOTIF.size)
    fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    nid, pid, _flags, nr, arch, _ip, *args = _NOTIF.unpack(buf)
    return Notification(nid, pid, nr, arch, tuple(args))


def notif_id_valid(listener: int, nid: int) -> bool:
    """``SECCOMP_IOCTL_NOTIF_ID_VALID``: is the target still blocked in this call?"""
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, _U64.pack(nid))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def notif_send(listener: int, nid: int, val: int = 0, err: int = 0, cont: bool = False) -> bool:
    """Answer a notification: return ``val``, fail with ``err`` (positive errno), or CONTINUE.

    Returns False when the target is gone (or was interrupted) and the answer was dropped.
    """
    flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE if cont else 0
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, _RESP.pack(nid, val, -err, flags))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def notif_addfd(listener: int, nid: int, srcfd: int, newfd: int, cloexec: bool) -> int:
    """``SECCOMP_IOCTL_NOTIF_ADDFD`` with SETFD: install ``srcfd`` at ``newfd`` in the target."""
    flags = os.O_CLOEXEC if cloexec else 0
    req = _ADDFD.pack(nid, SECCOMP_ADDFD_FLAG_SETFD, srcfd, newfd, flags)
    return fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, bytearray(req), True)


def notif_set_sync_wakeup(listener: int) -> bool:
    """Ask for synchronous wake-ups of the target (Linux 6.6+); False when unsupported."""
    try:
        fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
    except OSError:
        return False
    return True


def notif_addfd_send(listener: int, nid: int, srcfd: int, cloexec: bool) -> int:
    """ADDFD with SEND: install ``srcfd`` at the lowest free fd and answer with that number."""
    flags = os.O_CLOEXEC if cloexec else 0
    req = _ADDFD.pack(nid, SECCOMP_ADDFD_FLAG_SEND, srcfd, 0, flags)
    return fcntl.ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, bytearray(req), True)


def epoll_create() -> int:
    return _check(_libc.epoll_create1(os.O_CLOEXEC), "epoll_create1")


# --- process helpers -----------------------------------------------------------------------------


def seccomp_install(prog: bytes, flags: int) -> int:
    """``seccomp(SECCOMP_SET_MODE_FILTER, flags, prog)``; returns the listener fd (NEW_LISTENER)."""

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    return _check(_syscall(NR_SECCOMP, SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(fprog)), "seccomp")


def notif_sizes() -> tuple[int, int, int]:
    """``SECCOMP_GET_NOTIF_SIZES``: (notif, resp, data) sizes; raises when unsupported."""
    sizes = (ctypes.c_uint16 * 3)()
    _check(_syscall(NR_SECCOMP, SECCOMP_GET_NOTIF_SIZES, 0, ctypes.byref(sizes)), "seccomp")
    return sizes[0], sizes[1], sizes[2]


def no_new_privs() -> None:
    one, zero = ctypes.c_ulong(1), ctypes.c_ulong(0)  # prctl is variadic: pass full longs
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, one, zero, zero, zero), "prctl(NO_NEW_PRIVS)")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def pidfd_open(pid: int, flags: int = 0) -> int:
    return os.pidfd_open(pid, flags)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A copy (close-on-exec) of ``targetfd`` of the task behind ``pidfd`` (hot path: no generic wrapper)."""
    return _check(_raw_syscall(_NR_GETFD, _L(pidfd), _L(targetfd), _ZERO), "pidfd_getfd")


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_NR_VM, _ONE, _ZERO = _L(NR_PROCESS_VM_READV), _L(1), _L(0)
_NR_GETFD = _L(NR_PIDFD_GETFD)
_NR_KCMP, _KCMP_EPOLL_TFD = _L(NR_KCMP), _L(KCMP_EPOLL_TFD)
_KCMP_SLOT = struct.Struct("=III")  # struct kcmp_epoll_slot: efd, tfd, toff


def kcmp_epoll_tfd(pid: int, fd: int, epfd: int) -> int:
    """``kcmp(KCMP_EPOLL_TFD)``: is task ``pid``'s ``fd`` registered as ``fd`` in its epoll ``epfd``?

    Returns 0 when it is (the first item for that fd number is this file),
    ENOENT when no item for that fd number exists, -1 when the first item is
    another file, and another errno when kcmp cannot tell (no CONFIG_KCMP, no
    access, ...).
    """
    try:
        slot = _tls.kcmp
    except AttributeError:
        slot = _tls.kcmp = ctypes.create_string_buffer(_KCMP_SLOT.size)
    _KCMP_SLOT.pack_into(slot, 0, epfd, fd, 0)
    ret = _raw_syscall(_NR_KCMP, _L(pid), _L(pid), _KCMP_EPOLL_TFD, _L(fd), slot)
    if ret < 0:
        return ctypes.get_errno() or errno.EINVAL
    return 0 if ret == 0 else -1


def _vm_state() -> tuple:
    try:
        return _tls.vm
    except AttributeError:
        buf = ctypes.create_string_buffer(4096)
        local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), 0)
        remote = _IoVec(0, 0)
        _tls.vm = (buf, local, remote, ctypes.byref(local), ctypes.byref(remote))
        return _tls.vm


def read_target_memory(pid: int, addr: int, size: int) -> bytes:
    """``process_vm_readv``: copy ``size`` (<= 4096) bytes at ``addr`` out of task ``pid``."""
    if size > 4096:
        raise ValueError("read_target_memory: at most 4096 bytes")
    buf, local, remote, plocal, premote = _vm_state()
    local.len = remote.len = size
    remote.base = addr
    n = _check(_raw_syscall(_NR_VM, _L(pid), plocal, _ONE, premote, _ONE, _ZERO), "process_vm_readv")
    return ctypes.string_at(buf, n)  # not buf.raw[:n]: that copies the whole buffer first


# --- socket helpers on raw fds (never wrap a target's fd in socket.socket) ----------------------


def getsockopt_bytes(fd: int, level: int, opt: int, size: int) -> bytes:
    buf = ctypes.create_string_buffer(size)
    ln = ctypes.c_uint32(size)
    _check(_libc.getsockopt(fd, level, opt, buf, ctypes.byref(ln)), "getsockopt")
    return buf.raw[: ln.value]


_getsockopt = _libc.getsockopt


def getsockopt_or_none(fd: int, level: int, opt: int, size: int) -> bytes | None:
    """Fast getsockopt (a per-thread buffer, no exception); None when the kernel refuses."""
    try:
        buf, ln, lnp = _tls.gso
    except AttributeError:
        ln = ctypes.c_uint32(0)
        buf, lnp = ctypes.create_string_buffer(64), ctypes.byref(ln)
        _tls.gso = (buf, ln, lnp)
    ln.value = size
    if _getsockopt(fd, level, opt, buf, lnp) != 0:
        return None
    return buf.raw[: ln.value]


def borrow_socket(fd: int, detect: bool = False) -> _socket.socket | None:
    """A socket object on ``fd`` for fast getsockopt; the caller must ``detach()`` it.

    With ``detect``, the object reads the socket's family, type and protocol
    itself (``.family``, ``.type``, ``.proto``: one getsockname and two
    getsockopt calls in C).

    The C type, not ``socket.socket``: its Python ``__init__`` costs more than
    the getsockopt calls it is borrowed for. Declared AF_INET6 whatever the
    socket is: the object sizes its getsockname/getpeername buffer by the
    declared family, and a sockaddr_in6 buffer holds both (a sockaddr_in one
    would truncate an IPv6 address). None when a global default timeout is
    set: wrapping would then switch the *shared* file to non-blocking, which
    the target would see.
    """
    if socket.getdefaulttimeout() is not None:
        return None
    try:
        if detect:
            return _socket.socket(-1, -1, -1, fd)
        return _socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 0, fd)
    except OSError:  # ENOTSOCK (the constructor checks with getsockname): callers use the raw path
        return None


def getsockopt_int(fd: int, level: int, opt: int) -> int:
    return struct.unpack("=i", getsockopt_bytes(fd, level, opt, 4)[:4].ljust(4, b"\0"))[0]


def setsockopt_bytes(fd: int, level: int, opt: int, value: bytes) -> None:
    _check(_libc.setsockopt(fd, level, opt, value, len(value)), "setsockopt")


def netns_cookie(fd: int) -> int:
    return _U64.unpack(getsockopt_bytes(fd, SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]


def sock_name(fd: int, peer: bool = False) -> bytes | None:
    """Raw ``getsockname``/``getpeername``; None on error (ENOTCONN for an unconnected peer)."""
    try:
        buf, ln, lnp = _tls.name
    except AttributeError:
        ln = ctypes.c_uint32(0)
        buf, lnp = ctypes.create_string_buffer(128), ctypes.byref(ln)
        _tls.name = (buf, ln, lnp)
    ln.value = 128
    fn = _libc.getpeername if peer else _libc.getsockname
    if fn(fd, buf, lnp) != 0:
        return None
    return buf.raw[: ln.value]


def socket_raw(family: int, type_: int, proto: int) -> int:
    """``socket()``; returns the fd (through ``_socket``, cheaper than a ctypes call)."""
    if not type_ & socket.SOCK_NONBLOCK and socket.getdefaulttimeout() is not None:
        # the socket object would make the file non-blocking for its default timeout
        return _check(_libc.socket(family, type_, proto), "socket")
    return _socket.socket(family, type_, proto).detach()


def connect_raw(fd: int, addr: bytes) -> int:
    """``connect`` with a raw sockaddr; returns 0 or a positive errno (like ``connect_ex``)."""
    if _libc.connect(fd, addr, len(addr)) == 0:
        return 0
    return ctypes.get_errno()


def listen_raw(fd: int, backlog: int) -> int:
    """``listen``; returns 0 or a positive errno."""
    if _libc.listen(fd, backlog) == 0:
        return 0
    return ctypes.get_errno()

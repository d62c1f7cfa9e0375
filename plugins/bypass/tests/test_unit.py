"""Unit tests: the BPF filter's decisions, sockaddr parsing, policy, config, fdinfo parsing, probe."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest
from kboxnet_bypass import abi
from kboxnet_bypass.bpf import SECCOMP_RET_KILL_PROCESS, build_filter, run_filter
from kboxnet_bypass.config import BypassConfig
from kboxnet_bypass.policy import Destination, parse_sockaddr
from kboxnet_bypass.probe import kernel_version, safe_probe
from kboxnet_bypass.target import parse_epoll_fdinfo

X64, I386 = abi.AUDIT_ARCH_X86_64, abi.AUDIT_ARCH_I386
NOTIFY = abi.SECCOMP_RET_USER_NOTIF
ALLOW = abi.SECCOMP_RET_ALLOW


def errno_ret(e: int) -> int:
    return abi.SECCOMP_RET_ERRNO | e


@pytest.fixture(scope="module")
def prog() -> bytes:
    return build_filter()


@pytest.mark.parametrize("name", ["connect", "bind", "listen"])
def test_filter_notifies_native_socket_calls(prog, name):
    assert run_filter(prog, abi.NR_X86_64[name], X64) == NOTIFY


def test_filter_allows_the_rest(prog):
    for nr in (0, 1, abi.NR_X86_64["socket"], 43, 45, 59, 231):
        assert run_filter(prog, nr, X64) == ALLOW


def test_filter_fastopen_sends(prog):
    for name, argi in (("sendto", 3), ("sendmmsg", 3), ("sendmsg", 2)):
        args = [0] * 6
        args[argi] = abi.MSG_FASTOPEN | 0x40  # with another flag set too
        assert run_filter(prog, abi.NR_X86_64[name], X64, args) == errno_ret(errno.EOPNOTSUPP)
        args[argi] = 0x40
        assert run_filter(prog, abi.NR_X86_64[name], X64, args) == ALLOW


def test_filter_io_uring_and_x32(prog):
    assert run_filter(prog, abi.NR_X86_64["io_uring_setup"], X64) == errno_ret(errno.ENOSYS)
    for nr in (abi.NR_X86_64["connect"], 0, 59):
        assert run_filter(prog, nr | abi.X32_SYSCALL_BIT, X64) == errno_ret(errno.ENOSYS)


def test_filter_i386(prog):
    for nr in abi.NR_I386.values():
        assert run_filter(prog, nr, I386) == errno_ret(errno.ENOSYS)
    assert run_filter(prog, 20, I386) == ALLOW  # getpid
    assert run_filter(prog, 359, I386) == ALLOW  # socket: harmless, its connect is refused


def test_filter_unknown_arch_killed(prog):
    assert run_filter(prog, 42, 0xC00000B7) == SECCOMP_RET_KILL_PROCESS  # aarch64


def test_parse_sockaddr_v4_v6():
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 8080) + bytes([10, 0, 0, 1]) + bytes(8)
    d = parse_sockaddr(raw)
    assert d == Destination(socket.AF_INET, ipaddress.ip_address("10.0.0.1"), 8080)
    assert d.sockaddr() == raw
    assert parse_sockaddr(raw[:15]) is None  # too short for the kernel too
    v6 = ipaddress.IPv6Address("::ffff:127.0.0.1")
    raw6 = struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 443, 7) + v6.packed + struct.pack("=I", 0)
    d6 = parse_sockaddr(raw6)
    assert d6.port == 443 and d6.flowinfo == 7 and d6.policy_address == ipaddress.ip_address("127.0.0.1")
    assert parse_sockaddr(raw6[:24]).scope_id == 0
    assert parse_sockaddr(struct.pack("=H", 0) + bytes(14)) is None


def _dest(addr: str, port: int) -> Destination:
    a = ipaddress.ip_address(addr)
    return Destination(socket.AF_INET if a.version == 4 else socket.AF_INET6, a, port)


def test_default_policy_denies_loopback_linklocal_and_own_networks():
    pol = BypassConfig().policy(("10.0.2.0/24", "[fd00::/64]"))
    assert pol.permits(_dest("93.184.216.34", 443))
    assert pol.permits(_dest("2001:db8::1", 80))
    for addr in ("127.0.0.1", "127.9.9.9", "::1", "169.254.1.1", "fe80::1", "0.0.0.0", "10.0.2.2", "fd00::2",
                 "::ffff:127.0.0.1", "::ffff:10.0.2.3"):
        assert not pol.permits(_dest(addr, 80)), addr


def test_allow_and_deny_rules_with_ports():
    pol = BypassConfig(allow=["127.0.0.1:8000-8080", "[::1]:443"], deny=["127.0.0.1:8001"]).policy()
    assert pol.permits(_dest("127.0.0.1", 8000)) and pol.permits(_dest("127.0.0.1", 8080))
    assert not pol.permits(_dest("127.0.0.1", 8001))  # deny wins
    assert not pol.permits(_dest("127.0.0.1", 8081))
    assert pol.permits(_dest("::1", 443)) and not pol.permits(_dest("::1", 444))
    assert pol.permits(_dest("::ffff:127.0.0.1", 8000))  # mapped judged as v4


def test_config_rejects_bad_rules():
    with pytest.raises(ValueError):
        BypassConfig(allow=["10.0.0.0/8:99999"])
    with pytest.raises(ValueError):
        BypassConfig(deny=["not-an-address"])
    assert BypassConfig(allow=["10.0.0.0/8"]).allow == ("10.0.0.0/8",)


def test_parse_epoll_fdinfo():
    text = (
        "pos:\t0\nflags:\t02\nmnt_id:\t15\nino:\t1057\n"
        "tfd:        5 events:       19 data:                5  pos:0 ino:3d0e sdev:8\n"
        "tfd:        7 events: 80000001 data:     deadbeef0007  pos:0 ino:3d0f sdev:8\n"
    )
    assert parse_epoll_fdinfo(text, 5, 0x3D0E) == [(0x19, 5)]
    assert parse_epoll_fdinfo(text, 7, 0x3D0F) == [(0x80000001, 0xDEADBEEF0007)]
    assert parse_epoll_fdinfo(text, 5, 0x3D0F) == []


def test_kernel_version_and_probe_never_raise():
    assert kernel_version("6.18.44-fc-v595") == (6, 18)
    assert kernel_version("garbage") == (0, 0)
    avail = safe_probe()
    assert isinstance(avail.available, bool) and avail.reason


def test_backend_registration():
    from kboxnet_bypass.plugin import HostBypassBackend, kboxnet_register_backends

    assert kboxnet_register_backends() == [HostBypassBackend]
    assert HostBypassBackend.name == "host-bypass" and HostBypassBackend.config_section == "bypass"
    assert HostBypassBackend.auto_select is False


def test_kcmp_epoll_tfd_tells_registered_from_not():
    import os
    import select

    watched, other = socket.socket(), socket.socket()
    ep = select.epoll()
    try:
        ep.register(watched.fileno(), select.EPOLLIN)
        got = abi.kcmp_epoll_tfd(os.getpid(), watched.fileno(), ep.fileno())
        if got in (errno.ENOSYS, errno.EPERM):
            pytest.skip(f"kcmp unavailable here ({errno.errorcode[got]}); the fdinfo is read instead")
        assert got == 0
        assert abi.kcmp_epoll_tfd(os.getpid(), other.fileno(), ep.fileno()) == errno.ENOENT
    finally:
        ep.close()
        watched.close()
        other.close()


def test_fd_flags_from_fdinfo():
    import os

    from kboxnet_bypass.target import fd_flags

    s = socket.socket()
    try:
        flags = fd_flags(os.getpid(), s.fileno())
        assert flags & abi.O_CLOEXEC_FDINFO and not flags & os.O_NONBLOCK  # Python's default
        s.setblocking(False)
        s.set_inheritable(True)
        flags = fd_flags(os.getpid(), s.fileno())
        assert flags & os.O_NONBLOCK and not flags & abi.O_CLOEXEC_FDINFO
    finally:
        s.close()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_inspect_agrees_with_the_raw_path(family):
    """The fast (borrowed socket object) inspection gives what the ctypes path gives."""
    from kboxnet_bypass import sockstate

    loop = "127.0.0.1" if family == socket.AF_INET else "::1"
    try:
        srv = socket.socket(family)
        srv.bind((loop, 0))
    except OSError:
        pytest.skip("no loopback for this family")
    srv.listen(1)
    fresh, bound, conn = socket.socket(family), socket.socket(family), socket.socket(family)
    bound.bind((loop, 0))
    conn.connect(srv.getsockname())
    fresh.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for sk, connected, is_bound in ((fresh, False, False), (bound, False, True), (conn, True, True),
                                        (srv, False, True)):
            info, snap = sockstate.inspect_with_options(sk.fileno(), True)
            assert info == sockstate._inspect_raw(sk.fileno())
            assert (info.connected, info.bound, info.domain) == (connected, is_bound, family)
            assert snap == sockstate.snapshot(sk.fileno(), family)
        with socket.socket(family) as pristine:
            base = sockstate.snapshot(pristine.fileno(), family)
        changed = sockstate.differing(sockstate.inspect_with_options(fresh.fileno(), True)[1], base, family)
        assert [opt.label for opt, _ in changed] == ["TCP_NODELAY"]
        assert sockstate.differing(base, base, family) == []
        udp = socket.socket(family, socket.SOCK_DGRAM)
        assert sockstate.inspect_with_options(udp.fileno(), True)[1] is None  # options only for TCP
        udp.close()
    finally:
        for sk in (srv, fresh, bound, conn):
            sk.close()


def test_inspect_of_a_non_socket():
    import os

    from kboxnet_bypass import sockstate

    r, w = os.pipe()
    try:
        assert sockstate.inspect_with_options(r, True) == (None, None)
    finally:
        os.close(r)
        os.close(w)


def test_pidfd_cache_reopens_after_the_thread_is_gone():
    import os
    import threading
    import time

    from kboxnet_bypass.target import PidfdCache

    s = socket.socket()
    cache = PidfdCache()
    tid: list[int] = []
    ready, done = threading.Event(), threading.Event()

    def worker() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    ready.wait(10)
    try:
        copy = cache.getfd(tid[0], s.fileno())
        assert os.fstat(copy).st_ino == os.fstat(s.fileno()).st_ino
        os.close(copy)
        kept = len(cache._fds)
        done.set()
        t.join()  # the Python thread is finished; the kernel task may still be exiting
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/self/task/{tid[0]}") and time.monotonic() < deadline:
            time.sleep(0.005)
        if kept == 0:
            pytest.skip("no PIDFD_THREAD on this kernel: nothing is kept")
        with pytest.raises(OSError):  # the kept pidfd is dead (ESRCH), and so is the TID
            cache.getfd(tid[0], s.fileno())
        assert tid[0] not in cache._fds
    finally:
        done.set()
        cache.close()
        s.close()

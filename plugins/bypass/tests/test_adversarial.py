"""Attempts to aim a host socket at a denied destination. Each must show 0 escapes.

"Denied destination" = the ``denied`` host loopback server of the ``servers``
fixture: the policy allows only the ``allowed`` server's port (and, where a
test needs one, a closed port). An escape is any connection that server accepts.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket

import pytest
from bypass_testlib import CLIENTS, PY, compile_c, run_bypassed

pytestmark = pytest.mark.netns

PYCLIENT = str(CLIENTS / "pyclient.py")
ENOSYS = -errno.ENOSYS
EOPNOTSUPP = errno.errorcode[errno.EOPNOTSUPP]  # "ENOTSUP" on Linux (same number)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_toctou_flipping_sockaddr(netns, servers, tmp_path):
    """A second thread flips the port between allowed and denied during connect()."""
    allowed, denied = servers
    exe = compile_c("toctou", tmp_path)
    run = run_bypassed(netns, [str(exe), str(allowed.port), str(denied.port), "3000", "15"],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o", timeout=60)
    res = run.json()
    print("toctou:", res, run.counters)
    assert res["iterations"] >= 200, res
    assert denied.accepted == 0 and res["denied"] == 0  # 0 escapes
    # the race was really exercised: the supervisor saw both values in its copies
    assert run.counters["bypassed"] > 0 and run.counters["namespace"] > 0, run.counters
    assert res["allowed"] == run.counters["bypassed"] == allowed.accepted


def test_int80_and_x32_entry_points(netns, servers, tmp_path):
    allowed, denied = servers
    exe = compile_c("int80", tmp_path)
    run = run_bypassed(netns, [str(exe), str(allowed.port), str(denied.port)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["first"] == 0 and res["greeting"] == "ALLOWED"  # holds a host socket
    assert res["getpid_matches"] is True  # int 0x80 itself works (the task is not killed)
    for key in ("unspec", "socketcall_unspec", "denied", "socketcall_denied", "fresh", "socket32_connect", "x32"):
        assert res[key] == ENOSYS, (key, res)
    assert denied.accepted == 0


def test_msg_fastopen(netns, servers, tmp_path):
    allowed, denied = servers
    closed = closed_port()
    run = run_bypassed(netns, [PY, PYCLIENT, "fastopen", str(closed), str(denied.port)],
                       allow=[f"127.0.0.1:{allowed.port}", f"127.0.0.1:{closed}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["so_error"] == "ECONNREFUSED"  # a bypassed socket whose connect failed
    assert res["failed_host_socket"] == [EOPNOTSUPP] * 3
    assert res["fresh"] == EOPNOTSUPP and res["sendmsg"] == EOPNOTSUPP
    assert denied.accepted == 0


def test_af_unspec_then_connect_elsewhere(netns, servers, tmp_path):
    allowed, denied = servers
    closed = closed_port()
    run = run_bypassed(netns, [PY, PYCLIENT, "unspec", str(allowed.port), str(closed), str(denied.port)],
                       allow=[f"127.0.0.1:{allowed.port}", f"127.0.0.1:{closed}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["greeting"] == "ALLOWED\n"
    assert res["unspec"] == "EACCES"
    assert res["again_denied"] == "EACCES" and res["again_denied_2"] == "EACCES"
    assert res["closed_first"] == "EINPROGRESS"
    assert res["closed_again"] == "ECONNREFUSED"
    assert res["then_denied"] == "EACCES"
    assert denied.accepted == 0
    assert run.counters["host_refused"] == 4


def test_bind_and_listen_on_host_sockets_refused(netns, servers, tmp_path):
    allowed, _ = servers
    run = run_bypassed(netns, [PY, PYCLIENT, "bindlisten", str(allowed.port)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    res = run.json()
    assert res == {"bind": "EINVAL", "listen": "EINVAL", "namespace_listen": "ok"}


def _native_io_uring_works() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(425, 8, ctypes.create_string_buffer(120))
    if fd >= 0:
        os.close(fd)
        return True
    return False


def test_io_uring_refused(netns, servers, tmp_path):
    allowed, denied = servers
    run = run_bypassed(netns, [PY, PYCLIENT, "iouring", str(allowed.port)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["greeting"] == "ALLOWED\n"
    assert res["io_uring_setup"] == "ENOSYS"  # no ring, so no IORING_OP_CONNECT
    if not _native_io_uring_works():
        pytest.xfail("io_uring is disabled on this host anyway; the ENOSYS above may be the kernel's")
    assert denied.accepted == 0


def test_fd_swap_race_on_namespace_connects(netns, servers, tmp_path):
    """A thread dup2()s a host socket onto fd N while another connects N (AF_UNSPEC, then denied).

    Answering CONTINUE would let the kernel re-read the fd and run the connect on the host
    socket; once a host socket exists, the supervisor performs such connects itself.
    """
    allowed, denied = servers
    exe = compile_c("fdswap", tmp_path)
    run = run_bypassed(netns, [str(exe), str(allowed.port), str(denied.port), "4"],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o", timeout=60)
    res = run.json()
    print("fdswap:", res, run.counters)
    assert res["tries"] >= 1000, res
    assert denied.accepted == 0  # 0 escapes
    # both sides of the race were exercised
    assert run.counters["host_refused"] > 0 and run.counters["mediated"] > 0, run.counters

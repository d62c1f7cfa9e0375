"""Clients run *inside* the bypassed namespace by the tests; each prints one JSON object."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import socket
import struct
import sys
import threading

MSG_FASTOPEN = 0x20000000
HOST = "127.0.0.1"


def err_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def fetch(port: int, timeout: float = 5) -> dict:
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((HOST, port))
        data = s.recv(100).decode()
        return {"ok": True, "data": data, "local": list(s.getsockname())}
    except OSError as exc:
        return {"ok": False, "err": err_name(exc)}
    finally:
        s.close()


def fdinfo_flags(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        for line in fh:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    return 0


def mode_basic(allowed: int, denied: int) -> dict:
    res = {"allowed": fetch(allowed), "denied": fetch(denied)}
    # a server of the namespace itself: loopback stays on the namespace's own stack
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(1)
    c = socket.create_connection(srv.getsockname(), timeout=5)
    a, _ = srv.accept()
    a.sendall(b"ns")
    res["namespace_local"] = c.recv(10).decode()
    # UDP connect + send in the namespace
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    userver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    userver.bind((HOST, 0))
    u.connect(userver.getsockname())
    u.send(b"udp")
    res["udp"] = userver.recv(10).decode()
    return res


def mode_nonblock(port: int) -> dict:
    s = socket.socket()
    s.setblocking(False)
    first = s.connect_ex((HOST, port))
    r = select.poll()
    r.register(s, select.POLLOUT)
    ev = r.poll(5000)
    so_error = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    s.setblocking(True)
    s.settimeout(5)
    data = s.recv(100).decode()
    return {"first": errno.errorcode.get(first, first), "events": ev[0][1] if ev else 0,
            "so_error": so_error, "data": data}


def mode_opts(port: int) -> dict:
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
    s.set_inheritable(True)
    keep = socket.socket()  # stays close-on-exec
    ino_before = os.fstat(s.fileno()).st_ino
    s.connect((HOST, port))
    keep.connect((HOST, port))
    return {
        "swapped": os.fstat(s.fileno()).st_ino != ino_before,
        "nodelay": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
        "keepalive": s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "keepidle": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "sndbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "tos": s.getsockopt(socket.IPPROTO_IP, socket.IP_TOS),
        "inheritable_cloexec": bool(fdinfo_flags(s.fileno()) & 0o2000000),
        "default_cloexec": bool(fdinfo_flags(keep.fileno()) & 0o2000000),
        "data": s.recv(100).decode(),
    }


def mode_thread(port: int) -> dict:
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(fetch(port)))
    t.start()
    t.join()
    return out


def mode_asyncio(port: int) -> dict:
    import asyncio  # not at the top: importing selectors creates an epoll instance
    async def main() -> dict:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        data = await asyncio.wait_for(reader.readline(), 5)
        local = writer.get_extra_info("sockname")
        writer.close()
        return {"data": data.decode(), "local": list(local)}

    return asyncio.run(main())


def mode_epoll(port: int, timeout: float) -> dict:
    """Register with epoll *before* a non-blocking connect (as nginx does)."""
    s = socket.socket()
    s.setblocking(False)
    ep = select.epoll()
    ep.register(s.fileno(), select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP)
    first = s.connect_ex((HOST, port))
    # the handshake (EPOLLOUT) and the server's greeting (EPOLLIN) arrive separately: keep
    # polling the same registration until the greeting shows up or the deadline passes
    import time

    deadline = time.monotonic() + timeout
    got = 0
    while not got & select.EPOLLIN and (left := deadline - time.monotonic()) > 0:
        for _fd, ev in ep.poll(left):
            got |= ev
        if got and not got & select.EPOLLIN:
            time.sleep(0.005)  # EPOLLOUT is level-triggered: do not spin
    data = s.recv(100).decode() if got & select.EPOLLIN else ""
    return {"first": errno.errorcode.get(first, first), "events": got, "data": data,
            "hup": bool(got & select.EPOLLHUP)}


def mode_fastopen(closed: int, denied: int) -> dict:
    res: dict = {}
    s = socket.socket()
    s.setblocking(False)
    res["connect_closed"] = errno.errorcode.get(s.connect_ex((HOST, closed)))
    select.select([], [s], [], 2)
    res["so_error"] = errno.errorcode.get(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    out = []
    for _ in range(3):
        try:
            s.sendto(b"escape", MSG_FASTOPEN, (HOST, denied))
            out.append("sent")
        except OSError as exc:
            out.append(err_name(exc))
    res["failed_host_socket"] = out
    f = socket.socket()
    try:
        f.sendto(b"escape", MSG_FASTOPEN, (HOST, denied))
        res["fresh"] = "sent"
    except OSError as exc:
        res["fresh"] = err_name(exc)
    g = socket.socket()
    try:
        g.sendmsg([b"escape"], [], MSG_FASTOPEN, (HOST, denied))
        res["sendmsg"] = "sent"
    except OSError as exc:
        res["sendmsg"] = err_name(exc)
    return res


def mode_unspec(allowed: int, closed: int, denied: int) -> dict:
    res: dict = {}
    s = socket.create_connection((HOST, allowed), timeout=5)
    res["greeting"] = s.recv(100).decode()
    unspec = struct.pack("=H", 0) + bytes(14)
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.connect(s.fileno(), unspec, len(unspec))
    res["unspec"] = "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno())
    for key in ("again_denied", "again_denied_2"):
        try:
            s.connect((HOST, denied))
            res[key] = "ok"
        except OSError as exc:
            res[key] = err_name(exc)
    # a bypassed socket whose connect failed, then re-aimed
    t = socket.socket()
    t.setblocking(False)
    res["closed_first"] = errno.errorcode.get(t.connect_ex((HOST, closed)))
    select.select([], [t], [], 2)
    res["closed_again"] = errno.errorcode.get(t.connect_ex((HOST, closed)))
    res["then_denied"] = errno.errorcode.get(t.connect_ex((HOST, denied)), "ok")
    return res


def mode_bindlisten(allowed: int) -> dict:
    s = socket.create_connection((HOST, allowed), timeout=5)
    res = {}
    for name, fn in (("bind", lambda: s.bind(("0.0.0.0", 0))), ("listen", lambda: s.listen(1))):
        try:
            fn()
            res[name] = "ok"
        except OSError as exc:
            res[name] = err_name(exc)
    # bind/listen on namespace sockets still work
    n = socket.socket()
    n.bind((HOST, 0))
    n.listen(1)
    res["namespace_listen"] = "ok"
    return res


def mode_iouring(allowed: int) -> dict:
    s = socket.create_connection((HOST, allowed), timeout=5)  # now holds a host socket
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(425, 8, params)
    res = {"greeting": s.recv(100).decode()}
    res["io_uring_setup"] = "ok" if fd >= 0 else errno.errorcode.get(ctypes.get_errno())
    return res


def mode_mediated(allowed: int, workdir: str) -> dict:
    """After a bypass, connects that stay in the namespace are done by the supervisor."""
    res: dict = {"greeting": fetch(allowed)["data"]}  # a host socket now exists
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(8)
    c = socket.create_connection(srv.getsockname(), timeout=5)  # blocking, namespace loopback
    a, _ = srv.accept()
    a.sendall(b"ns")
    res["tcp_blocking"] = c.recv(10).decode()
    n = socket.socket()
    n.setblocking(False)
    res["tcp_nonblocking_first"] = errno.errorcode.get(n.connect_ex(srv.getsockname()), "0")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    userver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    userver.bind((HOST, 0))
    u.connect(userver.getsockname())
    u.send(b"udp")
    res["udp"] = userver.recv(10).decode()
    os.chdir(workdir)
    for label, path in (("unix_relative", "rel.sock"), ("unix_absolute", os.path.join(workdir, "abs.sock")),
                        ("unix_abstract", f"\0kbn-bp-abstract-{os.getpid()}")):
        ls = socket.socket(socket.AF_UNIX)
        ls.bind(path)
        ls.listen(1)
        cs = socket.socket(socket.AF_UNIX)
        cs.connect(path)
        peer, _ = ls.accept()
        peer.sendall(label.encode())
        res[label] = cs.recv(40).decode()
    try:
        socket.socket(socket.AF_UNIX).connect(os.path.join(workdir, "missing.sock"))
        res["unix_missing"] = "ok"
    except OSError as exc:
        res["unix_missing"] = err_name(exc)
    return res


def mode_mediated_slow(allowed: int, port: int, marker: str) -> dict:
    """Blocking namespace connects that do not finish at once (peer link down, then up).

    ``marker`` is created just before the slow connect; the test brings the link up
    only after it appeared (so a slow start of this client cannot make it fast).
    """
    import time

    res: dict = {"greeting": fetch(allowed)["data"]}  # a host socket now exists
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("=qq", 0, 300_000))
    t0 = time.monotonic()
    res["sndtimeo"] = errno.errorcode.get(s.connect_ex(("10.99.0.2", port)), "0")
    res["sndtimeo_s"] = round(time.monotonic() - t0, 2)
    s.close()
    c = socket.socket()
    with open(marker, "w"):
        pass
    t0 = time.monotonic()
    c.connect(("10.99.0.2", port))  # completes once the peer link comes up (SYN retransmit)
    res["slow_s"] = round(time.monotonic() - t0, 2)
    c.settimeout(5)
    res["slow_data"] = c.recv(20).decode()
    return res


def mode_v6(port4: int, port6: int) -> dict:
    """IPv6 to host ::1, and an AF_INET6 socket to an IPv4-mapped address."""
    res = {}
    for label, addr, port in (("v6", "::1", port6), ("mapped", "::ffff:127.0.0.1", port4)):
        s = socket.socket(socket.AF_INET6)
        s.settimeout(5)
        try:
            s.connect((addr, port))
            res[label] = s.recv(20).decode()
        except OSError as exc:
            res[label] = err_name(exc)
        s.close()
    return res


def _percentiles(samples: list[float]) -> dict:
    samples.sort()
    n = len(samples)
    return {"n": n, "p50_us": samples[n // 2], "p99_us": samples[min(n - 1, int(n * 0.99))],
            "mean_us": sum(samples) / n}


def _connect_times(host: str, port: int, n: int) -> list[float]:
    import time

    out = []
    for _ in range(n):
        s = socket.socket()
        t0 = time.perf_counter_ns()
        s.connect((host, port))
        out.append((time.perf_counter_ns() - t0) / 1000)
        s.close()
    return out


def mode_latency(host: str, port: int, n: int) -> dict:
    """connect() latency (socket() and close() not timed) to a server that accepts and closes."""
    _connect_times(host, port, min(50, n))  # warm-up
    return _percentiles(_connect_times(host, port, n))


def mode_latency_local(n: int) -> dict:
    """Same, to a server in this namespace (a forked process): the namespace stack path."""
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(4096)
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                c, _ = srv.accept()
                c.close()
        finally:
            os._exit(0)
    port = srv.getsockname()[1]
    srv.close()
    try:
        return mode_latency(HOST, port, n)
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def mode_latency_local_after_bypass(allowed: int, n: int) -> dict:
    """The namespace path once a host socket exists (connects performed by the supervisor)."""
    assert fetch(allowed)["ok"]
    return mode_latency_local(n)


def _arg(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def main() -> None:
    mode, *args = sys.argv[1:]
    fn = globals()[f"mode_{mode}"]
    print(json.dumps(fn(*[_arg(a) for a in args])))


if __name__ == "__main__":
    main()

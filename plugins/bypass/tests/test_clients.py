"""Real clients inside a bypassed namespace: eligible connects reach host loopback servers."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from bypass_testlib import CLIENTS, PY, run_bypassed

pytestmark = pytest.mark.netns

PYCLIENT = str(CLIENTS / "pyclient.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_namespace_alone_cannot_reach_host_loopback(netns, servers, tmp_path):
    """Control: with an empty allow-list nothing is bypassed and the host server is unreachable."""
    allowed, denied = servers
    run = run_bypassed(netns, [PY, PYCLIENT, "basic", str(allowed.port), str(denied.port)],
                       allow=["10.255.255.255/32:1"], out_path=tmp_path / "o")
    res = run.json()
    assert res["allowed"] == {"ok": False, "err": "ECONNREFUSED"}
    assert allowed.accepted == 0 and denied.accepted == 0
    assert run.counters.get("bypassed", 0) == 0


def test_basic_bypass_and_namespace_paths(netns, servers, tmp_path):
    allowed, denied = servers
    run = run_bypassed(netns, [PY, PYCLIENT, "basic", str(allowed.port), str(denied.port)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    assert run.rc == 0
    res = run.json()
    assert res["allowed"]["ok"] and res["allowed"]["data"] == "ALLOWED\n"
    assert res["denied"] == {"ok": False, "err": "ECONNREFUSED"}  # the namespace's own 127.0.0.1
    assert res["namespace_local"] == "ns" and res["udp"] == "udp"
    assert allowed.accepted == 1 and denied.accepted == 0
    assert run.counters["bypassed"] == 1
    assert run.counters["namespace"] >= 3  # denied + namespace-local TCP + UDP


def test_nonblocking_connect_keeps_einprogress(netns, servers, tmp_path):
    allowed, _ = servers
    run = run_bypassed(netns, [PY, PYCLIENT, "nonblock", str(allowed.port)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["first"] in ("EINPROGRESS", 0)
    assert res["events"] & 4 and res["so_error"] == 0  # POLLOUT
    assert res["data"] == "ALLOWED\n"


def test_options_and_cloexec_move_with_the_socket(netns, servers, tmp_path):
    allowed, _ = servers
    run = run_bypassed(netns, [PY, PYCLIENT, "opts", str(allowed.port)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["swapped"]
    assert res["nodelay"] == 1 and res["keepalive"] == 1 and res["keepidle"] == 77
    assert res["sndbuf"] == 2 * 65536
    assert res["tos"] == 0x10
    assert res["inheritable_cloexec"] is False and res["default_cloexec"] is True
    assert res["data"] == "ALLOWED\n"
    assert run.counters["bypassed"] == 2


def test_connect_from_a_thread(netns, servers, tmp_path):
    allowed, _ = servers
    run = run_bypassed(netns, [PY, PYCLIENT, "thread", str(allowed.port)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    assert run.json()["data"] == "ALLOWED\n"
    assert allowed.accepted == 1


def test_asyncio_client(netns, servers, tmp_path):
    allowed, _ = servers
    run = run_bypassed(netns, [PY, PYCLIENT, "asyncio", str(allowed.port)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["data"] == "ALLOWED\n" and res["local"][0] == "127.0.0.1"
    assert run.counters["bypassed"] == 1


def test_epoll_registered_before_connect(netns, servers, tmp_path):
    allowed, _ = servers
    argv = [PY, PYCLIENT, "epoll", str(allowed.port), "5.0"]
    run = run_bypassed(netns, argv, allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["events"] & 0x4 and not res["hup"]  # EPOLLOUT from the new socket
    assert res["data"] == "ALLOWED\n"
    assert run.counters["epoll_rearmed"] == 1


def test_epoll_without_rearm_breaks(netns, servers, tmp_path):
    """Shows why re-arm exists: without it the registration watches the dead namespace socket."""
    allowed, _ = servers
    argv = [PY, PYCLIENT, "epoll", str(allowed.port), "1.0"]
    run = run_bypassed(netns, argv, allow=[f"127.0.0.1:{allowed.port}"], epoll_rearm=False,
                       out_path=tmp_path / "o")
    res = run.json()
    assert res["data"] != "ALLOWED\n"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = b"host http ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_curl(netns, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        run = run_bypassed(netns, ["curl", "-sS", "--max-time", "10", f"http://127.0.0.1:{port}/"],
                           allow=[f"127.0.0.1:{port}"], out_path=tmp_path / "o")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert run.rc == 0 and run.out == "host http ok\n"
    assert run.counters["bypassed"] == 1


def test_iperf3(netns, tmp_path):
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3")
    port = free_port()
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port)  # a probe connection would use up the one-off (-1) server
        run = run_bypassed(netns, ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "2", "-J"],
                           allow=[f"127.0.0.1:{port}"], out_path=tmp_path / "o", timeout=30)
    finally:
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()
    res = run.json()
    assert run.rc == 0 and "error" not in res, (res.get("error"), run.counters)
    # the server is on host loopback, which the namespace cannot reach by itself
    assert res["end"]["sum_received"]["bytes"] > 0
    assert run.counters["bypassed"] >= 2  # control + data connections


def wait_listening(port: int, limit: float = 20.0) -> None:
    """Wait until a TCP socket listens on 127.0.0.1:``port`` in this namespace (/proc/net/tcp)."""
    needle = f"0100007F:{port:04X} 00000000:0000 0A"
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with open("/proc/net/tcp") as fh:
            if needle in fh.read():
                return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {limit} s")


def test_namespace_connects_after_a_bypass_are_mediated(netns, servers, tmp_path):
    """TCP (blocking, non-blocking), UDP and AF_UNIX (relative, absolute, abstract) keep working."""
    allowed, _ = servers
    work = tmp_path / "w"
    work.mkdir()
    run = run_bypassed(netns, [PY, PYCLIENT, "mediated", str(allowed.port), str(work)],
                       allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    res = run.json()
    assert res["greeting"] == "ALLOWED\n"
    assert res["tcp_blocking"] == "ns" and res["tcp_nonblocking_first"] in ("EINPROGRESS", "0")
    assert res["udp"] == "udp"
    assert res["unix_relative"] == "unix_relative" and res["unix_absolute"] == "unix_absolute"
    assert res["unix_abstract"] == "unix_abstract"
    assert res["unix_missing"] == "ENOENT"
    assert run.counters["mediated"] >= 7, run.counters


def _link_up_after(marker: Path, cmd: list[str], limit: float = 30.0) -> None:
    """Run ``cmd`` 0.5 s after ``marker`` exists (polling; gives up after ``limit`` s)."""
    deadline = time.monotonic() + limit
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
    subprocess.run(cmd, check=False)


def test_slow_blocking_namespace_connects_after_a_bypass(netns, servers, tmp_path):
    """The supervisor's pending path for namespace connects: SO_SNDTIMEO and late completion."""
    allowed, _ = servers
    name = netns.path.rsplit("/", 1)[1]
    peer = f"{name}-peer"
    ip = ["ip"]
    subprocess.run([*ip, "netns", "add", peer], check=True)
    server = None
    try:
        subprocess.run([*ip, "-n", name, "link", "add", "va", "type", "veth", "peer", "name", "vb",
                        "netns", peer], check=True)
        subprocess.run([*ip, "-n", name, "addr", "add", "10.99.0.1/24", "dev", "va"], check=True)
        subprocess.run([*ip, "-n", name, "link", "set", "va", "up"], check=True)
        subprocess.run([*ip, "-n", peer, "addr", "add", "10.99.0.2/24", "dev", "vb"], check=True)
        port = free_port()
        server = subprocess.Popen(
            ["ip", "netns", "exec", peer, PY, "-c",
             "import socket\ns=socket.socket()\n"
             f"s.bind(('10.99.0.2',{port}))\ns.listen(4)\n"
             "while True:\n c,_=s.accept()\n c.sendall(b'peer')\n c.close()\n"])
        marker = tmp_path / "slow-connect-started"
        linker = threading.Thread(target=_link_up_after, args=(marker, [*ip, "-n", peer, "link", "set", "vb", "up"]))
        linker.start()
        try:
            run = run_bypassed(netns, [PY, PYCLIENT, "mediated_slow", str(allowed.port), str(port), str(marker)],
                               allow=[f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o", timeout=30)
        finally:
            marker.touch()  # never leave the thread waiting
            linker.join()
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run([*ip, "netns", "del", peer], check=False)
    res = run.json()
    assert res["greeting"] == "ALLOWED\n"
    assert res["sndtimeo"] == "EINPROGRESS" and 0.2 <= res["sndtimeo_s"] < 1.5  # as Linux does
    assert res["slow_s"] >= 0.3 and res["slow_data"] == "peer"
    assert run.counters["mediated"] >= 2


def test_ipv6_and_v4_mapped(netns, servers, tmp_path):
    allowed, _ = servers
    try:
        srv6 = socket.socket(socket.AF_INET6)
        srv6.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on the host")
    srv6.listen(4)
    port6 = srv6.getsockname()[1]

    def serve() -> None:
        c, _ = srv6.accept()
        c.sendall(b"V6HOST\n")
        c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        run = run_bypassed(netns, [PY, PYCLIENT, "v6", str(allowed.port), str(port6)],
                           allow=[f"[::1]:{port6}", f"127.0.0.1:{allowed.port}"], out_path=tmp_path / "o")
    finally:
        srv6.close()
    res = run.json()
    assert res == {"v6": "V6HOST\n", "mapped": "ALLOWED\n"}  # mapped judged (and allowed) as IPv4
    assert run.counters["bypassed"] == 2

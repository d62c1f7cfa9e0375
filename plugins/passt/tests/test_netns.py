"""A real Linux guest (network namespace + tap) served by passt through kboxnet.

passt runs in a "host" namespace of its own whose only route is a dead end
(see :mod:`topo`); the HTTP server and dnsmasq listen on that namespace's
loopback, which is what the guest reaches through the gateway address.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kboxnet_passt.plugin import PasstBackend
from kboxnet_passt.relay import Relay, make_socketpair
from topo import PasstTopology

from kboxnet_core.backend import SessionContext
from kboxnet_core.config.model import Forward
from kboxnet_core.links.stream import StreamLink
from kboxnet_core.testing.dnsmasq import Dnsmasq
from kboxnet_core.testing.nsenter import call_in_netns
from kboxnet_core.testing.ports import free_tcp_port
from kboxnet_core.testing.servers import HttpFileServer
from kboxnet_core.testing.udhcpc import write_udhcpc_script

pytestmark = pytest.mark.netns

BANNER_SERVER = """
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
c, addr = s.accept()
c.sendall(b"SSH-2.0-kboxnet-test\\r\\n")
c.recv(100)
"""

GUEST_SERVER = """
import socket, sys
s = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("listening", flush=True)
c, addr = s.accept()
c.sendall(c.recv(100) + b"-from-guest " + addr[0].encode())
c.close()
"""


def udhcpc(topo: PasstTopology, script: Path) -> str:
    r = topo.guest_run(["busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "5", "-T", "1",
                        "-s", str(script), "-O", "mtu"], timeout=20)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def curl(topo: PasstTopology, url: str, out: Path, timeout: float = 30) -> subprocess.CompletedProcess:
    return topo.guest_run(["curl", "-sS", "--max-time", str(int(timeout)), "-o", str(out), url],
                          timeout=timeout + 5)


@pytest.fixture
def topo():
    if not Path("/usr/bin/passt").exists() and not any(
            os.access(os.path.join(d, "passt"), os.X_OK) for d in os.environ["PATH"].split(":")):
        pytest.skip("passt not installed")
    with PasstTopology() as t:
        yield t


@pytest.fixture
def host_services(topo):
    if Dnsmasq.available():
        pytest.skip(Dnsmasq.available())
    http = HttpFileServer(netns=topo.hostns.host).start()
    dns = Dnsmasq({"kboxnet.test": "10.0.2.2"}, netns=topo.hostns.host, port=53).start()
    try:
        yield http, dns
    finally:
        dns.stop()
        http.stop()


def test_guest_over_tap_through_passt(topo, host_services, tmp_path):
    http, _dns = host_services
    digest = http.add_file("blob.bin", size=8 << 20, seed=5)
    guest_port, host_port = 8000, free_tcp_port()
    cfg = topo.config(forward=(Forward(guest=guest_port, host=f"127.0.0.1:{host_port}"),))
    backend = PasstBackend()
    av = backend.probe(cfg)
    assert av.available, av
    link = topo.open_tap()
    session = backend.open(link, SessionContext(cfg, tmp_path))
    session.start()
    try:
        assert session.ready(10), session.wait(0)
        lease = udhcpc(topo, write_udhcpc_script(tmp_path / "udhcpc.sh"))
        assert "KBN_LEASE ip=10.0.2.15" in lease and "router=10.0.2.2" in lease and "dns=10.0.2.3" in lease

        ping = topo.guest_run(["busybox", "ping", "-c", "2", "-W", "2", "10.0.2.2"])
        assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr

        out = tmp_path / "blob.bin"
        r = curl(topo, http.url("blob.bin", host="10.0.2.2"), out)
        assert r.returncode == 0, r.stderr
        assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
        assert any(line.startswith("127.0.0.1 ") for line in http.requests)

        ns = topo.guest_run(["busybox", "nslookup", "-type=a", "www.kboxnet.test", "10.0.2.3"], timeout=15)
        assert ns.returncode == 0 and "10.0.2.2" in ns.stdout.split("www.kboxnet.test", 1)[-1], \
            ns.stdout + ns.stderr

        # a refused connection fails at once (old passt's RST lacks the ACK: repaired in the relay)
        t0 = time.monotonic()
        r = topo.guest_run(["curl", "-sS", "--max-time", "10", f"http://10.0.2.2:{free_tcp_port()}/"])
        assert r.returncode == 7, r.stderr  # ECONNREFUSED ("Couldn't connect to server")
        assert time.monotonic() - t0 < 2

        # published port: host 127.0.0.1:host_port -> guest :guest_port
        server = subprocess.Popen([*topo.guest.prefix(), sys.executable, "-c", GUEST_SERVER, str(guest_port)],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        try:
            errors: list[str] = []

            def fetch() -> bytes:
                deadline = time.monotonic() + 5
                while True:
                    try:
                        with socket.create_connection(("127.0.0.1", host_port), timeout=3) as s:
                            s.sendall(b"hello")
                            data = s.recv(100)
                            if data:
                                return data
                    except OSError as exc:
                        errors.append(repr(exc))
                    if time.monotonic() > deadline:
                        return repr(errors).encode()
                    time.sleep(0.1)

            # passt keeps the client's address; a loopback client appears as the gateway
            assert call_in_netns(topo.hostns.host.name, fetch) == b"hello-from-guest 10.0.2.2"
        finally:
            server.kill()
            server.wait()
        # a guest server that speaks first (a banner, like SSH/SMTP): old passt never completes the
        # handshake on its own; the relay sends the final ACK for it
        banner = subprocess.Popen([*topo.guest.prefix(), sys.executable, "-c", BANNER_SERVER, str(guest_port)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert banner.stdout is not None and banner.stdout.readline().strip() == "listening"

            def read_banner() -> bytes:
                with socket.create_connection(("127.0.0.1", host_port), timeout=3) as s:
                    return s.recv(100)

            assert call_in_netns(topo.hostns.host.name, read_banner) == b"SSH-2.0-kboxnet-test\r\n"
        finally:
            banner.kill()
            banner.wait()
        counters = session.counters()
        assert counters["fixup_pings_answered"] >= 2 and counters["fixup_dns_rewritten"] >= 1
        assert counters["fixup_rsts_repaired"] >= 1 and counters["fixup_handshakes_completed"] >= 1
    finally:
        session.stop()
        result = session.wait(10)
    assert result is not None and result.ok, result
    assert not session.pids()


class _Vmm:
    """Stands in for a VMM: carries the guest's tap frames over a qemu stream socket."""

    def __init__(self, topo: PasstTopology, mtu: int) -> None:
        self.tap = topo.open_tap(mtu)
        self.vmm_end, link_end = make_socketpair()
        self.link = StreamLink(link_end, mtu=mtu, name="test vmm")
        self._stop_r, self._stop_w = os.pipe()
        self.relay = Relay(self.tap, self.vmm_end)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.relay.run(self._stop_r)
        except Exception:  # noqa: BLE001 - the VMM goes away with the test
            pass

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self.thread.join(5)
        self.vmm_end.close()
        self.link.close()


def test_stream_link_is_handed_to_passt_directly(topo, host_services, tmp_path):
    """fixups="off": passt gets the guest's connected socket itself, no Python in the path."""
    http, _dns = host_services
    digest = http.add_file("blob.bin", size=4 << 20, seed=6)
    cfg = topo.config(fixups="off")
    vmm = _Vmm(topo, 1500)
    backend = PasstBackend()
    session = backend.open(vmm.link, SessionContext(cfg, tmp_path))
    session.start()
    try:
        assert session.ready(10), session.wait(0)
        assert session.mode == "direct"
        assert session.argv[session.argv.index("--fd") + 1] == str(vmm.link.socket.fileno())
        assert "--no-icmp" in session.argv  # old passt: pings would leave unmapped
        udhcpc(topo, write_udhcpc_script(tmp_path / "udhcpc.sh"))
        out = tmp_path / "blob.bin"
        r = curl(topo, http.url("blob.bin", host="10.0.2.2"), out)
        assert r.returncode == 0, r.stderr
        assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
        assert session.counters() == {}
    finally:
        session.stop()
        result = session.wait(10)
        vmm.close()
    assert result is not None and result.ok, result


def _running(pid: int) -> bool:
    """True while ``pid`` is a live process: a zombie is dead, waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_no_orphan_passt_after_sigkill_of_kboxnet(topo, tmp_path):
    """SIGKILL of the process that started passt takes passt with it (PDEATHSIG)."""
    code = f"""
import sys, pathlib, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from kboxnet_core.backend import SessionContext
from kboxnet_core.links.stream import StreamLink
from kboxnet_passt.plugin import PasstBackend
from kboxnet_passt.relay import make_socketpair
from topo import PasstTopology
t = PasstTopology.__new__(PasstTopology)
from kboxnet_core.testing.netns import Netns
class H: host = Netns({topo.hostns.host.name!r})
t.hostns = H
cfg = t.config(fixups="off")
vmm, ours = make_socketpair()
s = PasstBackend().open(StreamLink(ours), SessionContext(cfg, pathlib.Path({str(tmp_path)!r})))
s.start(); assert s.ready(10)
print(s.pids()[0], flush=True)
time.sleep(60)
"""
    child = subprocess.Popen([os.sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip().isdigit(), line
        passt_pid = int(line)
        assert Path(f"/proc/{passt_pid}").exists()
        child.kill()
        child.wait(5)
        deadline = time.monotonic() + 10  # generous: the machine may be loaded; a survivor never goes
        while _running(passt_pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _running(passt_pid), "passt survived its parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_pasta_mode_attaches_to_the_namespace_and_restores_the_tap(topo, host_services, tmp_path):
    from kboxnet_core.backend import NetnsTarget

    http, _dns = host_services
    digest = http.add_file("blob.bin", size=4 << 20, seed=7)
    cfg = topo.config(mode="pasta", fixups="off")
    link = topo.open_tap()
    # configured like kboxnet run's guest namespace: static profile on tap0
    topo.guest.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
    topo.guest.ip("route", "add", "default", "via", "10.0.2.2", "dev", "tap0")
    ctx = SessionContext(cfg, tmp_path, NetnsTarget(topo.guest.path, "tap0", os.getpid()))
    session = PasstBackend().open(link, ctx)
    assert session.mode == "pasta"
    session.start()
    try:
        assert session.ready(10), session.wait(0)
        assert "--netns" in session.argv and "--config-net" in session.argv
        route = topo.guest_run(["ip", "route", "show", "default"]).stdout
        assert "dev tap0p" in route, route
        out = tmp_path / "blob.bin"
        r = curl(topo, http.url("blob.bin", host="10.0.2.2"), out)
        assert r.returncode == 0, r.stderr
        assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
        pid = session.pids()[0]
        os.kill(pid, 9)
        result = session.wait(10)
    finally:
        session.stop()
        session.wait(10)
    assert result is not None and not result.ok and "SIGKILL" in result.reason, result
    route = topo.guest_run(["ip", "route", "show", "default"]).stdout
    assert "via 10.0.2.2 dev tap0" in route and "tap0p" not in route, route
    assert "UP" in topo.guest_run(["ip", "link", "show", "tap0"]).stdout

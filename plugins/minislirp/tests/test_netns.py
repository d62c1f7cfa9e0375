"""Real-stack tests: a Linux network namespace is the guest, minislirp serves its tap link.

Every client is a real program in the namespace (busybox udhcpc/ping/nslookup,
curl, python sockets). Egress is limited to 127.0.0.0/8 and DNS goes to a
dnsmasq on loopback, so no guest traffic can leave the machine.
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import guest_tools
import pytest
from guest import GuestNet

from kboxnet_core.testing.netns import netns_supported
from kboxnet_core.testing.servers import HttpFileServer

pytestmark = pytest.mark.netns

KINDS = {"tap": {}, "tap-vnet": {"vnet_hdr": True}, "stream": {"stream": True},
         "stream-65520": {"stream": True, "mtu": 65520}, "tap-vnet-65520": {"vnet_hdr": True, "mtu": 65520}}


@pytest.fixture(scope="module")
def dns_server():
    from kboxnet_core.testing.dnsmasq import Dnsmasq

    if Dnsmasq.available():
        pytest.skip(Dnsmasq.available())
    with Dnsmasq(addresses={"example.test": "192.0.2.10"}) as server:
        yield server


@pytest.fixture(scope="module", params=sorted(KINDS))
def guest(request, dns_server, tmp_path_factory):
    reason = netns_supported()
    if reason:
        pytest.skip(reason)
    pcap = tmp_path_factory.mktemp("pcap") / f"{request.param}.pcap"
    with GuestNet(dns=(f"127.0.0.1:{dns_server.port}",), pcap=str(pcap), **KINDS[request.param]) as g:
        out = g.dhcp()
        mtu = KINDS[request.param].get("mtu", 1500)
        assert f"KBN_LEASE ip=10.0.2.15 mask=24 router=10.0.2.2 dns=10.0.2.3 mtu={mtu} server=10.0.2.2" in out, out
        g.pcap_path = pcap
        yield g


def run_in(g: GuestNet, argv: list[str], timeout: float = 30) -> str:
    r = subprocess.run([*g.ns.prefix(), *argv], capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def py(g: GuestNet, code: str, *args: str, timeout: float = 60) -> str:
    return run_in(g, [sys.executable, "-c", code, *args], timeout)


def test_lease_configured_the_interface(guest):
    out = run_in(guest, ["ip", "-4", "addr", "show", "tap0"])
    assert "10.0.2.15/24" in out
    assert "default via 10.0.2.2" in run_in(guest, ["ip", "route"])
    assert guest.session.counters()["dhcp.ack"] >= 1


def test_ping_gateway_and_dns(guest):
    for addr in ("10.0.2.2", "10.0.2.3"):
        out = run_in(guest, ["busybox", "ping", "-c", "3", "-W", "2", addr])
        assert "3 packets received" in out, out


def test_curl_1mib_from_host_loopback_via_gateway(guest):
    with HttpFileServer() as http:
        digest = http.add_file("blob.bin", 1 << 20, seed=7)
        out = run_in(guest, ["sh", "-c", f"curl -sS --max-time 30 {http.url('blob.bin', '10.0.2.2')} | sha256sum"])
        assert out.split()[0] == digest, out
        assert any(r.startswith("127.0.0.1 ") for r in http.requests)


def test_upload_1mib_to_host(guest):
    data = bytes(range(256)) * 4096
    received = bytearray()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def sink():
        conn, _ = srv.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                received.extend(chunk)

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    code = ("import socket,sys; s=socket.create_connection(('10.0.2.2', int(sys.argv[1])), timeout=20);"
            "s.sendall(bytes(range(256))*4096); s.shutdown(socket.SHUT_WR); print('SENT', s.recv(1))")
    out = py(guest, code, str(port))
    t.join(20)
    srv.close()
    assert "SENT b''" in out, out
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(data).hexdigest()


def test_nslookup_udp_through_dnsmasq(guest):
    out = run_in(guest, ["busybox", "nslookup", "www.example.test", "10.0.2.3"])
    assert "192.0.2.10" in out, out


def test_dns_over_tcp(guest):
    out = py(guest, guest_tools.DNS_TCP, "10.0.2.3", "53", "tcp.example.test")
    assert "ANSWERS 1 192.0.2.10" in out, out


def test_udp_echo_with_host_server(guest, udp_echo):
    out = py(guest, guest_tools.UDP_CLIENT, "10.0.2.2", str(udp_echo.port), "50")
    assert "OK 50" in out, out
    assert udp_echo.echoed == 50


def test_udp_to_closed_port_reflects_icmp(guest):
    port = _closed_port(socket.SOCK_DGRAM)
    out = py(guest, guest_tools.UDP_CLIENT, "10.0.2.2", str(port), "1")
    assert "REFUSED" in out, out


def test_refused_host_port_gives_immediate_rst(guest):
    port = _closed_port(socket.SOCK_STREAM)
    out = py(guest, guest_tools.TCP_CONNECT, "10.0.2.2", str(port))
    assert out.startswith("REFUSED"), out
    assert float(out.split()[1]) < 1.0, out


def test_egress_policy_denies_before_any_socket(guest):
    before = guest.session.counters().get("drop.tcp_egress_denied", 0)
    out = py(guest, guest_tools.TCP_CONNECT, "192.0.2.1", "80")
    assert out.startswith("REFUSED"), out
    assert guest.session.counters()["drop.tcp_egress_denied"] == before + 1


def test_pcap_is_readable_by_tcpdump(guest):
    guest.session.engine.pcap._file.flush()
    out = subprocess.run(["tcpdump", "-nn", "-r", str(guest.pcap_path)], capture_output=True, text=True, timeout=30)
    assert "reading from file" in out.stderr, out.stderr
    assert "10.0.2.15.68 > " in out.stdout or "BOOTP/DHCP" in out.stdout, out.stdout[:2000]
    assert "10.0.2.2 > 10.0.2.15: ICMP echo reply" in out.stdout


def _closed_port(kind: int) -> int:
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_download_without_so_peek_off(guest):
    """The fallback for kernels without SO_PEEK_OFF on TCP: skip unacknowledged bytes into a discard buffer."""
    tcp = guest.session.engine.tcp
    tcp.peek_off = False
    try:
        with HttpFileServer() as http:
            digest = http.add_file("blob2.bin", 3 << 20, seed=9)
            out = run_in(guest, ["sh", "-c", f"curl -sS --max-time 30 {http.url('blob2.bin', '10.0.2.2')} | sha256sum"])
            assert out.split()[0] == digest, out
    finally:
        tcp.peek_off = True


def test_ping_via_ping_sockets_in_a_host_namespace(host_netns):
    """minislirp runs inside a "host" namespace where ping sockets are allowed; the guest pings
    the dead-end gateway namespace that the fixture owns (10.222.0.1), so nothing leaves the machine."""
    from kboxnet_core.testing.netns import Netns

    here = Path(__file__).parent
    with Netns(area="mslp") as gns:
        serve = subprocess.Popen([*host_netns.host.prefix(), sys.executable, str(here.parent / "bench" / "serve.py"),
                                  "--netns", gns.name, "--allow", "10.222.0.1/32"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert serve.stdout.readline().strip() == "READY"
            gns.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
            gns.ip("route", "add", "default", "via", "10.0.2.2")
            out = subprocess.run([*gns.prefix(), "busybox", "ping", "-c", "3", "-W", "2", host_netns.GW_ADDR],
                                 capture_output=True, text=True, timeout=30).stdout
            assert "3 packets received" in out, out
            denied = subprocess.run([*gns.prefix(), "busybox", "ping", "-c", "1", "-W", "2", "192.0.2.1"],
                                    capture_output=True, text=True, timeout=30)
            assert "0 packets received" in denied.stdout + denied.stderr
        finally:
            serve.terminate()
            _, err = serve.communicate(timeout=10)
        assert "icmp.echo_out=3" in err, err[-2000:]
        assert "drop.icmp_egress_denied=1" in err, err[-2000:]


def test_dns_fails_over_to_the_next_resolver(dns_server):
    """The first resolver refuses (ICMP port unreachable): the guest's retry goes to the second."""
    if netns_supported():
        pytest.skip(netns_supported())
    dead = _closed_port(socket.SOCK_DGRAM)
    with GuestNet(dns=(f"127.0.0.1:{dead}", f"127.0.0.1:{dns_server.port}")) as g:
        assert "KBN_LEASE" in g.dhcp()
        out = run_in(g, ["busybox", "nslookup", "-timeout=1", "-retry=3", "again.example.test", "10.0.2.3"])
        assert "192.0.2.10" in out, out
        assert g.session.counters()["dns.resolver_failed"] >= 1


def test_slow_reader_zero_window_then_resume(guest):
    """The guest application reads late and slowly: the guest's window closes and reopens."""
    data = hashlib.sha256(b"zw").digest() * (6 << 15)  # 6 MiB
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def push():
        conn, _ = srv.accept()
        with conn:
            conn.sendall(data)

    t = threading.Thread(target=push, daemon=True)
    t.start()
    out = py(guest, guest_tools.SLOW_READER, "10.0.2.2", str(port), "1.5", timeout=90)
    t.join(30)
    srv.close()
    assert out.split()[:3] == ["GOT", str(len(data)), hashlib.sha256(data).hexdigest()], out


def test_slow_host_reader_closes_and_reopens_our_window(guest):
    """The host application reads late: the window minislirp advertises (free send buffer) goes to zero
    and must reopen (EPOLLOUT) without stalling the upload."""
    size = 24 << 20
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    digest = hashlib.sha256()
    got = [0]

    def pull():
        conn, _ = srv.accept()
        with conn:
            time.sleep(1.5)
            while chunk := conn.recv(1 << 16):
                digest.update(chunk)
                got[0] += len(chunk)

    t = threading.Thread(target=pull, daemon=True)
    t.start()
    code = ("import hashlib,socket,sys; d=hashlib.sha256(b'up').digest()*(1<<15);"
            "s=socket.create_connection(('10.0.2.2', int(sys.argv[1])), timeout=60);"
            "[s.sendall(d) for _ in range(24)]; s.shutdown(socket.SHUT_WR); s.recv(1); print('SENT')")
    out = py(guest, code, str(port), timeout=120)
    t.join(60)
    srv.close()
    expect = hashlib.sha256(hashlib.sha256(b"up").digest() * (1 << 15) * 24).hexdigest()
    assert "SENT" in out, out
    assert got[0] == size and digest.hexdigest() == expect

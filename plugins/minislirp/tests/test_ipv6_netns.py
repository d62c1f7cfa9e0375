"""IPv6 against the real Linux stack: a namespace guest behind a tap, served by minislirp.

The kernel configures its address by SLAAC from our router advertisement;
ISC dhclient -6 (Debian ``isc-dhcp-client``; busybox-static 1.35 in bookworm
has no udhcpc6) takes a DHCPv6 lease when installed. Egress is limited to
loopback (127.0.0.0/8, ::1) and DNS goes to a dnsmasq on 127.0.0.1: a v6
guest's queries to fd00::3 reach an IPv4 resolver.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import guest_tools
import pytest
from guest import GuestNet

from kboxnet_core.config.model import Forward
from kboxnet_core.testing.netns import netns_supported
from kboxnet_core.testing.ports import free_tcp_port, free_udp_port
from kboxnet_core.testing.servers import HttpFileServer, UdpEchoServer

pytestmark = pytest.mark.netns

KINDS = {"tap": {}, "tap-vnet": {"vnet_hdr": True}, "stream": {"stream": True}}
TCP_FWD_GUEST, UDP_FWD_GUEST = 8080, 9999


@pytest.fixture(scope="module")
def dns_server():
    from kboxnet_core.testing.dnsmasq import Dnsmasq

    if Dnsmasq.available():
        pytest.skip(Dnsmasq.available())
    with Dnsmasq(addresses={"example.test": "192.0.2.10"}) as server:
        yield server


def run_in(g: GuestNet, argv: list[str], timeout: float = 30) -> str:
    r = subprocess.run([*g.ns.prefix(), *argv], capture_output=True, text=True, timeout=timeout)
    return r.stdout + r.stderr


def py(g: GuestNet, code: str, *args: str, timeout: float = 60) -> str:
    return run_in(g, [sys.executable, "-c", code, *args], timeout)


def eui64(mac: str) -> str:
    """The SLAAC interface identifier (modified EUI-64) of ``mac``, as the kernel prints it."""
    b = bytes.fromhex(mac.replace(":", ""))
    iid = bytes([b[0] ^ 2]) + b[1:3] + b"\xff\xfe" + b[3:]
    groups = [f"{int.from_bytes(iid[i:i + 2], 'big'):x}" for i in range(0, 8, 2)]
    return ":".join(groups)


def wait_slaac(g: GuestNet, timeout: float = 15) -> str:
    """Wait until the guest has a non-tentative address in fd00::/64; returns ``ip -6 addr`` output."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = run_in(g, ["ip", "-6", "addr", "show", "dev", "tap0"])
        if re.search(r"inet6 fd00::\S+/64 scope global (?!.*tentative)", out):
            return out
        time.sleep(0.2)
    return out


@pytest.fixture(scope="module", params=sorted(KINDS))
def guest(request, dns_server):
    reason = netns_supported()
    if reason:
        pytest.skip(reason)
    tport, uport = free_tcp_port("::1"), free_udp_port("::1")
    fwd = (Forward(guest=TCP_FWD_GUEST, host=f"[::1]:{tport}", proto="tcp"),
           Forward(guest=UDP_FWD_GUEST, host=f"[::1]:{uport}", proto="udp"))
    with GuestNet(dns=(f"127.0.0.1:{dns_server.port}",), allow=("::1/128",), forward=fwd, area="msl6",
                  **KINDS[request.param]) as g:
        assert "KBN_LEASE" in g.dhcp()  # brings tap0 up (IPv4 as usual); the kernel then solicits an RA
        g.addrs = wait_slaac(g)
        g.tport, g.uport = tport, uport
        yield g


def test_slaac_address_and_default_route_from_our_ra(guest):
    mac = run_in(guest, ["cat", "/sys/class/net/tap0/address"]).strip()
    assert f"inet6 fd00::{eui64(mac)}/64 scope global" in guest.addrs, guest.addrs
    route = run_in(guest, ["ip", "-6", "route"])
    assert "default via fe80::2 dev tap0" in route, route
    c = guest.session.counters()
    # the RA sent at start may already configure it, before the kernel's own solicitation (answered too)
    assert c["ndp.ra_out"] >= 1, sorted(c.items())
    # the guest's DAD probe taught us its address
    assert socket.inet_pton(socket.AF_INET6, f"fd00::{eui64(mac)}") in guest.session.engine.ipv6.learned


def test_ping6_gateway_and_dns(guest):
    for addr in ("fd00::2", "fd00::3"):
        out = run_in(guest, ["busybox", "ping6", "-c", "3", "-W", "2", addr])
        assert "3 received" in out or "3 packets received" in out, out


def test_curl6_1mib_from_host_loopback_via_gateway(guest):
    with HttpFileServer(host="::1") as http:
        digest = http.add_file("blob.bin", 1 << 20, seed=9)
        url = f"http://[fd00::2]:{http.port}/blob.bin"
        out = run_in(guest, ["sh", "-c", f"curl -6 -g -sS --max-time 30 '{url}' | sha256sum"])
        assert out.split()[0] == digest, out
        assert any(r.startswith("::1 ") for r in http.requests), http.requests


def test_nslookup_over_ipv6(guest):
    out = run_in(guest, ["busybox", "nslookup", "www.example.test", "fd00::3"])
    assert "192.0.2.10" in out, out
    assert guest.session.counters()["udp.flows"] >= 1


def test_udp6_echo_with_host_server(guest):
    with UdpEchoServer(host="::1") as echo:
        out = py(guest, guest_tools.UDP_CLIENT, "fd00::2", str(echo.port), "30")
        assert "OK 30" in out, out
        assert echo.echoed == 30


def test_udp6_to_closed_port_reflects_icmpv6(guest):
    port = free_udp_port("::1")
    out = py(guest, guest_tools.UDP_CLIENT, "fd00::2", str(port), "1")
    assert "REFUSED" in out, out


def test_tcp6_refused_port_gives_immediate_rst(guest):
    port = free_tcp_port("::1")
    out = py(guest, guest_tools.TCP_CONNECT, "fd00::2", str(port))
    assert out.startswith("REFUSED"), out
    assert float(out.split()[1]) < 1.0, out


def test_egress_denied_for_other_v6_destinations(guest):
    out = py(guest, guest_tools.TCP_CONNECT, "2001:db8::1", "80")
    assert out.startswith("REFUSED"), out
    assert guest.session.counters()["drop.tcp_egress_denied"] >= 1


def _guest_server(g: GuestNet, argv: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen([*g.ns.prefix(), *argv], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def _http_server_in_guest(g: GuestNet, directory: str) -> subprocess.Popen:
    code = ("import http.server,socket,sys,functools\n"
            "class S(http.server.ThreadingHTTPServer): address_family = socket.AF_INET6\n"
            "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n"
            "h.log_message = lambda *a: None\n"
            f"s = S(('::', {TCP_FWD_GUEST}), h)\nprint('READY', flush=True)\ns.serve_forever()\n")
    return _guest_server(g, [sys.executable, "-u", "-c", code, directory])


def _download(port: int, expect: str, timeout: float = 120) -> None:
    h = hashlib.sha256()
    with socket.create_connection(("::1", port), timeout=timeout) as c:
        c.sendall(b"GET /blob.bin HTTP/1.0\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(65536)
            assert chunk, head
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200"), head
        h.update(body)
        while chunk := c.recv(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == expect


def _blob(directory: Path, size: int) -> str:
    h = hashlib.sha256()
    block = hashlib.sha256(b"minislirp-v6").digest() * (1 << 15)  # 1 MiB
    with open(directory / "blob.bin", "wb") as f:
        left = size
        while left:
            part = block[:min(left, len(block))]
            f.write(part)
            h.update(part)
            left -= len(part)
    return h.hexdigest()


def test_published_tcp_port_over_ipv6_http_download(guest):
    tmp = Path(tempfile.mkdtemp(prefix="kbn-msl6-"))
    try:
        digest = _blob(tmp, 16 << 20)
        srv = _http_server_in_guest(guest, str(tmp))
        try:
            _download(guest.tport, digest)
        finally:
            srv.kill()
            srv.wait(5)
        assert guest.session.counters()["tcp.inbound_established"] >= 1
    finally:
        shutil.rmtree(tmp)


def test_published_tcp_port_guest_sees_gateway_as_source(guest):
    srv = _guest_server(guest, [sys.executable, "-u", "-c", guest_tools.TCP_ECHO_SERVER_IN_GUEST,
                                str(TCP_FWD_GUEST), "::"])
    try:
        with socket.create_connection(("::1", guest.tport), timeout=10) as c:
            c.sendall(b"hello v6")
            assert c.recv(100) == b"hello v6"
        assert srv.stdout.readline().strip() == "PEER fd00::2"  # host ::1 appears as the v6 gateway
    finally:
        srv.kill()
        srv.wait(5)


def test_published_udp_port_over_ipv6(guest):
    srv = _guest_server(guest, [sys.executable, "-u", "-c", guest_tools.ECHO_SERVER_IN_GUEST,
                                str(UDP_FWD_GUEST), "::"])
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
            u.settimeout(5)
            u.sendto(b"hello guest6", ("::1", guest.uport))
            data, peer = u.recvfrom(100)
            assert data == b"hello guest6" and peer[:2] == ("::1", guest.uport)
    finally:
        srv.kill()
        srv.wait(5)


DHCLIENT_SCRIPT = """#!/bin/sh
case "$reason" in BOUND6|RENEW6|REBIND6)
  ip -6 addr add "$new_ip6_address/128" dev "$interface"
  echo "KBN_LEASE6 ip=$new_ip6_address dns=$new_dhcp6_name_servers" >> "$KBN_OUT";;
esac
exit 0
"""


def test_dhcpv6_lease_with_isc_dhclient(guest):
    dhclient = shutil.which("dhclient")
    if dhclient is None:
        pytest.skip("isc-dhcp-client (dhclient) not installed; busybox-static has no udhcpc6")
    tmp = Path(tempfile.mkdtemp(prefix="kbn-msl6-dh-"))
    pidfile = tmp / "dhclient.pid"
    script = tmp / "script.sh"
    script.write_text(DHCLIENT_SCRIPT)
    script.chmod(0o755)
    out = tmp / "out"
    env = {**os.environ, "KBN_OUT": str(out)}
    try:
        # -1: one attempt; dhclient goes to the background once bound, we stop it by its pid file
        r = subprocess.run([*guest.ns.prefix(), dhclient, "-6", "-1", "-v", "-lf", str(tmp / "leases"),
                            "-pf", str(pidfile), "-sf", str(script), "-e", f"KBN_OUT={out}", "tap0"],
                           capture_output=True, text=True, timeout=40, env=env)
        text = out.read_text() if out.exists() else ""
        assert "KBN_LEASE6 ip=fd00::15 dns=fd00::3" in text, r.stdout + r.stderr
        assert "fd00::15/128" in run_in(guest, ["ip", "-6", "addr", "show", "dev", "tap0"])
        c = guest.session.counters()
        assert c["dhcpv6.solicit"] >= 1 and c["dhcpv6.request"] >= 1
        # the guest now uses the configured address: forwarded flows go there
        assert guest.session.engine.ipv6.inbound_guest() == socket.inet_pton(socket.AF_INET6, "fd00::15")
        out6 = py(guest, guest_tools.TCP_CONNECT, "fd00::2", str(free_tcp_port("::1")))
        assert out6.startswith("REFUSED"), out6
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), 15)
            except (ValueError, ProcessLookupError):
                pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_published_tcp_port_over_ipv6_1gib(tmp_path, dns_server):
    if netns_supported():
        pytest.skip(netns_supported())
    tport = free_tcp_port("::1")
    fwd = (Forward(guest=TCP_FWD_GUEST, host=f"[::1]:{tport}", proto="tcp"),)
    with GuestNet(vnet_hdr=True, dns=(f"127.0.0.1:{dns_server.port}",), allow=("::1/128",), forward=fwd,
                  area="msl6") as g:
        assert "KBN_LEASE" in g.dhcp()
        assert "fd00::" in wait_slaac(g)
        digest = _blob(tmp_path, 1 << 30)
        srv = _http_server_in_guest(g, str(tmp_path))
        try:
            _download(tport, digest, timeout=300)
        finally:
            srv.kill()
            srv.wait(5)


def test_ping6_via_ping_sockets_in_a_host_namespace():
    """minislirp runs in a "host" namespace (ping sockets allowed) with a dead-end veth to a "gw"
    namespace; both are ours and get fd99::2 / fd99::1. The guest pings fd99::1 through an ICMPv6
    ping socket; a denied destination gets an ICMPv6 admin-prohibited error."""
    from kboxnet_core.testing.netns import HostNetns, Netns

    if netns_supported():
        pytest.skip(netns_supported())
    here = Path(__file__).parent
    with HostNetns(area="msl6h") as hns, Netns(area="msl6p") as gns:
        hns.host.ip("addr", "add", "fd99::2/64", "dev", "veth-h", "nodad")
        hns.gw.ip("addr", "add", "fd99::1/64", "dev", "veth-g", "nodad")
        serve = subprocess.Popen([*hns.host.prefix(), sys.executable, str(here.parent / "bench" / "serve.py"),
                                  "--netns", gns.name, "--allow", "fd99::1/128"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert serve.stdout.readline().strip() == "READY"
            gns.ip("link", "set", "tap0", "up")
            deadline = time.monotonic() + 15
            while True:
                addrs = gns.run(["ip", "-6", "addr", "show", "dev", "tap0"], check=False).stdout
                if "scope global" in addrs and "tentative" not in addrs:
                    break
                assert time.monotonic() < deadline, "no SLAAC address"
                time.sleep(0.2)
            out = subprocess.run([*gns.prefix(), "busybox", "ping6", "-c", "3", "-W", "2", "fd99::1"],
                                 capture_output=True, text=True, timeout=30).stdout
            assert "3 packets received" in out, out
            denied = subprocess.run([*gns.prefix(), "busybox", "ping6", "-c", "1", "-W", "2", "fd98::1"],
                                    capture_output=True, text=True, timeout=30)
            assert "0 packets received" in denied.stdout + denied.stderr
        finally:
            serve.terminate()
            _, err = serve.communicate(timeout=10)
        assert "icmp.echo_out=3" in err, err[-2000:]
        assert "drop.icmp_egress_denied=1" in err, err[-2000:]


def test_ipv6_disabled_guest_gets_no_address(dns_server):
    """``[net.ipv6] enabled = false``: no router advertisement, the kernel configures only link-local."""
    if netns_supported():
        pytest.skip(netns_supported())
    from kboxnet_core.config.model import Config, IPv6Profile, NetConfig

    g = GuestNet(dns=(f"127.0.0.1:{dns_server.port}",), area="msl6")
    net = g.config.net
    g.config = Config(net=NetConfig(**{**{f: getattr(net, f) for f in ("mtu", "dns", "egress")},
                                       "ipv6": IPv6Profile(enabled=False)}))
    with g:
        assert "KBN_LEASE" in g.dhcp()
        time.sleep(3)  # link-local DAD (1 s) + router solicitations
        out = run_in(g, ["ip", "-6", "addr", "show", "dev", "tap0"])
        assert "scope link" in out and "scope global" not in out, out
        c = g.session.counters()
        assert c.get("ndp.ra_out", 0) == 0 and c["drop.ipv6_disabled"] >= 1


def test_dns_to_an_ipv6_resolver_from_both_families():
    """The resolver is a dnsmasq on host [::1]: the guest's queries to fd00::3 and to 10.0.2.3 both reach it."""
    if netns_supported():
        pytest.skip(netns_supported())
    dnsmasq = shutil.which("dnsmasq")
    if dnsmasq is None:
        pytest.skip("dnsmasq not installed")
    port = free_udp_port("::1")
    proc = subprocess.Popen([dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                             "--bind-interfaces", "--listen-address=::1", f"--port={port}", "--pid-file=",
                             "--user=root", "--address=/example6.test/192.0.2.66"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        with GuestNet(dns=(f"[::1]:{port}",), allow=("::1/128",), area="msl6", vnet_hdr=True) as g:
            assert "KBN_LEASE" in g.dhcp()
            assert "fd00::" in wait_slaac(g)
            for server in ("fd00::3", "10.0.2.3"):
                out = run_in(g, ["busybox", "nslookup", "www.example6.test", server])
                assert "192.0.2.66" in out, (server, out)
    finally:
        proc.terminate()
        proc.wait(5)

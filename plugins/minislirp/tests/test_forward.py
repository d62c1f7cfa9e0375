"""Inbound port forwarding: host connections/datagrams to forwarded ports reach guest servers."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import threading

import guest_tools
import pytest
from guest import GuestNet

from kboxnet_core.config.model import Forward
from kboxnet_core.testing.netns import netns_supported
from kboxnet_core.testing.ports import free_tcp_port, free_udp_port

pytestmark = pytest.mark.netns


def _server(g: GuestNet, code: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*g.ns.prefix(), sys.executable, "-u", "-c", code, str(port)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


@pytest.mark.parametrize("kind", ["tap-vnet", "stream"])
def test_tcp_and_udp_forwarding_into_the_guest(kind):
    if netns_supported():
        pytest.skip(netns_supported())
    tport, uport = free_tcp_port(), free_udp_port()
    fwd = (Forward(guest=8080, host=f"127.0.0.1:{tport}", proto="tcp"),
           Forward(guest=9999, host=f"127.0.0.1:{uport}", proto="udp"))
    with GuestNet(vnet_hdr=kind == "tap-vnet", stream=kind == "stream", forward=fwd) as g:
        assert "KBN_LEASE" in g.dhcp()
        tsrv = _server(g, guest_tools.TCP_ECHO_SERVER_IN_GUEST, 8080)
        usrv = _server(g, guest_tools.ECHO_SERVER_IN_GUEST, 9999)
        try:
            # UDP: the host sends first, the guest answers through the same forwarded socket
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(5)
                u.sendto(b"hello guest", ("127.0.0.1", uport))
                data, peer = u.recvfrom(100)
                assert data == b"hello guest" and peer == ("127.0.0.1", uport)
            # TCP: 4 MiB through the guest's echo server, both directions at once
            payload = hashlib.sha256(b"seed").digest() * (4 << 15)
            received = bytearray()
            with socket.create_connection(("127.0.0.1", tport), timeout=20) as c:
                def reader():
                    while chunk := c.recv(1 << 16):
                        received.extend(chunk)

                t = threading.Thread(target=reader)
                t.start()
                c.sendall(payload)
                c.shutdown(socket.SHUT_WR)
                t.join(30)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            assert tsrv.stdout.readline().strip() == "PEER 10.0.2.2"  # host loopback seen as the gateway
            c = g.session.counters()
            assert c["tcp.inbound_established"] == 1 and c["udp.inbound_flows"] == 1
        finally:
            for p in (tsrv, usrv):
                p.kill()
                p.wait(5)


def test_forward_to_closed_guest_port_resets_host_connection():
    if netns_supported():
        pytest.skip(netns_supported())
    tport = free_tcp_port()
    with GuestNet(vnet_hdr=True, forward=(Forward(guest=8081, host=f"127.0.0.1:{tport}"),)) as g:
        assert "KBN_LEASE" in g.dhcp()
        with socket.create_connection(("127.0.0.1", tport), timeout=5) as c:
            c.settimeout(5)
            with pytest.raises(ConnectionResetError):
                c.sendall(b"x")
                c.recv(10)

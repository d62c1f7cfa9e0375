"""Session lifecycle over a real StreamLink (socketpair, qemu framing); no root needed."""

from __future__ import annotations

import socket
import struct
import tempfile
from pathlib import Path

from guest import guest_config
from kboxnet_minislirp.plugin import MinislirpBackend, kboxnet_register_backends
from kboxnet_minislirp.settings import MinislirpSettings
from kboxnet_minislirp.wire import HOST_MAC
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6ND_RA, IPv6
from scapy.layers.l2 import ARP, Ether

from kboxnet_core.backend import SessionContext
from kboxnet_core.config.model import Config
from kboxnet_core.links.stream import StreamLink


def _open(cfg: Config | None = None):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    link = StreamLink(a)
    ctx = SessionContext(config=cfg or guest_config(), runtime_dir=Path(tempfile.mkdtemp()))
    session = MinislirpBackend().open(link, ctx)
    session.start()
    assert session.ready(5)
    return session, link, b


def _send(sock: socket.socket, frame: bytes) -> None:
    sock.sendall(struct.pack(">I", len(frame)) + frame)


def _recv(sock: socket.socket) -> Ether:
    sock.settimeout(5)
    (n,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
    return Ether(sock.recv(n, socket.MSG_WAITALL))


def test_backend_registration_and_probe():
    assert kboxnet_register_backends() == [MinislirpBackend]
    avail = MinislirpBackend().probe(guest_config())
    assert avail.available and avail.priority == 50
    assert "Python 3." in avail.reason and "ping sockets" in avail.reason
    assert MinislirpBackend.config_section == "minislirp" and MinislirpBackend.config_model is MinislirpSettings


def test_serves_then_ends_with_guest_gone_when_peer_closes():
    session, link, peer = _open()
    try:
        mac = "02:00:00:00:00:15"
        _send(peer, bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc="10.0.2.15",
                                                                          pdst="10.0.2.2")))
        reply = _recv(peer)
        if IPv6 in reply:  # the router advertisement sent at start
            assert ICMPv6ND_RA in reply
            reply = _recv(peer)
        assert reply[ARP].op == 2 and reply[ARP].hwsrc == HOST_MAC.hex(":")
        _send(peer, bytes(Ether(src=mac, dst=HOST_MAC.hex(":")) / IP(src="10.0.2.15", dst="10.0.2.3")
                          / ICMP(id=1, seq=1)))
        assert _recv(peer)[ICMP].type == 0
        peer.close()
        result = session.wait(5)
        assert result is not None and result.ok and result.guest_gone
        counters = session.counters()
        assert counters["arp.replies"] == 1 and counters["icmp.echo_local"] == 1
        assert not link.closed or link.closed  # the session never closes the link itself
    finally:
        link.close()


def test_stop_ends_session_and_leaves_link_open():
    session, link, peer = _open()
    try:
        session.stop()
        result = session.wait(5)
        assert result is not None and result.ok and not result.guest_gone
        assert not link.closed
        link.socket.getsockname()  # still usable by a fallback backend
    finally:
        peer.close()
        link.close()


def test_settings_from_config_section():
    settings = MinislirpSettings(udp_timeout=5.0, offload=False)
    net = guest_config().net
    cfg = Config(net=type(net)(**{**{f: getattr(net, f) for f in ("mtu", "dns", "egress")},
                                  "plugins": {"minislirp": settings}}))
    session, link, peer = _open(cfg)
    try:
        assert session.engine.settings.udp_timeout == 5.0
    finally:
        session.stop()
        session.wait(5)
        peer.close()
        link.close()

"""Unit tests on crafted frames: parsers, DHCP, ARP, ICMP, TCP control segments, checksums.

scapy is the independent checker: every frame the engine writes is re-parsed
by scapy and its checksums recomputed there.
"""

from __future__ import annotations

import socket
import time

import pytest
from guest import guest_config
from hypothesis import given, settings
from hypothesis import strategies as st
from kboxnet_minislirp import checksum as ck
from kboxnet_minislirp.dhcp import encode_search, parse_options
from kboxnet_minislirp.engine import Engine
from kboxnet_minislirp.tcp import parse_syn_options
from kboxnet_minislirp.wire import HOST_MAC
from memlink import MemLink
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

GUEST_MAC = "02:00:00:00:00:15"


@pytest.fixture
def engine():
    link = MemLink()
    eng = Engine(link, guest_config().net)
    yield eng
    eng.close()
    link.close()


def feed(eng: Engine, pkt) -> list[Ether]:
    link = eng.link
    link.sent.clear()
    eng.input(memoryview(bytes(pkt)))
    eng.tcp.end_of_batch()
    return [Ether(f) for f in link.sent]


def assert_checksums_ok(frame: Ether) -> None:
    """Recompute every checksum with scapy and compare with what we sent."""
    ip = frame[IP]
    again = Ether(bytes(frame))
    del again[IP].chksum
    layer = None
    for cls in (TCP, UDP, ICMP):
        if cls in again:
            layer = cls
            del again[cls].chksum
    rebuilt = Ether(bytes(again))
    assert rebuilt[IP].chksum == ip.chksum, "IPv4 header checksum"
    if layer is not None:
        assert rebuilt[layer].chksum == frame[layer].chksum, f"{layer.__name__} checksum"


def test_checksum_matches_rfc1071_examples():
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ck.checksum(data) == 0x220D  # RFC 1071 section 3 example sum 0xddf2 -> ~ = 0x220d
    assert ck.verifies(data + bytes.fromhex("220d"))
    assert ck.checksum(b"\x01") == 0xFEFF  # odd length pads with zero


@given(st.binary(min_size=0, max_size=3000))
@settings(max_examples=200, deadline=None)
def test_checksum_agrees_with_scapy(data):
    from scapy.utils import checksum as scapy_checksum

    assert ck.checksum(data) == scapy_checksum(data) or (ck.checksum(data) == 0 and scapy_checksum(data) == 0xFFFF)


def test_arp_reply_for_gateway_and_learns_mac(engine):
    req = Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=GUEST_MAC, psrc="10.0.2.15",
                                                              pdst="10.0.2.2")
    (reply,) = feed(engine, req)
    assert reply[ARP].op == 2 and reply[ARP].psrc == "10.0.2.2" and reply[ARP].pdst == "10.0.2.15"
    assert reply[ARP].hwsrc == HOST_MAC.hex(":") and reply.dst == GUEST_MAC
    assert engine.guest_mac == bytes.fromhex(GUEST_MAC.replace(":", ""))
    # never answer for the guest's own address (duplicate address detection)
    probe = Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=GUEST_MAC, psrc="0.0.0.0",
                                                                pdst="10.0.2.15")
    assert feed(engine, probe) == []


def _dhcp(kind: str, **opts):
    options = [("message-type", kind)] + list(opts.items()) + ["end"]
    return (Ether(src=GUEST_MAC, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
            / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(GUEST_MAC.replace(":", "")), xid=0x1234)
            / DHCP(options=options))


def _opts(frame) -> dict:
    return {o[0]: o[1:] for o in frame[DHCP].options if isinstance(o, tuple)}


def test_dhcp_discover_request_release(engine):
    (offer,) = feed(engine, _dhcp("discover"))
    assert_checksums_ok(offer)
    o = _opts(offer)
    assert offer[BOOTP].yiaddr == "10.0.2.15" and offer[BOOTP].xid == 0x1234
    assert o["message-type"] == (2,)
    assert o["subnet_mask"] == ("255.255.255.0",) and o["router"] == ("10.0.2.2",)
    assert o["name_server"] == ("10.0.2.3",) and o["lease_time"] == (86400,)
    assert o["interface-mtu"] == (1500,) and o["server_id"] == ("10.0.2.2",)
    (ack,) = feed(engine, _dhcp("request", requested_addr="10.0.2.15", server_id="10.0.2.2"))
    assert _opts(ack)["message-type"] == (5,)
    (nak,) = feed(engine, _dhcp("request", requested_addr="10.0.2.99"))
    assert _opts(nak)["message-type"] == (6,) and nak[BOOTP].yiaddr == "0.0.0.0"
    assert feed(engine, _dhcp("request", requested_addr="10.0.2.15", server_id="10.9.9.9")) == []
    assert feed(engine, _dhcp("release")) == []
    assert engine.counters["dhcp.release"] == 1
    inform = _dhcp("inform")
    inform[BOOTP].ciaddr = "10.0.2.15"
    (ack2,) = feed(engine, inform)
    assert _opts(ack2)["message-type"] == (5,) and "lease_time" not in _opts(ack2)


def test_dhcp_classless_route_when_gateway_off_subnet():
    import ipaddress

    from kboxnet_core.config.model import Config, IPv4Profile, NetConfig

    net = NetConfig(ipv4=IPv4Profile(address=ipaddress.IPv4Address("10.0.2.15"), prefix_len=30,
                                     gateway=ipaddress.IPv4Address("10.0.3.1")))
    link = MemLink()
    eng = Engine(link, Config(net=net).net)
    try:
        (offer,) = feed(eng, _dhcp("discover"))
        raw = bytes(offer[UDP].payload)
        opts = parse_options(raw[240:])
        assert opts[121] == bytes([32, 10, 0, 3, 1, 0, 0, 0, 0]) + bytes([0, 10, 0, 3, 1])
    finally:
        eng.close()
        link.close()


def test_dhcp_option_helpers():
    assert encode_search(("example.test",)) == b"\x07example\x04test\x00"
    assert parse_options(b"\x35\x01\x01\x00\x03\x04\x0a\x00\x02\x02\xff") == {53: b"\x01", 3: b"\x0a\x00\x02\x02"}
    assert parse_options(b"\x35\x05\x01") == {}  # truncated option is ignored


def test_ping_gateway_answered_locally(engine):
    req = Ether(src=GUEST_MAC, dst=HOST_MAC.hex(":")) / IP(src="10.0.2.15", dst="10.0.2.2") / \
        ICMP(type=8, id=77, seq=3) / Raw(b"x" * 33)
    (rep,) = feed(engine, req)
    assert rep[ICMP].type == 0 and rep[ICMP].id == 77 and rep[ICMP].seq == 3
    assert rep[IP].src == "10.0.2.2" and rep[IP].dst == "10.0.2.15" and bytes(rep[Raw]) == b"x" * 33
    assert_checksums_ok(rep)


def _syn(dst: str, dport: int, sport: int = 40000, seq: int = 1000):
    return (Ether(src=GUEST_MAC, dst=HOST_MAC.hex(":")) / IP(src="10.0.2.15", dst=dst)
            / TCP(sport=sport, dport=dport, flags="S", seq=seq, options=[("MSS", 1460), ("WScale", 7)]))


def test_tcp_egress_denied_gets_rst_without_socket(engine):
    (rst,) = feed(engine, _syn("192.0.2.1", 80))
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001
    assert_checksums_ok(rst)
    assert engine.counters["drop.tcp_egress_denied"] == 1
    assert not engine.tcp.flows


def test_tcp_connect_refused_then_synack_for_listener(engine):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # now refused
    assert feed(engine, _syn("10.0.2.2", port)) == []
    deadline = time.monotonic() + 2
    out = []
    while not out and time.monotonic() < deadline:
        for fd, ev in engine.ep.poll(0.1):
            engine.handlers[fd](ev)
        out = [Ether(f) for f in engine.link.sent]
    (rst,) = out
    assert rst[TCP].flags == "RA" and rst[TCP].ack == 1001
    assert engine.counters["tcp.connect_failed"] == 1

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    engine.link.sent.clear()
    feed(engine, _syn("10.0.2.2", port, sport=40001))
    deadline = time.monotonic() + 2
    out = []
    while not out and time.monotonic() < deadline:
        for fd, ev in engine.ep.poll(0.1):
            engine.handlers[fd](ev)
        out = [Ether(f) for f in engine.link.sent]
    (synack,) = out
    assert synack[TCP].flags == "SA" and synack[TCP].ack == 1001
    opts = dict(synack[TCP].options)
    assert opts["MSS"] == 1460 and opts["WScale"] == 8
    assert_checksums_ok(synack)
    srv.close()


def test_tcp_segment_for_unknown_flow_gets_rst(engine):
    pkt = Ether(src=GUEST_MAC, dst=HOST_MAC.hex(":")) / IP(src="10.0.2.15", dst="10.0.2.2") / \
        TCP(sport=1234, dport=80, flags="A", seq=5, ack=777)
    (rst,) = feed(engine, pkt)
    assert rst[TCP].flags == "R" and rst[TCP].seq == 777
    assert_checksums_ok(rst)


def test_syn_option_parser():
    raw = bytes(TCP(options=[("NOP", None), ("MSS", 8960), ("SAckOK", b""), ("WScale", 9)]))
    mv = memoryview(raw)
    assert parse_syn_options(mv, 20, len(raw)) == (8960, 9, True)
    assert parse_syn_options(mv, 20, 20) == (536, -1, False)
    assert parse_syn_options(memoryview(b"\x02\x04\x05"), 0, 3) == (536, -1, False)  # truncated


def _good_tcp():
    return Ether(src=GUEST_MAC, dst=HOST_MAC.hex(":")) / IP(src="10.0.2.15", dst="192.0.2.1") / \
        TCP(sport=1, dport=2, flags="A")


MALFORMED = {
    "eth_truncated": lambda: b"\x00" * 10,
    "ethertype_unknown": lambda: bytes(Ether(type=0x88B5) / Raw(b"x" * 50)),
    "ipv4_truncated": lambda: bytes(_good_tcp())[:30],
    "ipv4_bad_ihl": lambda: bytes(_good_tcp())[:14] + b"\x44" + bytes(_good_tcp())[15:],
    "ipv4_options": lambda: bytes(Ether() / IP(dst="10.0.2.2", options=b"\x01\x01\x01\x00") / TCP()),
    "ipv4_bad_length": lambda: bytes(_good_tcp())[:16] + b"\x05\xdc" + bytes(_good_tcp())[18:],
    "ipv4_fragment": lambda: bytes(Ether() / IP(dst="10.0.2.2", flags="MF") / Raw(b"x" * 40)),
    "ipv4_bad_checksum": lambda: bytes(Ether() / IP(dst="10.0.2.2", chksum=0x1234) / TCP()),
    "tcp_truncated": lambda: bytes(Ether() / IP(dst="10.0.2.2", proto=6) / Raw(b"x" * 10)),
    "tcp_bad_doff": lambda: bytes(Ether() / IP(dst="10.0.2.2") / TCP(dataofs=3)),
    "tcp_bad_checksum": lambda: bytes(Ether() / IP(dst="10.0.2.2") / TCP(chksum=0x1234)),
    "udp_bad_length": lambda: bytes(Ether() / IP(dst="10.0.2.2") / UDP(len=200) / Raw(b"x")),
    "udp_bad_checksum": lambda: bytes(Ether() / IP(dst="10.0.2.2") / UDP(chksum=0x1234) / Raw(b"x")),
    "icmp_bad_checksum": lambda: bytes(Ether() / IP(dst="10.0.2.2") / ICMP(chksum=0x1234)),
    "icmp_truncated": lambda: bytes(Ether() / IP(dst="10.0.2.2", proto=1) / Raw(b"x" * 4)),
    "arp_truncated": lambda: bytes(Ether(type=0x0806) / Raw(b"\x00\x01")),
    "ip_proto_unsupported": lambda: bytes(Ether() / IP(dst="10.0.2.2", proto=47) / Raw(b"x" * 8)),
}


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_malformed_frames_are_dropped_and_counted(engine, reason):
    out = feed(engine, MALFORMED[reason]())
    assert out == []
    assert engine.counters["drop." + reason] == 1, dict(engine.counters)


@given(st.binary(min_size=0, max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_frames_never_raise(data):
    link = MemLink()
    eng = Engine(link, guest_config().net)
    try:
        base = bytes(Ether(src=GUEST_MAC, dst=HOST_MAC.hex(":")) / IP(src="10.0.2.15", dst="10.0.2.2"))
        for frame in (data, base[:14] + data, base[:34] + data):
            eng.input(memoryview(frame))
        assert eng.counters["drop.internal_error"] == 0
    finally:
        eng.close()
        link.close()


def test_ping_without_ping_sockets_is_counted_and_logged_once(caplog):
    from kboxnet_minislirp.plugin import ping_sockets_permitted

    if ping_sockets_permitted():
        pytest.skip("ping sockets are permitted here; this test must not send a real echo request")
    link = MemLink()
    eng = Engine(link, guest_config(allow=("198.51.100.0/24",)).net)
    try:
        for seq in range(3):
            req = Ether(src=GUEST_MAC, dst=HOST_MAC.hex(":")) / IP(src="10.0.2.15", dst="198.51.100.7") / \
                ICMP(type=8, id=5, seq=seq)
            assert feed(eng, req) == []
        assert eng.counters["drop.icmp_no_ping_socket"] == 3
        assert sum("ping sockets are not permitted" in r.getMessage() for r in caplog.records) == 1
    finally:
        eng.close()
        link.close()


def test_dhcp_search_option_from_host_resolv_conf(tmp_path):
    from kboxnet_minislirp.dhcp import DhcpServer, host_search_domains

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\nsearch corp.example lab.example\n")
    assert host_search_domains(str(conf)) == ("corp.example", "lab.example")
    assert host_search_domains(str(tmp_path / "missing")) == ()
    link = MemLink()
    eng = Engine(link, guest_config().net)
    try:
        eng.dhcp = DhcpServer(eng, address=eng.guest_ip4, prefix_len=24, gateway=eng.gateway4, dns=eng.dns4,
                              lease_time=3600, mtu=1500, search=("corp.example",))
        (offer,) = feed(eng, _dhcp("discover"))
        opts = parse_options(bytes(offer[UDP].payload)[240:])
        assert opts[119] == b"\x04corp\x07example\x00"
    finally:
        eng.close()
        link.close()

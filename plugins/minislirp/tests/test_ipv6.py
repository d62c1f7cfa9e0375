"""IPv6 unit tests on crafted frames: NDP, RA contents, DHCPv6, ICMPv6, TCP/UDP over IPv6.

scapy builds the guest frames and re-checks every checksum the engine writes
(ICMPv6, UDP and TCP over the IPv6 pseudo-header).
"""

from __future__ import annotations

import socket

import pytest
from guest import guest_config
from hypothesis import given, settings
from hypothesis import strategies as st
from kboxnet_minislirp.engine import Engine
from kboxnet_minislirp.wire import HOST_MAC
from memlink import MemLink
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_InfoRequest,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSServers,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptServerId,
)
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_RS,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kboxnet_core.config.model import Config, IPv6Profile, NetConfig

GUEST_MAC = "02:00:00:00:00:15"
GUEST_LL = "fe80::ff:fe00:15"
HOST = HOST_MAC.hex(":")


def make_engine(**v6) -> Engine:
    net = guest_config(allow=("::1/128",)).net
    if v6:
        net = NetConfig(**{**{f: getattr(net, f) for f in ("mtu", "dns", "egress")}, "ipv6": IPv6Profile(**v6)})
    return Engine(MemLink(), net)


@pytest.fixture
def engine():
    eng = make_engine()
    yield eng
    eng.close()
    eng.link.close()


def feed(eng: Engine, pkt) -> list[Ether]:
    eng.link.sent.clear()
    eng.input(memoryview(bytes(pkt)))
    eng.tcp.end_of_batch()
    return [Ether(f) for f in eng.link.sent]


def assert_v6_checksum(frame: Ether) -> None:
    """Delete the L4 checksum and let scapy recompute it over the IPv6 pseudo-header."""
    l4 = frame[IPv6].payload
    field = "chksum" if isinstance(l4, (TCP, UDP)) else "cksum"
    again = Ether(bytes(frame))
    delattr(again[IPv6].payload, field)
    rebuilt = Ether(bytes(again))
    assert getattr(rebuilt[IPv6].payload, field) == getattr(l4, field), f"{type(l4).__name__} checksum"


def eth(dst: str = HOST) -> Ether:
    return Ether(src=GUEST_MAC, dst=dst)


def test_router_solicitation_gets_ra_with_prefix_mtu_rdnss(engine):
    out = feed(engine, eth("33:33:00:00:00:02") / IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
               / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC))
    assert len(out) == 1
    ra = out[0]
    assert_v6_checksum(ra)
    assert ra.dst == "33:33:00:00:00:01" and ra[IPv6].src == "fe80::2" and ra[IPv6].dst == "ff02::1"
    assert ra[IPv6].hlim == 255
    r = ra[ICMPv6ND_RA]
    assert r.M == 1 and r.O == 1 and r.routerlifetime > 0
    pi = ra[ICMPv6NDOptPrefixInfo]
    assert pi.prefix == "fd00::" and pi.prefixlen == 64 and pi.A == 1 and pi.L == 1
    assert ra[ICMPv6NDOptMTU].mtu == 1500
    assert ra[ICMPv6NDOptRDNSS].dns == ["fd00::3"]
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == HOST
    assert engine.guest_mac == bytes.fromhex("020000000015")


def test_ra_without_dhcpv6_has_no_m_flag():
    eng = make_engine(dhcpv6=False, prefix="fd42:1::/64", address="fd42:1::15", gateway="fd42:1::2",
                      dns="fd42:1::3")
    try:
        out = feed(eng, eth() / IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS())
        assert out[0][ICMPv6ND_RA].M == 0 and out[0][ICMPv6NDOptPrefixInfo].prefix == "fd42:1::"
        sol = eth() / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6_Solicit()
        assert feed(eng, sol) == []
        assert eng.counters["drop.dhcpv6_disabled"] == 1
    finally:
        eng.close()
        eng.link.close()


def test_ipv6_disabled_drops_everything():
    eng = make_engine(enabled=False)
    try:
        assert feed(eng, eth() / IPv6(src=GUEST_LL, dst="ff02::2", hlim=255) / ICMPv6ND_RS()) == []
        assert eng.counters["drop.ipv6_disabled"] == 1
    finally:
        eng.close()
        eng.link.close()


@pytest.mark.parametrize("target", ["fd00::2", "fd00::3", "fe80::2"])
def test_neighbour_solicitation_for_router_addresses(engine, target):
    ns = eth("33:33:ff:00:00:02") / IPv6(src=GUEST_LL, dst="ff02::1:ff00:2", hlim=255) / ICMPv6ND_NS(tgt=target) \
        / ICMPv6NDOptSrcLLAddr(lladdr=GUEST_MAC)
    out = feed(engine, ns)
    assert len(out) == 1
    na = out[0]
    assert_v6_checksum(na)
    assert na.dst == GUEST_MAC and na[IPv6].dst == GUEST_LL and na[IPv6].hlim == 255
    assert na[ICMPv6ND_NA].tgt == target and na[ICMPv6ND_NA].R == 1 and na[ICMPv6ND_NA].S == 1
    assert bytes(na[ICMPv6ND_NA].payload)[2:8] == HOST_MAC


def test_neighbour_solicitation_for_others_and_bad_hop_limit_ignored(engine):
    assert feed(engine, eth() / IPv6(src=GUEST_LL, dst="ff02::1:ff00:99", hlim=255) / ICMPv6ND_NS(tgt="fd00::99")) == []
    assert feed(engine, eth() / IPv6(src=GUEST_LL, dst="ff02::1:ff00:2", hlim=64) / ICMPv6ND_NS(tgt="fd00::2")) == []
    assert engine.counters["drop.ndp_bad_hop_limit"] == 1


def test_duplicate_address_detection_teaches_the_guest_address(engine):
    fam = engine.ipv6
    assert fam.inbound_guest() == socket.inet_pton(socket.AF_INET6, "fd00::15")
    slaac = "fd00::ff:fe00:15"
    assert feed(engine, eth() / IPv6(src="::", dst="ff02::1:ff00:15", hlim=255) / ICMPv6ND_NS(tgt=slaac)) == []
    assert fam.inbound_guest() == socket.inet_pton(socket.AF_INET6, slaac)
    feed(engine, eth() / IPv6(src="::", dst="ff02::1:ff00:15", hlim=255) / ICMPv6ND_NS(tgt="fd00::15"))
    assert fam.inbound_guest() == socket.inet_pton(socket.AF_INET6, "fd00::15")


def test_echo_to_gateway_answered_locally(engine):
    req = eth() / IPv6(src="fd00::15", dst="fd00::2") / ICMPv6EchoRequest(id=7, seq=3, data=b"hello")
    out = feed(engine, req)
    assert len(out) == 1
    rep = out[0]
    assert_v6_checksum(rep)
    assert rep[IPv6].src == "fd00::2" and rep[IPv6].dst == "fd00::15"
    assert rep[ICMPv6EchoReply].id == 7 and rep[ICMPv6EchoReply].seq == 3 and rep[ICMPv6EchoReply].data == b"hello"


def test_bad_icmpv6_checksum_dropped(engine):
    raw = bytearray(bytes(eth() / IPv6(src="fd00::15", dst="fd00::2") / ICMPv6EchoRequest(id=7, seq=3)))
    raw[-1] ^= 0xFF
    assert feed(engine, Ether(bytes(raw))) == []
    assert engine.counters["drop.icmp_bad_checksum"] == 1


def test_dhcpv6_solicit_request_reply(engine):
    duid = DUID_LL(lladdr=GUEST_MAC)
    sol = eth("33:33:00:01:00:02") / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) \
        / DHCP6_Solicit(trid=0x123456) / DHCP6OptClientId(duid=duid) / DHCP6OptIA_NA(iaid=9)
    out = feed(engine, sol)
    assert len(out) == 1
    adv = out[0]
    assert_v6_checksum(adv)
    assert adv[IPv6].src == "fe80::2" and adv[IPv6].dst == GUEST_LL and adv[UDP].dport == 546
    a = adv[DHCP6_Advertise]
    assert a.trid == 0x123456
    assert a[DHCP6OptIA_NA].iaid == 9 and a[DHCP6OptIAAddress].addr == "fd00::15"
    assert a[DHCP6OptDNSServers].dnsservers == ["fd00::3"]
    server_duid = a[DHCP6OptServerId].duid
    req = eth("33:33:00:01:00:02") / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) \
        / DHCP6_Request(trid=0x654321) / DHCP6OptClientId(duid=duid) / DHCP6OptServerId(duid=server_duid) \
        / DHCP6OptIA_NA(iaid=9)
    out = feed(engine, req)
    rep = out[0]
    assert_v6_checksum(rep)
    assert rep[DHCP6_Reply].trid == 0x654321 and rep[DHCP6OptIAAddress].addr == "fd00::15"
    assert rep[DHCP6OptIAAddress].validlft > 0
    # a request for another server is ignored
    other = eth() / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6_Request(trid=1) \
        / DHCP6OptClientId(duid=duid) / DHCP6OptServerId(duid=DUID_LL(lladdr="02:99:00:00:00:01"))
    assert feed(engine, other) == []
    assert engine.counters["drop.dhcpv6_other_server"] == 1


def test_dhcpv6_renew_rebind_release(engine):
    from scapy.layers.dhcp6 import DHCP6_Rebind, DHCP6_Release, DHCP6_Renew, DHCP6OptStatusCode

    duid = DUID_LL(lladdr=GUEST_MAC)
    server = DHCP6OptServerId(duid=engine.dhcp6.duid)
    base = eth() / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547)
    for msg, with_server in ((DHCP6_Renew(trid=11), True), (DHCP6_Rebind(trid=12), False)):
        pkt = base / msg / DHCP6OptClientId(duid=duid) / DHCP6OptIA_NA(iaid=3)
        if with_server:
            pkt = base / msg / DHCP6OptClientId(duid=duid) / server / DHCP6OptIA_NA(iaid=3)
        out = feed(engine, pkt)
        assert out and out[0][DHCP6_Reply].trid == msg.trid
        assert out[0][DHCP6OptIAAddress].addr == "fd00::15"
    out = feed(engine, base / DHCP6_Release(trid=13) / DHCP6OptClientId(duid=duid) / server / DHCP6OptIA_NA(iaid=3))
    assert out[0][DHCP6_Reply].trid == 13 and out[0][DHCP6OptStatusCode].statuscode == 0
    c = engine.counters
    assert c["dhcpv6.renew"] == 1 and c["dhcpv6.rebind"] == 1 and c["dhcpv6.release"] == 1


def test_dhcpv6_information_request(engine):
    inf = eth() / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / DHCP6_InfoRequest(trid=5)
    out = feed(engine, inf)
    assert out and out[0][DHCP6_Reply].trid == 5
    assert out[0][DHCP6OptDNSServers].dnsservers == ["fd00::3"]
    assert DHCP6OptIA_NA not in out[0]


def test_dhcpv6_malformed_options_dropped(engine):
    bad = eth() / IPv6(src=GUEST_LL, dst="ff02::1:2") / UDP(sport=546, dport=547) / Raw(b"\x01\x00\x00\x01\x00\x01\x00\x40ab")
    assert feed(engine, bad) == []
    assert engine.counters["drop.dhcpv6_bad_options"] == 1


@pytest.mark.parametrize("raw, reason", [
    (bytes(Ether(src=GUEST_MAC, dst=HOST, type=0x86DD) / Raw(b"\x60" + bytes(20))), "ipv6_truncated"),
    (bytes(Ether(src=GUEST_MAC, dst=HOST) / IPv6(src="fd00::15", dst="fd00::2", plen=500) / TCP()), "ipv6_bad_length"),
    (bytes(Ether(src=GUEST_MAC, dst=HOST, type=0x86DD) / Raw(b"\x40" + bytes(60))), "ipv6_bad_version"),
    (bytes(Ether(src=GUEST_MAC, dst=HOST) / IPv6(src="fd00::15", dst="fd00::2", nh=44) / Raw(bytes(16))),
     "ipv6_ext_header"),
    (bytes(Ether(src=GUEST_MAC, dst=HOST) / IPv6(src="ff02::1", dst="fd00::2") / UDP()), "ipv6_multicast_source"),
])
def test_malformed_ipv6_dropped_and_counted(engine, raw, reason):
    assert feed(engine, Ether(raw)) == []
    assert engine.counters["drop." + reason] == 1


def test_tcp6_refused_port_gets_rst_with_valid_checksum(engine):
    # a closed port on host ::1 (bind, then close: nobody listens)
    s = socket.socket(socket.AF_INET6)
    s.bind(("::1", 0))
    port = s.getsockname()[1]
    s.close()
    syn = eth() / IPv6(src="fd00::15", dst="fd00::2") / TCP(sport=40000, dport=port, flags="S", seq=1000)
    feed(engine, syn)
    import time

    deadline = time.monotonic() + 2
    rst = []
    while time.monotonic() < deadline and not rst:
        for fd, ev in engine.ep.poll(0.05):
            cb = engine.handlers.get(fd)
            if cb:
                cb(ev)
        rst = [Ether(f) for f in engine.link.sent if TCP in Ether(f) and Ether(f)[TCP].flags & 0x04]
    assert rst, "no RST"
    assert_v6_checksum(rst[0])
    assert rst[0][IPv6].src == "fd00::2" and rst[0][TCP].ack == 1001


def test_tcp6_syn_ack_mss_and_checksum(engine):
    srv = socket.socket(socket.AF_INET6)
    srv.bind(("::1", 0))
    srv.listen(1)
    try:
        port = srv.getsockname()[1]
        syn = eth() / IPv6(src="fd00::15", dst="fd00::2") / TCP(sport=40001, dport=port, flags="S", seq=5,
                                                                 options=[("MSS", 1440), ("WScale", 7)])
        feed(engine, syn)
        import time

        deadline = time.monotonic() + 2
        synack = []
        while time.monotonic() < deadline and not synack:
            for fd, ev in engine.ep.poll(0.05):
                cb = engine.handlers.get(fd)
                if cb:
                    cb(ev)
            synack = [Ether(f) for f in engine.link.sent if TCP in Ether(f) and Ether(f)[TCP].flags == 0x12]
        assert synack
        assert_v6_checksum(synack[0])
        assert dict(synack[0][TCP].options)["MSS"] == 1440  # 1500 - 40 - 20
    finally:
        srv.close()


def test_udp6_to_denied_destination_gets_icmpv6_admin_prohibited(engine):
    pkt = eth() / IPv6(src="fd00::15", dst="2001:db8::1") / UDP(sport=5000, dport=53) / Raw(b"x")
    out = feed(engine, pkt)
    assert len(out) == 1 and ICMPv6DestUnreach in out[0]
    assert out[0][ICMPv6DestUnreach].code == 1
    assert_v6_checksum(out[0])


def test_udp6_datagram_round_trip_via_host_loopback(engine):
    srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.bind(("::1", 0))
    srv.settimeout(2)
    try:
        port = srv.getsockname()[1]
        feed(engine, eth() / IPv6(src="fd00::15", dst="fd00::2") / UDP(sport=5001, dport=port) / Raw(b"ping6"))
        data, peer = srv.recvfrom(100)
        assert data == b"ping6"
        srv.sendto(b"pong6", peer)
        import time

        deadline = time.monotonic() + 2
        got = []
        while time.monotonic() < deadline and not got:
            for fd, ev in engine.ep.poll(0.05):
                engine.handlers[fd](ev)
            got = [Ether(f) for f in engine.link.sent if UDP in Ether(f)]
        assert got and got[0][Raw].load == b"pong6"
        assert got[0][IPv6].src == "fd00::2" and got[0][UDP].sport == port
        assert_v6_checksum(got[0])
    finally:
        srv.close()


def test_config_default_is_ula():
    cfg = Config()
    assert str(cfg.net.ipv6.prefix) == "fd00::/64"


@settings(max_examples=300, deadline=None)
@given(nh=st.sampled_from([6, 17, 58, 0, 44, 99]), body=st.binary(max_size=200), hlim=st.sampled_from([64, 255]),
       dst=st.sampled_from(["fd00::2", "fd00::3", "fe80::2", "ff02::1", "ff02::1:2", "2001:db8::1"]))
def test_random_ipv6_payloads_never_raise(nh, body, hlim, dst):
    eng = make_engine()
    try:
        frame = bytes(Ether(src=GUEST_MAC, dst=HOST) / IPv6(src=GUEST_LL, dst=dst, nh=nh, hlim=hlim) / Raw(body))
        eng.input(memoryview(frame))
        # the same with a valid ICMPv6/UDP checksum so that parsing goes past the checksum
        if nh in (17, 58) and len(body) >= 8:
            pkt = Ether(frame)
            raw = bytearray(bytes(pkt))
            raw[54 + (6 if nh == 17 else 2):54 + (8 if nh == 17 else 4)] = b"\0\0"
            fixed = Ether(bytes(raw))
            payload = bytes(fixed[IPv6].payload)
            from scapy.layers.inet6 import in6_chksum

            ck = in6_chksum(nh, fixed[IPv6], payload)
            off = 54 + (6 if nh == 17 else 2)
            raw[off:off + 2] = ck.to_bytes(2, "big")
            if nh == 17:
                raw[54 + 4:54 + 6] = len(payload).to_bytes(2, "big")
                fixed = Ether(bytes(raw))
                raw[off:off + 2] = b"\0\0"
                ck = in6_chksum(nh, Ether(bytes(raw))[IPv6], bytes(Ether(bytes(raw))[IPv6].payload))
                raw[off:off + 2] = ck.to_bytes(2, "big")
            eng.input(memoryview(bytes(raw)))
        assert eng.counters.get("drop.internal_error", 0) == 0
    finally:
        eng.close()
        eng.link.close()


def test_forwarded_syn_follows_the_guest_to_its_slaac_address():
    """A host connection that arrives before the guest has an address: the SYN goes to ipv6.address;
    once the guest's DAD probe shows its SLAAC address, the retransmitted SYN goes there."""
    import time

    from kboxnet_core.config.model import Forward
    from kboxnet_core.testing.ports import free_tcp_port

    port = free_tcp_port("::1")
    net = guest_config(allow=("::1/128",), forward=(Forward(guest=8080, host=f"[::1]:{port}"),)).net
    eng = Engine(MemLink(), net)
    eng.learn_guest_mac(bytes.fromhex("020000000015"))
    client = socket.socket(socket.AF_INET6)
    client.setblocking(False)
    try:
        client.connect_ex(("::1", port))

        def syns():
            return [Ether(f) for f in eng.link.sent if TCP in Ether(f) and Ether(f)[TCP].flags == 0x02]

        deadline = time.monotonic() + 2
        while not syns() and time.monotonic() < deadline:
            for fd, ev in eng.ep.poll(0.05):
                eng.handlers[fd](ev)
        first = syns()
        assert first and first[0][IPv6].dst == "fd00::15" and first[0][IPv6].src == "fd00::2"
        feed(eng, eth() / IPv6(src="::", dst="ff02::1:ff00:99", hlim=255) / ICMPv6ND_NS(tgt="fd00::99"))
        eng.link.sent.clear()
        eng.tcp.tick(time.monotonic() + 2)
        again = syns()
        assert again and again[0][IPv6].dst == "fd00::99" and again[0][TCP].dport == 8080
        assert_v6_checksum(again[0])
        assert eng.counters["tcp.inbound_retargeted"] == 1
    finally:
        client.close()
        eng.close()
        eng.link.close()

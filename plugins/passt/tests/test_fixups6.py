"""The relay's IPv6 repairs for old passt builds, on frames crafted and checked by scapy.

scapy computes the checksums of the frames built here and recomputes them on
the repaired frames (a frame whose checksum scapy would change is wrong).
"""

from __future__ import annotations

import ipaddress

import pytest
from kboxnet_passt.fixups import Fixups

scapy_all = pytest.importorskip("scapy.all")
from scapy.all import UDP, Ether, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, Raw  # noqa: E402

GW4 = ipaddress.IPv4Address("10.0.2.2")
DNS4 = ipaddress.IPv4Address("10.0.2.3")
GW6 = ipaddress.IPv6Address("fd00::2")
DNS6 = ipaddress.IPv6Address("fd00::3")
GUEST6 = "fd00::5054:ff:fe12:3456"
GUEST_LL = "fe80::5054:ff:fe12:3456"
PASST_LL = "fe80::5054:ff:fe00:bb"
GMAC, PMAC = "52:54:00:12:34:56", "52:54:00:00:00:bb"


def fixups() -> Fixups:
    return Fixups(GW4, DNS4, GW6, DNS6)


def checksums_ok(frame: bytes, layer) -> bool:
    """scapy's checksum of ``layer`` in ``frame`` equals the one recomputed from scratch."""
    parsed = Ether(frame)
    field = "cksum" if "cksum" in parsed[layer].fields else "chksum"
    got = parsed[layer].getfieldval(field)
    delattr(parsed[layer], field)
    return Ether(bytes(parsed))[layer].getfieldval(field) == got


@pytest.mark.parametrize("target", [str(GW6), str(DNS6)])
def test_echo6_to_the_gateway_or_dns_address_is_answered_here(target):
    f = fixups()
    req = Ether(dst=PMAC, src=GMAC) / IPv6(src=GUEST6, dst=target, hlim=64) / \
        ICMPv6EchoRequest(id=0x1234, seq=7, data=b"ping payload 123")
    reply = f.from_guest(memoryview(bytes(req)))
    assert reply is not None, "the echo request must not reach passt"
    got = Ether(reply)
    assert got.dst == GMAC and got.src == PMAC
    assert got[IPv6].src == target and got[IPv6].dst == GUEST6
    assert got[IPv6].plen == 8 + len(b"ping payload 123")
    echo = got[ICMPv6EchoReply]
    assert (echo.id, echo.seq, echo.data) == (0x1234, 7, b"ping payload 123")
    assert checksums_ok(reply, ICMPv6EchoReply)
    assert f.counters()["fixup_pings6_answered"] == 1


def test_echo6_elsewhere_and_other_icmp6_go_to_passt():
    f = fixups()
    other = Ether(dst=PMAC, src=GMAC) / IPv6(src=GUEST6, dst="fd00::99") / ICMPv6EchoRequest()
    assert f.from_guest(memoryview(bytes(other))) is None
    reply = Ether(dst=PMAC, src=GMAC) / IPv6(src=GUEST6, dst=str(GW6)) / ICMPv6EchoReply()
    assert f.from_guest(memoryview(bytes(reply))) is None
    # an extension header in front: not parsed, left to passt
    ext = Ether(dst=PMAC, src=GMAC) / IPv6(src=GUEST6, dst=str(GW6)) / IPv6ExtHdrDestOpt() / ICMPv6EchoRequest()
    assert f.from_guest(memoryview(bytes(ext))) is None
    # truncated (payload length larger than the frame)
    cut = bytes(Ether(dst=PMAC, src=GMAC) / IPv6(src=GUEST6, dst=str(GW6)) / ICMPv6EchoRequest(data=b"x" * 40))
    assert f.from_guest(memoryview(cut[:-20])) is None
    assert f.counters()["fixup_pings6_answered"] == 0


def test_without_ipv6_addresses_ipv6_frames_are_not_touched():
    f = Fixups(GW4, DNS4)
    req = Ether(dst=PMAC, src=GMAC) / IPv6(src=GUEST6, dst=str(GW6)) / ICMPv6EchoRequest()
    assert f.from_guest(memoryview(bytes(req))) is None


def dns_query(sport: int, src: str = GUEST6) -> bytes:
    return bytes(Ether(dst=PMAC, src=GMAC) / IPv6(src=src, dst=str(DNS6)) / UDP(sport=sport, dport=53)
                 / Raw(b"\x12\x34query"))


def passt_reply(dport: int, data: bytes = b"\x12\x34answer!") -> bytes:
    """What bookworm's passt sends: from its link-local address to the guest's link-local address."""
    return bytes(Ether(dst=GMAC, src=PMAC) / IPv6(src=PASST_LL, dst=GUEST_LL, hlim=255)
                 / UDP(sport=53, dport=dport) / Raw(data))


def test_dns6_reply_gets_the_dns_address_and_the_querys_source():
    f = fixups()
    assert f.from_guest(memoryview(dns_query(40000))) is None  # the query itself goes to passt
    fixed = f.to_guest(memoryview(passt_reply(40000)))
    assert fixed is not None
    got = Ether(fixed)
    assert got[IPv6].src == str(DNS6) and got[IPv6].dst == GUEST6
    assert (got[UDP].sport, got[UDP].dport) == (53, 40000)
    assert bytes(got[UDP].payload) == b"\x12\x34answer!"
    assert checksums_ok(fixed, UDP)
    assert f.counters()["fixup_dns6_rewritten"] == 1


def test_dns6_reply_goes_back_to_the_address_the_query_came_from():
    f = fixups()
    other = "fd00::abcd"
    f.from_guest(memoryview(dns_query(40001, src=other)))
    fixed = f.to_guest(memoryview(passt_reply(40001, b"odd-length!")))
    assert fixed is not None and Ether(fixed)[IPv6].dst == other
    assert checksums_ok(fixed, UDP)


def test_dns6_replies_that_are_not_the_defect_are_left_alone():
    f = fixups()
    f.from_guest(memoryview(dns_query(40002)))
    # to a port that never asked the DNS address
    assert f.to_guest(memoryview(passt_reply(40003))) is None
    # already from a global address (a fixed passt, or a resolver the guest asked directly)
    good = bytes(Ether(dst=GMAC, src=PMAC) / IPv6(src=str(DNS6), dst=GUEST6) / UDP(sport=53, dport=40002)
                 / Raw(b"x"))
    assert f.to_guest(memoryview(good)) is None
    # not from port 53
    odd = bytes(Ether(dst=GMAC, src=PMAC) / IPv6(src=PASST_LL, dst=GUEST_LL) / UDP(sport=5353, dport=40002))
    assert f.to_guest(memoryview(odd)) is None
    assert f.counters()["fixup_dns6_rewritten"] == 0


def test_ipv4_echo_to_the_dns_address_is_answered_too():
    from scapy.all import ICMP, IP

    f = fixups()
    req = Ether(dst=PMAC, src=GMAC) / IP(src="10.0.2.15", dst=str(DNS4)) / ICMP(id=1, seq=2) / Raw(b"abc")
    reply = f.from_guest(memoryview(bytes(req)))
    assert reply is not None
    got = Ether(reply)
    assert got[IP].src == str(DNS4) and got[ICMP].type == 0
    assert checksums_ok(reply, ICMP) and checksums_ok(reply, IP)

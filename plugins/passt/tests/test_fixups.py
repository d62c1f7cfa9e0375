"""The relay's repairs for old passt builds, on crafted frames."""

from __future__ import annotations

import ipaddress
import struct

from kboxnet_passt.fixups import Fixups, checksum, ones_sum

GW = ipaddress.IPv4Address("10.0.2.2")
DNS = ipaddress.IPv4Address("10.0.2.3")
GUEST = ipaddress.IPv4Address("10.0.2.15")
GMAC, PMAC = bytes.fromhex("5254000000aa"), bytes.fromhex("5254000000bb")


def ipv4(src, dst, proto, payload: bytes) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                                src.packed, dst.packed))
    hdr[10:12] = struct.pack("!H", checksum(hdr))
    return bytes(hdr) + payload


def l4_csum(src, dst, proto, seg: bytes) -> int:
    return checksum(seg, ones_sum(src.packed + dst.packed + struct.pack("!BBH", 0, proto, len(seg))))


def eth(dst, src, payload):
    return dst + src + b"\x08\x00" + payload


def test_gateway_echo_is_answered_locally():
    f = Fixups(GW, DNS)
    icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x1234, 7) + b"payload!")
    icmp[2:4] = struct.pack("!H", checksum(icmp))
    frame = eth(PMAC, GMAC, ipv4(GUEST, GW, 1, bytes(icmp)))
    reply = f.from_guest(memoryview(frame))
    assert reply is not None
    assert reply[0:6] == GMAC and reply[6:12] == PMAC
    assert reply[26:30] == GW.packed and reply[30:34] == GUEST.packed
    assert reply[34] == 0 and reply[38:] == bytes(icmp[4:])
    assert checksum(reply[14:34]) == 0 and checksum(reply[34:]) == 0
    # echo to another address is left to passt
    other = eth(PMAC, GMAC, ipv4(GUEST, ipaddress.IPv4Address("192.0.2.1"), 1, bytes(icmp)))
    assert f.from_guest(memoryview(other)) is None


def udp(src, dst, sport, dport, data):
    seg = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)
    seg[6:8] = struct.pack("!H", l4_csum(src, dst, 17, bytes(seg)))
    return ipv4(src, dst, 17, bytes(seg))


def test_dns_reply_source_is_restored_only_for_queries_to_the_dns_address():
    f = Fixups(GW, DNS)
    assert f.from_guest(memoryview(eth(PMAC, GMAC, udp(GUEST, DNS, 40000, 53, b"q")))) is None
    reply = eth(GMAC, PMAC, udp(GW, GUEST, 53, 40000, b"answer"))
    fixed = f.to_guest(memoryview(reply))
    assert fixed is not None and fixed[26:30] == DNS.packed
    assert checksum(fixed[14:34]) == 0
    assert l4_csum(DNS, GUEST, 17, fixed[34:]) == 0
    # a reply to a query the guest sent to the gateway itself stays as it is
    assert f.to_guest(memoryview(eth(GMAC, PMAC, udp(GW, GUEST, 53, 40001, b"x")))) is None


def tcp(src, dst, sport, dport, seq, ack, flags):
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0))
    seg[16:18] = struct.pack("!H", l4_csum(src, dst, 6, bytes(seg)))
    return ipv4(src, dst, 6, bytes(seg))


def test_rst_without_ack_gets_the_ack_linux_needs():
    f = Fixups(GW, DNS)
    remote = ipaddress.IPv4Address("10.0.2.2")
    assert f.from_guest(memoryview(eth(PMAC, GMAC, tcp(GUEST, remote, 41000, 9, 1000, 0, 0x02)))) is None
    rst = eth(GMAC, PMAC, tcp(remote, GUEST, 9, 41000, 0, 0, 0x04))
    fixed = f.to_guest(memoryview(rst))
    assert fixed is not None
    assert fixed[47] == 0x14 and struct.unpack_from("!I", fixed, 42)[0] == 1001
    assert l4_csum(remote, GUEST, 6, fixed[34:]) == 0
    # an RST for a connection we never saw a SYN for is not touched
    assert f.to_guest(memoryview(eth(GMAC, PMAC, tcp(remote, GUEST, 9, 41001, 0, 0, 0x04)))) is None


def tcp_opts(src, dst, sport, dport, seq, ack, flags, window, opts: bytes):
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (5 + len(opts) // 4) << 4, flags,
                                window, 0, 0) + opts)
    seg[16:18] = struct.pack("!H", l4_csum(src, dst, 6, bytes(seg)))
    return ipv4(src, dst, 6, bytes(seg))


def test_inbound_handshake_is_completed_for_the_guest():
    f = Fixups(GW, DNS)
    # passt's SYN to the guest's port 22 (MSS 1460, window scale 8)
    syn = eth(GMAC, PMAC, tcp_opts(GW, GUEST, 50000, 22, 7000, 0, 0x02, 65535,
                                   b"\x02\x04\x05\xb4\x01\x03\x03\x08"))
    assert f.to_guest(memoryview(syn)) is None
    synack = eth(PMAC, GMAC, tcp(GUEST, GW, 22, 50000, 900, 7001, 0x12))
    assert f.from_guest(memoryview(synack)) is None  # still forwarded to passt
    assert len(f.inject) == 1
    ack = f.inject[0]
    assert ack[0:6] == GMAC and ack[6:12] == PMAC
    assert ack[26:30] == GW.packed and ack[30:34] == GUEST.packed
    sport, dport, seq, acknum, _off, flags, window = struct.unpack_from("!HHIIBBH", ack, 34)
    assert (sport, dport, seq, acknum, flags) == (50000, 22, 7001, 901, 0x10)
    assert window == 65535 >> 8
    assert checksum(ack[14:34]) == 0 and l4_csum(GW, GUEST, 6, ack[34:]) == 0
    # only once, and not for a SYN-ACK that does not answer passt's SYN
    f.inject.clear()
    f.from_guest(memoryview(synack))
    assert not f.inject

"""Address families: everything that differs between IPv4 and IPv6.

The protocol engines (TCP, UDP, ICMP echo) never look at an IP header
themselves: they ask the flow's family to parse one or to write one, to build
the pseudo-header sum and the host socket address. IPv4 is implemented;
IPv6 is a second class with the same interface (40-byte header, no header
checksum, GSO type TCPV6), so adding it copies no protocol code.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import ClassVar

from .checksum import raw_sum
from .counters import Counters
from .wire import ETH_P_IP, IPPROTO_ICMP, VNET_GSO_TCPV4

_IP4 = struct.Struct("!BBHHHBBH4s4s")
#: Ethernet + IPv4 header written in one pack
_ETH_IP4 = struct.Struct("!6s6sHBBHHHBBH4s4s")
_H = struct.Struct("!H")


class Packet:
    """The L3 view of one guest frame (reused: one instance per family, per frame)."""

    __slots__ = ("src", "dst", "proto", "l4_off", "l4_end", "ttl")

    def __init__(self) -> None:
        self.src = b""
        self.dst = b""
        self.proto = 0
        self.l4_off = 0
        self.l4_end = 0
        self.ttl = 0


class IPv4:
    """IPv4 (RFC 791) without options or fragments (both are dropped and counted)."""

    version: ClassVar[int] = 4
    ethertype: ClassVar[int] = ETH_P_IP
    af: ClassVar[int] = socket.AF_INET
    l3_len: ClassVar[int] = 20
    icmp_proto: ClassVar[int] = IPPROTO_ICMP
    gso_tcp: ClassVar[int] = VNET_GSO_TCPV4
    #: the largest L4 length one IP packet can carry
    max_l4: ClassVar[int] = 65535 - 20
    loopback: ClassVar[bytes] = bytes([127, 0, 0, 1])

    def __init__(self) -> None:
        self.ipid = 0
        self.packet = Packet()

    # ---- parsing -------------------------------------------------------
    def parse(self, frame: memoryview, counters: Counters) -> Packet | None:
        """Validate the IPv4 header at offset 14; None (and a drop counted) if malformed."""
        n = len(frame)
        if n < 34:
            counters.drop("ipv4_truncated")
            return None
        ver_ihl, _tos, tot_len, _id, frag, ttl, proto, _csum, src, dst = _IP4.unpack_from(frame, 14)
        if ver_ihl != 0x45:
            if ver_ihl >> 4 != 4:
                counters.drop("ipv4_bad_version")
            elif ver_ihl & 15 < 5:
                counters.drop("ipv4_bad_ihl")
            else:
                counters.drop("ipv4_options")
            return None
        if tot_len < 20 or tot_len + 14 > n:
            counters.drop("ipv4_bad_length")
            return None
        if frag & 0x3FFF:
            counters.drop("ipv4_fragment")
            return None
        if raw_sum(frame[14:34]):
            counters.drop("ipv4_bad_checksum")
            return None
        p = self.packet
        p.src = src
        p.dst = dst
        p.proto = proto
        p.ttl = ttl
        p.l4_off = 34
        p.l4_end = 14 + tot_len
        return p

    # ---- building ------------------------------------------------------
    def write_headers(self, buf: bytearray, off: int, dmac: bytes, smac: bytes, src: bytes, dst: bytes,
                      proto: int, l4_len: int) -> int:
        """Write Ethernet + IPv4 headers at ``off``; returns the L4 offset."""
        self.ipid = ipid = (self.ipid + 1) & 0xFFFF
        _ETH_IP4.pack_into(buf, off, dmac, smac, ETH_P_IP, 0x45, 0, 20 + l4_len, ipid, 0x4000, 64, proto,
                           0, src, dst)
        s = (int.from_bytes(buf[off + 14:off + 34], "big")) % 0xFFFF
        _H.pack_into(buf, off + 24, 0xFFFF - s if s else 0)
        return off + 34

    def template(self, dmac: bytes, smac: bytes, src: bytes, dst: bytes, proto: int) -> tuple[bytes, int]:
        """Ethernet + IPv4 header of a flow with length, id and checksum zero, and its checksum sum.

        Use with :meth:`set_length` per frame (IP id 0: every packet has DF set, RFC 6864).
        """
        hdr = _ETH_IP4.pack(dmac, smac, ETH_P_IP, 0x45, 0, 0, 0, 0x4000, 64, proto, 0, src, dst)
        return hdr, int.from_bytes(hdr[14:34], "big")

    @staticmethod
    def set_length(buf: bytearray, off: int, base: int, l4_len: int) -> None:
        """Fill in total length and header checksum of a header written from :meth:`template`."""
        s = (base + 20 + l4_len) % 0xFFFF  # 2**16 == 1 (mod 0xFFFF): a word's position does not matter
        _H.pack_into(buf, off + 16, 20 + l4_len)
        _H.pack_into(buf, off + 24, 0xFFFF - s if s else 0)

    @staticmethod
    def pseudo(src: bytes, dst: bytes, proto: int) -> int:
        """Unreduced pseudo-header sum without the L4 length (add it per packet)."""
        return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto

    # ---- addresses -----------------------------------------------------
    @staticmethod
    def pack(addr: ipaddress.IPv4Address | str) -> bytes:
        return ipaddress.IPv4Address(addr).packed

    @staticmethod
    def text(addr: bytes) -> str:
        return socket.inet_ntop(socket.AF_INET, addr)

    @staticmethod
    def sockaddr(addr: bytes, port: int) -> tuple[str, int]:
        return socket.inet_ntop(socket.AF_INET, addr), port

    @staticmethod
    def is_unicast(addr: bytes) -> bool:
        first = addr[0]
        return 0 < first < 224 and addr != b"\xff\xff\xff\xff"

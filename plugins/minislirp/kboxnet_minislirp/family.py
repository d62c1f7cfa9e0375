"""Address families: everything that differs between IPv4 and IPv6.

The protocol engines (TCP, UDP, ICMP echo) never look at an IP header
themselves: they ask the flow's family to parse one or to write one, to build
the pseudo-header sum and the host socket address. IPv4 is implemented;
IPv6 is a second class with the same interface (40-byte header, no header
checksum, GSO type TCPV6), so adding it copies no protocol code.

Each family instance also carries the guest-visible addresses of its network
(``guest``, ``gateway``, ``dns``, ``local``), set by the engine, so protocol
code asks ``fam.gateway`` rather than knowing about both families.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import ClassVar

from .checksum import raw_sum
from .counters import Counters
from .wire import ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, VNET_GSO_TCPV4, VNET_GSO_TCPV6

_IP4 = struct.Struct("!BBHHHBBH4s4s")
#: Ethernet + IPv4 header written in one pack
_ETH_IP4 = struct.Struct("!6s6sHBBHHHBBH4s4s")
_H = struct.Struct("!H")
_ETH_IP6 = struct.Struct("!6s6sHIHBB16s16s")
#: IPv6 next-header values of extension headers (not supported: dropped and counted)
_IPV6_EXT = frozenset({0, 43, 44, 50, 51, 60, 135, 139, 140})


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
    # ICMP type/codes (RFC 792)
    echo_request: ClassVar[int] = 8
    echo_reply: ClassVar[int] = 0
    dest_unreach: ClassVar[int] = 3
    code_port: ClassVar[int] = 3
    code_host: ClassVar[int] = 1
    code_admin: ClassVar[int] = 13
    # IP_RECVERR on host sockets: (level, option, origin of ICMP-caused errors, unreachable type)
    recverr: ClassVar[tuple[int, int, int, int]] = (socket.SOL_IP, 11, 2, 3)

    def __init__(self) -> None:
        self.ipid = 0
        self.packet = Packet()
        self.guest = b"\0" * 4
        self.gateway = b"\0" * 4
        self.dns = b"\0" * 4
        self.local: frozenset[bytes] = frozenset()

    def inbound_guest(self) -> bytes:
        """The guest address that host-initiated (forwarded) flows go to."""
        return self.guest

    @staticmethod
    def is_host_loopback(addr: bytes) -> bool:
        return addr[0] == 127

    @staticmethod
    def icmp_pseudo(src: bytes, dst: bytes, length: int) -> int:
        """ICMPv4 checksums cover no pseudo-header."""
        return 0

    def bare_header(self, src: bytes, dst: bytes, proto: int, l4_len: int) -> bytes:
        """An IP header alone (quoted in ICMP errors)."""
        ip = bytearray(_IP4.pack(0x45, 0, 20 + l4_len, 0, 0x4000, 64, proto, 0, src, dst))
        s = int.from_bytes(ip, "big") % 0xFFFF
        _H.pack_into(ip, 10, 0xFFFF - s if s else 0)
        return bytes(ip)

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
                      proto: int, l4_len: int, hops: int = 64) -> int:
        """Write Ethernet + IPv4 headers at ``off``; returns the L4 offset."""
        self.ipid = ipid = (self.ipid + 1) & 0xFFFF
        _ETH_IP4.pack_into(buf, off, dmac, smac, ETH_P_IP, 0x45, 0, 20 + l4_len, ipid, 0x4000, hops, proto,
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


class IPv6(IPv4):
    """IPv6 (RFC 8200) without extension headers (dropped and counted: fragments, hop-by-hop, ...)."""

    version: ClassVar[int] = 6
    ethertype: ClassVar[int] = ETH_P_IPV6
    af: ClassVar[int] = socket.AF_INET6
    l3_len: ClassVar[int] = 40
    icmp_proto: ClassVar[int] = IPPROTO_ICMPV6
    gso_tcp: ClassVar[int] = VNET_GSO_TCPV6
    #: kept equal to IPv4's so both share the engine's frame slots
    max_l4: ClassVar[int] = 65535 - 20
    loopback: ClassVar[bytes] = bytes(15) + b"\x01"
    echo_request: ClassVar[int] = 128
    echo_reply: ClassVar[int] = 129
    dest_unreach: ClassVar[int] = 1
    code_port: ClassVar[int] = 4
    code_host: ClassVar[int] = 3
    code_admin: ClassVar[int] = 1
    recverr: ClassVar[tuple[int, int, int, int]] = (socket.IPPROTO_IPV6, 25, 3, 1)

    def __init__(self) -> None:
        super().__init__()
        self.guest = self.gateway = self.dns = bytes(16)
        #: addresses the guest showed it owns (duplicate address detection, DHCPv6), newest last
        self.learned: list[bytes] = []

    def learn(self, addr: bytes) -> None:
        """Remember a global address of the guest (link-local ones are ignored)."""
        if addr[0] == 0xFE and addr[1] & 0xC0 == 0x80 or not self.is_unicast(addr):
            return
        if addr in self.learned:
            self.learned.remove(addr)
        self.learned.append(bytes(addr))
        del self.learned[:-8]

    def inbound_guest(self) -> bytes:
        """The configured address if the guest uses it (or nothing is known), else its newest address."""
        if not self.learned or self.guest in self.learned:
            return self.guest
        return self.learned[-1]

    @staticmethod
    def is_host_loopback(addr: bytes) -> bool:
        return addr == IPv6.loopback or (addr[:12] == b"\0" * 10 + b"\xff\xff" and addr[12] == 127)

    def parse(self, frame: memoryview, counters: Counters) -> Packet | None:
        """Validate the IPv6 header at offset 14; None (and a drop counted) if malformed."""
        n = len(frame)
        if n < 54:
            counters.drop("ipv6_truncated")
            return None
        if frame[14] >> 4 != 6:
            counters.drop("ipv6_bad_version")
            return None
        plen = (frame[18] << 8) | frame[19]
        if plen + 54 > n:
            counters.drop("ipv6_bad_length")
            return None
        nh = frame[20]
        if nh in _IPV6_EXT:
            counters.drop("ipv6_ext_header")
            return None
        src = bytes(frame[22:38])
        if src[0] == 0xFF:
            counters.drop("ipv6_multicast_source")
            return None
        p = self.packet
        p.src = src
        p.dst = bytes(frame[38:54])
        p.proto = nh
        p.ttl = frame[21]
        p.l4_off = 54
        p.l4_end = 54 + plen
        return p

    def write_headers(self, buf: bytearray, off: int, dmac: bytes, smac: bytes, src: bytes, dst: bytes,
                      proto: int, l4_len: int, hops: int = 64) -> int:
        """Write Ethernet + IPv6 headers at ``off``; returns the L4 offset."""
        _ETH_IP6.pack_into(buf, off, dmac, smac, ETH_P_IPV6, 0x60000000, l4_len, proto, hops, src, dst)
        return off + 54

    def template(self, dmac: bytes, smac: bytes, src: bytes, dst: bytes, proto: int) -> tuple[bytes, int]:
        """Ethernet + IPv6 header of a flow with payload length zero (see :meth:`set_length`)."""
        return _ETH_IP6.pack(dmac, smac, ETH_P_IPV6, 0x60000000, 0, proto, 64, src, dst), 0

    @staticmethod
    def set_length(buf: bytearray, off: int, base: int, l4_len: int) -> None:
        """Fill in the payload length (IPv6 has no header checksum)."""
        _H.pack_into(buf, off + 18, l4_len)

    @staticmethod
    def icmp_pseudo(src: bytes, dst: bytes, length: int) -> int:
        """ICMPv6 checksums cover the pseudo-header (RFC 4443 2.3)."""
        return int.from_bytes(src, "big") + int.from_bytes(dst, "big") + IPPROTO_ICMPV6 + length

    def bare_header(self, src: bytes, dst: bytes, proto: int, l4_len: int) -> bytes:
        return _ETH_IP6.pack(b"", b"", 0, 0x60000000, l4_len, proto, 64, src, dst)[14:]

    @staticmethod
    def pack(addr: ipaddress.IPv6Address | str) -> bytes:  # type: ignore[override]
        return ipaddress.IPv6Address(addr).packed

    @staticmethod
    def text(addr: bytes) -> str:
        return socket.inet_ntop(socket.AF_INET6, addr)

    @staticmethod
    def sockaddr(addr: bytes, port: int) -> tuple[str, int]:
        return socket.inet_ntop(socket.AF_INET6, addr), port

    @staticmethod
    def is_unicast(addr: bytes) -> bool:
        """Global-scope unicast: not multicast, unspecified, loopback or link-local."""
        return addr[0] != 0xFF and not (addr[0] == 0xFE and addr[1] & 0xC0 == 0x80) and \
            addr != bytes(16) and addr != IPv6.loopback

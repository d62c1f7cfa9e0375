"""Neighbour discovery (RFC 4861) and router advertisements for SLAAC (RFC 4862) and RDNSS (RFC 8106).

We are the router: neighbour solicitations for the gateway, the DNS address and
the router's link-local address are answered with our MAC; router
solicitations (and a timer) get a router advertisement with the prefix
(on-link, autonomous), the MTU, the DNS address (RDNSS) and the M/O flags
when DHCPv6 is on. Duplicate address detection probes of the guest (source
``::``) tell us its addresses, which forwarded (host-initiated) flows use.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

from .wire import HOST_MAC

if TYPE_CHECKING:
    from .engine import Engine
    from .family import IPv6, Packet

RS, RA, NS, NA = 133, 134, 135, 136
OPT_SLLA, OPT_TLLA, OPT_PREFIX, OPT_MTU, OPT_RDNSS = 1, 2, 3, 5, 25
#: all-nodes multicast (RFC 4291) and its Ethernet address (RFC 2464)
ALL_NODES = ipaddress.IPv6Address("ff02::1").packed
ALL_NODES_MAC = bytes.fromhex("333300000001")
#: the router's link-local address: RA source, so the guest's default route points to it
ROUTER_LL = ipaddress.IPv6Address("fe80::2").packed
RA_INTERVAL = 120.0
ROUTER_LIFETIME = 1800
VALID_LIFETIME = 86400
PREFERRED_LIFETIME = 14400
_RA = struct.Struct("!BBHBBHII")
_NA = struct.Struct("!BBHI16s")


class Ndp:
    """Router and neighbour side of NDP for one session."""

    def __init__(self, engine: Engine, prefix: ipaddress.IPv6Network, dhcpv6: bool) -> None:
        self.e = engine
        self.prefix = prefix
        self.dhcpv6 = dhcpv6
        self.next_ra = 0.0

    # ---- guest -> us ---------------------------------------------------------
    def input(self, fam: IPv6, frame: memoryview, p: Packet) -> None:
        c = self.e.counters
        l4, end = p.l4_off, p.l4_end
        if p.ttl != 255:  # RFC 4861 6.1/7.1: must not have crossed a router
            c.drop("ndp_bad_hop_limit")
            return
        itype = frame[l4]
        if itype == RS:
            c["ndp.rs_in"] += 1
            self._learn_mac(frame, l4 + 8, end)
            self.send_ra()
        elif itype == NS:
            if end - l4 < 24:
                c.drop("ndp_truncated")
                return
            target = bytes(frame[l4 + 8:l4 + 24])
            c["ndp.ns_in"] += 1
            if p.src == bytes(16):  # duplicate address detection by the guest: the target is its address
                fam.learn(target)
                return
            self._learn_mac(frame, l4 + 24, end)
            if target in fam.local:
                self._send_na(fam, frame, p, target)
        elif itype == NA:
            c["ndp.na_in"] += 1
            if end - l4 >= 24:
                fam.learn(bytes(frame[l4 + 8:l4 + 24]))
        else:
            c.drop("ndp_type_ignored")

    def _learn_mac(self, frame: memoryview, off: int, end: int) -> None:
        """Take the guest's MAC from a source link-layer address option (else from the Ethernet header)."""
        mac = bytes(frame[6:12])
        while off + 8 <= end:
            otype, olen = frame[off], frame[off + 1] * 8
            if olen == 0 or off + olen > end:
                break
            if otype == OPT_SLLA and olen >= 8:
                mac = bytes(frame[off + 2:off + 8])
                break
            off += olen
        self.e.learn_guest_mac(mac)

    # ---- us -> guest ---------------------------------------------------------
    def _send_na(self, fam: IPv6, frame: memoryview, p: Packet, target: bytes) -> None:
        flags = 0xE0000000  # router, solicited, override
        msg = _NA.pack(NA, 0, 0, flags, target) + bytes([OPT_TLLA, 1]) + HOST_MAC
        self.e.icmp._emit(fam, target, p.src, msg, hops=255, dmac=bytes(frame[6:12]))
        self.e.counters["ndp.na_out"] += 1

    def router_advertisement(self) -> bytes:
        """The ICMPv6 body of our router advertisement (checksum zero)."""
        e = self.e
        flags = 0xC0 if self.dhcpv6 else 0  # managed + other configuration
        msg = bytearray(_RA.pack(RA, 0, 0, 64, flags, ROUTER_LIFETIME, 0, 0))
        msg += bytes([OPT_SLLA, 1]) + HOST_MAC
        msg += struct.pack("!BBHI", OPT_MTU, 1, 0, e.mtu)
        msg += struct.pack("!BBBBIII16s", OPT_PREFIX, 4, self.prefix.prefixlen, 0xC0, VALID_LIFETIME,
                           PREFERRED_LIFETIME, 0, self.prefix.network_address.packed)
        msg += struct.pack("!BBHI16s", OPT_RDNSS, 3, 0, ROUTER_LIFETIME, e.ipv6.dns)
        return bytes(msg)

    def send_ra(self) -> None:
        """Send an unsolicited-style RA to all nodes (also the answer to a solicitation)."""
        e = self.e
        e.icmp._emit(e.ipv6, ROUTER_LL, ALL_NODES, self.router_advertisement(), hops=255, dmac=ALL_NODES_MAC)
        e.counters["ndp.ra_out"] += 1
        self.next_ra = e.now + RA_INTERVAL

    def tick(self, now: float) -> None:
        if now >= self.next_ra:
            self.send_ra()

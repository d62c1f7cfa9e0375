"""A DHCPv6 server (RFC 8415) for one guest: one address (IA_NA) and the DNS address.

SOLICIT gets an ADVERTISE (or a REPLY with rapid commit if the client asks),
REQUEST/RENEW/REBIND/CONFIRM a REPLY with the address, INFORMATION-REQUEST a
REPLY with DNS only, RELEASE/DECLINE a REPLY with status Success. Messages
for another server (a different server DUID) are ignored. Replies come from
the router's link-local address, port 547, to the client's address, port 546.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .checksum import checksum
from .ndp import ROUTER_LL
from .wire import HEADROOM, HOST_MAC, IPPROTO_UDP

if TYPE_CHECKING:
    from .engine import Engine
    from .family import IPv6, Packet

SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = 1, 2, 3, 4, 5, 6, 7, 8, 9
INFORMATION_REQUEST = 11
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_ORO, OPT_PREFERENCE = 1, 2, 3, 5, 6, 7
OPT_STATUS, OPT_RAPID_COMMIT, OPT_DNS, OPT_DOMAINS = 13, 14, 23, 24
STATUS_SUCCESS, STATUS_NOT_ON_LINK = 0, 4
_OPT = struct.Struct("!HH")
_IA = struct.Struct("!III")
NAMES = {SOLICIT: "solicit", REQUEST: "request", CONFIRM: "confirm", RENEW: "renew", REBIND: "rebind",
         RELEASE: "release", DECLINE: "decline", INFORMATION_REQUEST: "information_request"}


def parse_options(data: bytes) -> dict[int, bytes] | None:
    """Top-level options (the first of each code); None if an option runs past the end."""
    opts: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(data):
        code, length = _OPT.unpack_from(data, off)
        off += 4
        if off + length > len(data):
            return None
        opts.setdefault(code, data[off:off + length])
        off += length
    return opts if off == len(data) else None


def option(code: int, data: bytes) -> bytes:
    return _OPT.pack(code, len(data)) + data


class Dhcp6Server:
    """Stateless and stateful DHCPv6 for the single guest address."""

    def __init__(self, engine: Engine, address: bytes, dns: bytes, lease_time: int) -> None:
        self.e = engine
        self.address = address
        self.dns = dns
        self.lease_time = lease_time
        #: DUID-LL (type 3, Ethernet) of our MAC
        self.duid = struct.pack("!HH", 3, 1) + HOST_MAC
        self._buf = bytearray(HEADROOM + 14 + 40 + 8 + 1500)

    def input(self, fam: IPv6, frame: memoryview, p: Packet, sport: int, off: int, end: int) -> None:
        c = self.e.counters
        if end - off < 4:
            c.drop("dhcpv6_truncated")
            return
        data = bytes(frame[off:end])
        mtype, xid = data[0], data[1:4]
        opts = parse_options(data[4:])
        if opts is None:
            c.drop("dhcpv6_bad_options")
            return
        name = NAMES.get(mtype)
        if name is None:
            c.drop("dhcpv6_type_unsupported")
            return
        client = opts.get(OPT_CLIENTID)
        if client is None and mtype != INFORMATION_REQUEST:
            c.drop("dhcpv6_no_client_id")
            return
        server = opts.get(OPT_SERVERID)
        if mtype in (REQUEST, RENEW, RELEASE, DECLINE) and server != self.duid:
            c.drop("dhcpv6_other_server")
            return
        if mtype in (SOLICIT, CONFIRM, REBIND) and server is not None:
            c.drop("dhcpv6_bad_server_id")
            return
        c["dhcpv6." + name] += 1
        self.e.learn_guest_mac(bytes(frame[6:12]))
        out = option(OPT_SERVERID, self.duid)
        if client is not None:
            out += option(OPT_CLIENTID, client)
        reply = REPLY
        if mtype == SOLICIT:
            if OPT_RAPID_COMMIT in opts:
                out += option(OPT_RAPID_COMMIT, b"")
            else:
                reply = ADVERTISE
                out += option(OPT_PREFERENCE, b"\xff")
        if mtype in (SOLICIT, REQUEST, RENEW, REBIND) and OPT_IA_NA in opts:
            out += self._ia_na(opts[OPT_IA_NA])
            if reply == REPLY:
                fam.learn(self.address)
        elif mtype in (RELEASE, DECLINE, CONFIRM):
            out += option(OPT_STATUS, struct.pack("!H", STATUS_SUCCESS) + b"success")
        if mtype != RELEASE and mtype != DECLINE:
            out += option(OPT_DNS, self.dns)
        self._send(fam, frame, p, sport, bytes([reply]) + xid + out)
        c["dhcpv6.replies"] += 1

    def _ia_na(self, ia: bytes) -> bytes:
        """Our IA_NA for the client's (same IAID) with the one address."""
        if len(ia) < 12:
            return b""
        iaid = ia[:4]
        t = self.lease_time
        addr = option(OPT_IAADDR, self.address + struct.pack("!II", t, t))
        return option(OPT_IA_NA, iaid + struct.pack("!II", t // 2, t * 4 // 5) + addr)

    def _send(self, fam: IPv6, frame: memoryview, p: Packet, sport: int, payload: bytes) -> None:
        e = self.e
        buf = self._buf
        ulen = 8 + len(payload)
        l4 = fam.write_headers(buf, HEADROOM, bytes(frame[6:12]), HOST_MAC, ROUTER_LL, p.src, IPPROTO_UDP, ulen,
                               hops=255)
        struct.pack_into("!HHHH", buf, l4, 547, sport, ulen, 0)
        end = l4 + ulen
        buf[l4 + 8:end] = payload
        struct.pack_into("!H", buf, l4 + 6,
                         checksum(memoryview(buf)[l4:end], fam.pseudo(ROUTER_LL, p.src, IPPROTO_UDP) + ulen) or 0xFFFF)
        if e.vnet:
            buf[0:HEADROOM] = bytes(HEADROOM)
        e.out_view(memoryview(buf), end)

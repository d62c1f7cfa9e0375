"""A DHCPv4 server (RFC 2131/2132) for exactly one guest address.

DISCOVER -> OFFER, REQUEST -> ACK (or NAK for another address), INFORM -> ACK
without a lease, RELEASE/DECLINE are counted. Options: subnet mask, router,
DNS, domain search (119), lease/renew/rebind times, server id, interface MTU
(26), and classless static routes (121) when the gateway is outside the
guest's subnet.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING

from .checksum import checksum
from .wire import BROADCAST_MAC, ETH_P_IP, HOST_MAC, IPPROTO_UDP

if TYPE_CHECKING:
    from .engine import Engine

_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # 236 bytes
MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
_NAMES = {DISCOVER: "discover", REQUEST: "request", DECLINE: "decline", RELEASE: "release", INFORM: "inform"}


def parse_options(data: bytes | memoryview) -> dict[int, bytes]:
    """Options after the magic cookie; stops at END or at a truncated option."""
    opts: dict[int, bytes] = {}
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= n:
            break
        length = data[i + 1]
        if i + 2 + length > n:
            break
        opts[code] = opts.get(code, b"") + bytes(data[i + 2:i + 2 + length])
        i += 2 + length
    return opts


def encode_search(domains: tuple[str, ...]) -> bytes:
    """RFC 1035 name encoding (no compression) for option 119."""
    out = bytearray()
    for domain in domains:
        for label in domain.strip(".").split("."):
            if label:
                raw = label.encode("idna")
                out.append(len(raw))
                out += raw
        out.append(0)
    return bytes(out)


def host_search_domains(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The host's DNS search list (the last ``search``/``domain`` line wins, as in resolv.conf(5))."""
    found: tuple[str, ...] = ()
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("search", "domain"):
                    found = tuple(p for p in parts[1:] if p != ".")
    except OSError:
        pass
    return found


def classless_route(net: ipaddress.IPv4Network, router: bytes) -> bytes:
    """One RFC 3442 entry: width, significant octets, router."""
    width = net.prefixlen
    return bytes([width]) + net.network_address.packed[:(width + 7) // 8] + router


class DhcpServer:
    """Serves the configured profile address to whatever client asks."""

    def __init__(self, engine: Engine, *, address: bytes, prefix_len: int, gateway: bytes, dns: bytes,
                 lease_time: int, mtu: int, search: tuple[str, ...] = ()) -> None:
        self.e = engine
        self.address = address
        self.gateway = gateway
        self.dns = dns
        self.lease_time = lease_time
        net = ipaddress.IPv4Network((int.from_bytes(address, "big"), prefix_len), strict=False)
        self.mask = net.netmask.packed
        self.mtu = mtu
        self.search = search
        self.routes = b""
        if ipaddress.IPv4Address(gateway) not in net:
            self.routes = (classless_route(ipaddress.IPv4Network((int.from_bytes(gateway, "big"), 32)),
                                           b"\0\0\0\0")
                           + classless_route(ipaddress.IPv4Network("0.0.0.0/0"), gateway))

    def input(self, frame: memoryview, payload_off: int, end: int) -> None:
        """Handle a BOOTP/DHCP message (UDP payload ``frame[payload_off:end]``)."""
        c = self.e.counters
        data = frame[payload_off:end]
        if len(data) < _BOOTP.size + 4 or bytes(data[236:240]) != MAGIC:
            c.drop("dhcp_malformed")
            return
        op, htype, hlen, _hops, xid, _secs, flags, ciaddr, _y, _s, giaddr, chaddr, _sn, _f = \
            _BOOTP.unpack_from(data, 0)
        if op != 1 or htype != 1 or hlen != 6:
            c.drop("dhcp_malformed")
            return
        opts = parse_options(data[240:])
        kind = opts.get(53, b"\0")[0]
        mac = chaddr[:6]
        self.e.learn_guest_mac(mac)
        c["dhcp." + _NAMES.get(kind, "other")] += 1
        if kind == DISCOVER:
            self._reply(OFFER, xid, flags, b"\0\0\0\0", giaddr, mac, opts, lease=True)
        elif kind == REQUEST:
            wanted = opts.get(50) or ciaddr
            server = opts.get(54)
            if server is not None and server != self.gateway:
                return  # the client chose another server
            if wanted == self.address:
                self._reply(ACK, xid, flags, ciaddr, giaddr, mac, opts, lease=True)
            else:
                self._reply(NAK, xid, flags, b"\0\0\0\0", giaddr, mac, opts, lease=False)
        elif kind == INFORM:
            self._reply(ACK, xid, flags, ciaddr, giaddr, mac, opts, lease=False)

    def _options(self, kind: int, lease: bool) -> bytes:
        out = bytearray(MAGIC)

        def add(code: int, value: bytes) -> None:
            for i in range(0, max(len(value), 1), 255):  # long options are split (RFC 3396)
                chunk = value[i:i + 255]
                out.extend((code, len(chunk)))
                out.extend(chunk)

        add(53, bytes([kind]))
        add(54, self.gateway)
        if kind != NAK:
            if lease:
                add(51, self.lease_time.to_bytes(4, "big"))
                add(58, (self.lease_time // 2).to_bytes(4, "big"))
                add(59, (self.lease_time * 7 // 8).to_bytes(4, "big"))
            add(1, self.mask)
            add(3, self.gateway)
            add(6, self.dns)
            add(26, self.mtu.to_bytes(2, "big"))
            if self.search:
                add(119, encode_search(self.search))
            if self.routes:
                add(121, self.routes)
        out.append(255)
        while len(out) < 64:  # BOOTP minimum (300-byte message)
            out.append(0)
        return bytes(out)

    def _reply(self, kind: int, xid: int, flags: int, ciaddr: bytes, giaddr: bytes, mac: bytes,
               opts: dict[int, bytes], *, lease: bool) -> None:
        yiaddr = self.address if kind != NAK and lease else b"\0\0\0\0"
        bootp = _BOOTP.pack(2, 1, 6, 0, xid, 0, flags, ciaddr, yiaddr, self.gateway, giaddr,
                            mac + bytes(10), bytes(64), bytes(128))
        payload = bootp + self._options(kind, lease)
        # broadcast unless the client can receive unicast at its configured address
        if ciaddr != b"\0\0\0\0" and kind == ACK:
            dst_ip, dst_mac = ciaddr, mac
        else:
            dst_ip, dst_mac = b"\xff\xff\xff\xff", (BROADCAST_MAC if flags & 0x8000 else mac)
        ulen = 8 + len(payload)
        csum = checksum(struct.pack("!HHHH", 67, 68, ulen, 0) + payload,
                        int.from_bytes(self.gateway, "big") + int.from_bytes(dst_ip, "big") + IPPROTO_UDP + ulen)
        ip = bytearray(20)
        struct.pack_into("!BBHHHBBH4s4s", ip, 0, 0x45, 0x10, 20 + ulen, 0, 0, 64, IPPROTO_UDP, 0,
                         self.gateway, dst_ip)
        struct.pack_into("!H", ip, 10, checksum(ip))
        frame = struct.pack("!6s6sH", dst_mac, HOST_MAC, ETH_P_IP) + bytes(ip) + \
            struct.pack("!HHHH", 67, 68, ulen, csum or 0xFFFF) + payload
        self.e.out_bytes(frame)
        self.e.counters["dhcp." + {OFFER: "offer", ACK: "ack", NAK: "nak"}[kind]] += 1

"""Frame repairs for old passt builds (see :mod:`kboxnet_passt.quirks`).

Applied by the relay, only when the detected passt has the defects:

* guest -> passt: an ICMP or ICMPv6 echo request to the gateway or the DNS
  address is answered here (as minislirp does) instead of being sent out to
  the real network;
  SYNs are remembered (for the RST repair); DNS queries to the DNS address
  are remembered by source port.
  A SYN-ACK answering passt's SYN (an inbound, forwarded connection) is
  forwarded and also completed here with the final ACK of the handshake,
  which the old passt only sends together with the first data from the
  host side (so the guest never accept()s when its side must speak first).
* passt -> guest: a DNS reply coming from gateway:53 to a port that asked
  the DNS address gets the DNS address as its source again (IPv6: a reply
  from passt's link-local address to the guest's link-local address gets the
  DNS address as its source and the query's source as its destination); an
  RST without
  ACK answering a remembered SYN gets ``ACK = ISN + 1`` (Linux ignores an RST
  without ACK in SYN-SENT).

Only IPv4 without options and IPv6 without extension headers are touched;
every other frame passes unchanged. The checks cost a few byte comparisons
per frame.
"""

from __future__ import annotations

import collections
import ipaddress
import struct

ETH_IP4 = b"\x08\x00"
ETH_IP6 = b"\x86\xdd"
PROTO_ICMP = 1
PROTO_ICMP6 = 58
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
#: Ethernet + IPv6 header
IP6_L4 = 54
PROTO_TCP = 6
PROTO_UDP = 17
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
MAX_TRACKED = 4096


def ones_sum(data: bytes | memoryview, start: int = 0) -> int:
    """Ones' complement checksum of ``data`` (RFC 1071), folded, not inverted."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = start + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: bytes | memoryview, start: int = 0) -> int:
    return ~ones_sum(data, start) & 0xFFFF


def _ipv4_header_ok(frame: memoryview | bytes) -> bool:
    return len(frame) >= 34 and frame[12:14] == ETH_IP4 and frame[14] == 0x45


def _pseudo(ip: bytearray | bytes, proto: int, length: int) -> int:
    return ones_sum(bytes(ip[26:34]) + struct.pack("!BBH", 0, proto, length))


def _ipv6_header_ok(frame: memoryview | bytes) -> bool:
    return len(frame) >= IP6_L4 + 8 and frame[12:14] == ETH_IP6 and frame[14] >> 4 == 6


def _ipv6_payload_len(frame: memoryview | bytes) -> int | None:
    """The IPv6 payload length, None when the frame is shorter than it says."""
    length = struct.unpack_from("!H", frame, 18)[0]
    return length if IP6_L4 + length <= len(frame) else None


def _pseudo6(frame: bytearray | bytes, proto: int, length: int) -> int:
    """Sum of the IPv6 pseudo-header (RFC 8200, 8.1) of an Ethernet frame."""
    return ones_sum(bytes(frame[22:54]) + struct.pack("!IxxxB", length, proto))


def _remember(table: collections.OrderedDict, key: object, value: object) -> None:
    """``table[key] = value`` as the newest entry; the oldest goes beyond :data:`MAX_TRACKED`."""
    table[key] = value
    table.move_to_end(key)
    if len(table) > MAX_TRACKED:
        table.popitem(last=False)


def _is_link_local6(addr: bytes | memoryview) -> bool:
    return addr[0] == 0xFE and addr[1] & 0xC0 == 0x80


class Fixups:
    """Per-link state of the repairs (small bounded tables)."""

    def __init__(self, gateway: ipaddress.IPv4Address, dns: ipaddress.IPv4Address,
                 gateway6: ipaddress.IPv6Address | None = None, dns6: ipaddress.IPv6Address | None = None) -> None:
        self.gateway = gateway.packed
        self.dns = dns.packed
        #: IPv6 gateway and DNS address (None: passt runs without IPv6, no IPv6 repairs)
        self.gateway6 = gateway6.packed if gateway6 is not None else None
        self.dns6 = dns6.packed if dns6 is not None else None
        self._echo6_targets = tuple(a for a in (self.gateway6, self.dns6) if a is not None)
        #: guest port of a DNS query to ``dns6`` -> the query's source address
        self._dns6_ports: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._syns: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._dns_ports: collections.OrderedDict[int, None] = collections.OrderedDict()
        #: passt's SYNs to the guest: (guest ip, remote ip, guest port, remote port) -> (ISN, window, wscale)
        self._inbound: collections.OrderedDict[bytes, tuple[int, int, int]] = collections.OrderedDict()
        #: frames for the guest produced while forwarding (drained by the relay)
        self.inject: list[bytes] = []
        self.handshakes_completed = 0
        self.pings_answered = 0
        self.dns_rewritten = 0
        self.rsts_repaired = 0
        self.pings6_answered = 0
        self.dns6_rewritten = 0

    # -- guest -> passt ---------------------------------------------------------------
    def from_guest(self, frame: memoryview) -> bytes | None:
        """None to forward ``frame``; bytes: a reply for the guest (``frame`` is consumed)."""
        if not _ipv4_header_ok(frame):
            if self._echo6_targets and _ipv6_header_ok(frame):
                return self._from_guest6(frame)
            return None
        proto = frame[23]
        if proto == PROTO_TCP:
            if len(frame) >= 54:
                flags = frame[47] & (TCP_SYN | TCP_ACK | TCP_RST)
                if flags == TCP_SYN:
                    key = bytes(frame[26:38])  # src ip, dst ip, src port, dst port
                    self._syns[key] = struct.unpack_from("!I", frame, 38)[0]
                    if len(self._syns) > MAX_TRACKED:
                        self._syns.popitem(last=False)
                elif flags == TCP_SYN | TCP_ACK and self._inbound:
                    self._complete_handshake(frame)
            return None
        if proto == PROTO_UDP:
            if len(frame) >= 42 and frame[30:34] == self.dns and frame[36:38] == b"\x00\x35":
                _remember(self._dns_ports, struct.unpack_from("!H", frame, 34)[0], None)
            return None
        if proto == PROTO_ICMP and len(frame) >= 42 and frame[34] == 8 and frame[30:34] in (self.gateway, self.dns):
            return self._echo_reply(frame)
        return None

    def _from_guest6(self, frame: memoryview) -> bytes | None:
        nexthdr = frame[20]
        if nexthdr == PROTO_UDP:
            if frame[38:54] == self.dns6 and frame[56:58] == b"\x00\x35":
                _remember(self._dns6_ports, struct.unpack_from("!H", frame, 54)[0], bytes(frame[22:38]))
            return None
        if nexthdr == PROTO_ICMP6 and frame[IP6_L4] == ICMP6_ECHO_REQUEST and frame[38:54] in self._echo6_targets:
            return self._echo6_reply(frame)
        return None

    def _echo6_reply(self, frame: memoryview) -> bytes | None:
        length = _ipv6_payload_len(frame)
        if length is None or length < 8:
            return None  # truncated: let passt see it
        out = bytearray(frame[: IP6_L4 + length])
        out[0:6], out[6:12] = frame[6:12], frame[0:6]
        out[22:38], out[38:54] = frame[38:54], frame[22:38]
        out[21] = 64
        out[IP6_L4] = ICMP6_ECHO_REPLY
        out[IP6_L4 + 2 : IP6_L4 + 4] = b"\0\0"
        csum = checksum(out[IP6_L4:], _pseudo6(out, PROTO_ICMP6, length))
        out[IP6_L4 + 2 : IP6_L4 + 4] = struct.pack("!H", csum)
        self.pings6_answered += 1
        return bytes(out)

    def _complete_handshake(self, frame: memoryview) -> None:
        key = bytes(frame[26:38])  # guest ip, remote ip, guest port, remote port
        entry = self._inbound.get(key)
        if entry is None:
            return
        isn, window, wscale = entry
        if struct.unpack_from("!I", frame, 42)[0] != (isn + 1) & 0xFFFFFFFF:
            return
        del self._inbound[key]
        guest_isn = struct.unpack_from("!I", frame, 38)[0]
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, PROTO_TCP, 0,
                                   bytes(frame[30:34]), bytes(frame[26:30])))
        ip[10:12] = struct.pack("!H", checksum(ip))
        tcp = bytearray(struct.pack("!2s2sIIBBHHH", bytes(frame[36:38]), bytes(frame[34:36]),
                                    (isn + 1) & 0xFFFFFFFF, (guest_isn + 1) & 0xFFFFFFFF, 5 << 4, TCP_ACK,
                                    max(1, min(0xFFFF, window >> wscale)), 0, 0))
        tcp[16:18] = struct.pack("!H", checksum(tcp, ones_sum(bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, 20))))
        self.inject.append(bytes(frame[6:12]) + bytes(frame[0:6]) + ETH_IP4 + bytes(ip) + bytes(tcp))
        self.handshakes_completed += 1

    def _echo_reply(self, frame: memoryview) -> bytes | None:
        total = struct.unpack_from("!H", frame, 16)[0]
        if total < 28 or 14 + total > len(frame) or struct.unpack_from("!H", frame, 20)[0] & 0x3FFF:
            return None  # truncated or fragmented: let passt see it
        out = bytearray(frame[: 14 + total])
        out[0:6], out[6:12] = frame[6:12], frame[0:6]
        out[26:30], out[30:34] = frame[30:34], frame[26:30]
        out[22] = 64
        out[24:26] = b"\0\0"
        out[24:26] = struct.pack("!H", checksum(out[14:34]))
        out[34] = 0
        out[36:38] = b"\0\0"
        out[36:38] = struct.pack("!H", checksum(out[34 : 14 + total]))
        self.pings_answered += 1
        return bytes(out)

    # -- passt -> guest ---------------------------------------------------------------
    def to_guest(self, frame: memoryview) -> bytes | None:
        """None to pass ``frame`` unchanged, else the repaired frame."""
        if not _ipv4_header_ok(frame):
            if self._dns6_ports and _ipv6_header_ok(frame):
                return self._to_guest6(frame)
            return None
        proto = frame[23]
        if proto == PROTO_UDP:
            if (self._dns_ports and len(frame) >= 42 and frame[34:36] == b"\x00\x35"
                    and frame[26:30] == self.gateway):
                port = struct.unpack_from("!H", frame, 36)[0]
                if port in self._dns_ports:
                    return self._rewrite_dns(frame)
            return None
        if proto == PROTO_TCP and len(frame) >= 54:
            flags = frame[47] & (TCP_SYN | TCP_RST | TCP_ACK)
            if flags == TCP_SYN:
                self._remember_inbound(frame)
            elif flags & (TCP_RST | TCP_ACK) == TCP_RST and self._syns:
                # the guest's SYN had (guest ip, remote ip, guest port, remote port)
                key = bytes(frame[30:34]) + bytes(frame[26:30]) + bytes(frame[36:38]) + bytes(frame[34:36])
                isn = self._syns.pop(key, None)
                if isn is not None:
                    return self._repair_rst(frame, isn)
        return None

    def _to_guest6(self, frame: memoryview) -> bytes | None:
        """A DNS reply passt sent from its link-local address: from the DNS address to the query's source."""
        if frame[20] != PROTO_UDP or frame[54:56] != b"\x00\x35" or not _is_link_local6(frame[22:38]):
            return None
        port = struct.unpack_from("!H", frame, 56)[0]
        source = self._dns6_ports.get(port)
        length = _ipv6_payload_len(frame)
        if source is None or length is None or length < 8 or self.dns6 is None:
            return None
        out = bytearray(frame)
        out[22:38] = self.dns6
        out[38:54] = source
        out[IP6_L4 + 6 : IP6_L4 + 8] = b"\0\0"
        csum = checksum(out[IP6_L4 : IP6_L4 + length], _pseudo6(out, PROTO_UDP, length))
        out[IP6_L4 + 6 : IP6_L4 + 8] = struct.pack("!H", csum or 0xFFFF)
        self.dns6_rewritten += 1
        return bytes(out)

    def _remember_inbound(self, frame: memoryview) -> None:
        """passt's SYN to the guest: keep its ISN, window and window scale."""
        key = bytes(frame[30:34]) + bytes(frame[26:30]) + bytes(frame[36:38]) + bytes(frame[34:36])
        isn = struct.unpack_from("!I", frame, 38)[0]
        window = struct.unpack_from("!H", frame, 48)[0]
        wscale = 0
        opts = bytes(frame[54 : 34 + (frame[46] >> 4) * 4])
        i = 0
        while i < len(opts):
            kind = opts[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            if i + 1 >= len(opts) or opts[i + 1] < 2:
                break
            if kind == 3 and opts[i + 1] == 3 and i + 2 < len(opts):
                wscale = min(opts[i + 2], 14)
            i += opts[i + 1]
        self._inbound[key] = (isn, window, wscale)
        if len(self._inbound) > MAX_TRACKED:
            self._inbound.popitem(last=False)

    def _rewrite_dns(self, frame: memoryview) -> bytes:
        out = bytearray(frame)
        out[26:30] = self.dns
        out[24:26] = b"\0\0"
        out[24:26] = struct.pack("!H", checksum(out[14:34]))
        udp_len = struct.unpack_from("!H", out, 38)[0]
        out[40:42] = b"\0\0"
        if 8 <= udp_len <= len(out) - 34:
            csum = checksum(out[34 : 34 + udp_len], _pseudo(out, PROTO_UDP, udp_len))
            out[40:42] = struct.pack("!H", csum or 0xFFFF)
        self.dns_rewritten += 1
        return bytes(out)

    def _repair_rst(self, frame: memoryview, isn: int) -> bytes:
        out = bytearray(frame)
        total = struct.unpack_from("!H", out, 16)[0]
        struct.pack_into("!I", out, 42, (isn + 1) & 0xFFFFFFFF)
        out[47] |= TCP_ACK
        tcp_len = total - 20
        out[50:52] = b"\0\0"
        out[50:52] = struct.pack("!H", checksum(out[34 : 34 + tcp_len], _pseudo(out, PROTO_TCP, tcp_len)))
        self.rsts_repaired += 1
        return bytes(out)

    def counters(self) -> dict[str, int]:
        return {"fixup_pings_answered": self.pings_answered, "fixup_dns_rewritten": self.dns_rewritten,
                "fixup_rsts_repaired": self.rsts_repaired,
                "fixup_handshakes_completed": self.handshakes_completed,
                "fixup_pings6_answered": self.pings6_answered, "fixup_dns6_rewritten": self.dns6_rewritten}

"""Frame repairs for old passt builds (see :mod:`kboxnet_passt.quirks`).

Applied by the relay, only when the detected passt has the defects:

* guest -> passt: an ICMP echo request to the gateway is answered here (as
  minislirp does) instead of being sent out to the real network;
  SYNs are remembered (for the RST repair); DNS queries to the DNS address
  are remembered by source port.
* passt -> guest: a DNS reply coming from gateway:53 to a port that asked
  the DNS address gets the DNS address as its source again; an RST without
  ACK answering a remembered SYN gets ``ACK = ISN + 1`` (Linux ignores an RST
  without ACK in SYN-SENT).

Only IPv4 without options is touched; every other frame passes unchanged.
The checks cost a few byte comparisons per frame.
"""

from __future__ import annotations

import collections
import ipaddress
import struct

ETH_IP4 = b"\x08\x00"
PROTO_ICMP = 1
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


class Fixups:
    """Per-link state of the repairs (small bounded tables)."""

    def __init__(self, gateway: ipaddress.IPv4Address, dns: ipaddress.IPv4Address) -> None:
        self.gateway = gateway.packed
        self.dns = dns.packed
        self._syns: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self._dns_ports: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.pings_answered = 0
        self.dns_rewritten = 0
        self.rsts_repaired = 0

    # -- guest -> passt ---------------------------------------------------------------
    def from_guest(self, frame: memoryview) -> bytes | None:
        """None to forward ``frame``; bytes: a reply for the guest (``frame`` is consumed)."""
        if not _ipv4_header_ok(frame):
            return None
        proto = frame[23]
        if proto == PROTO_TCP:
            if len(frame) >= 54 and frame[47] & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN:
                key = bytes(frame[26:38])  # src ip, dst ip, src port, dst port
                self._syns[key] = struct.unpack_from("!I", frame, 38)[0]
                if len(self._syns) > MAX_TRACKED:
                    self._syns.popitem(last=False)
            return None
        if proto == PROTO_UDP:
            if len(frame) >= 42 and frame[30:34] == self.dns and frame[36:38] == b"\x00\x35":
                port = struct.unpack_from("!H", frame, 34)[0]
                self._dns_ports[port] = None
                self._dns_ports.move_to_end(port)
                if len(self._dns_ports) > MAX_TRACKED:
                    self._dns_ports.popitem(last=False)
            return None
        if proto == PROTO_ICMP and len(frame) >= 42 and frame[34] == 8 and frame[30:34] == self.gateway:
            return self._echo_reply(frame)
        return None

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
            return None
        proto = frame[23]
        if proto == PROTO_UDP:
            if (self._dns_ports and len(frame) >= 42 and frame[34:36] == b"\x00\x35"
                    and frame[26:30] == self.gateway):
                port = struct.unpack_from("!H", frame, 36)[0]
                if port in self._dns_ports:
                    return self._rewrite_dns(frame)
            return None
        if proto == PROTO_TCP and self._syns and len(frame) >= 54:
            if frame[47] & (TCP_RST | TCP_ACK) == TCP_RST:
                # the guest's SYN had (guest ip, remote ip, guest port, remote port)
                key = bytes(frame[30:34]) + bytes(frame[26:30]) + bytes(frame[36:38]) + bytes(frame[34:36])
                isn = self._syns.pop(key, None)
                if isn is not None:
                    return self._repair_rst(frame, isn)
        return None

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
                "fixup_rsts_repaired": self.rsts_repaired}

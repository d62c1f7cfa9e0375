"""A minimal DNS A-record client (to check a resolver without a real network)."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct


def build_query(name: str, qid: int, qtype: int = 1) -> bytes:
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(part)]) + part.encode("ascii") for part in name.rstrip(".").split("."))
    return header + qname + b"\0" + struct.pack("!HH", qtype, 1)


def _skip_name(msg: bytes, off: int) -> int:
    while True:
        length = msg[off]
        if length & 0xC0 == 0xC0:
            return off + 2
        if length == 0:
            return off + 1
        off += 1 + length


def parse_a_records(msg: bytes, qid: int) -> list[str]:
    """The IPv4 addresses in the answer section of ``msg`` (ValueError if not our reply)."""
    rid, flags, qd, an, _ns, _ar = struct.unpack_from("!HHHHHH", msg, 0)
    if rid != qid or not flags & 0x8000:
        raise ValueError("not a reply to our query")
    if flags & 0x000F:
        raise ValueError(f"DNS error rcode={flags & 0xF}")
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    out: list[str] = []
    for _ in range(an):
        off = _skip_name(msg, off)
        rtype, _rclass, _ttl, rdlen = struct.unpack_from("!HHIH", msg, off)
        off += 10
        if rtype == 1 and rdlen == 4:
            out.append(str(ipaddress.IPv4Address(msg[off : off + 4])))
        off += rdlen
    return out


def query_a(server: str, port: int, name: str, timeout: float = 2.0) -> list[str]:
    """Ask ``server:port`` over UDP for the A records of ``name``."""
    qid = random.randrange(1, 0xFFFF)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(build_query(name, qid), (server, port))
        while True:
            data, _ = sock.recvfrom(4096)
            try:
                return parse_a_records(data, qid)
            except ValueError as exc:
                if "rcode" in str(exc):
                    raise

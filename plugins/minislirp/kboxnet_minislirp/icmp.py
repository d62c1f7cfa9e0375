"""ICMP and ICMPv6: echo to the gateway/DNS answered locally, other echoes via ping sockets, errors to the guest.

Both families share this code; type numbers, unreachable codes and the
ICMPv6 pseudo-header come from the flow's family (:mod:`.family`).

Unprivileged ICMP "ping" sockets (``SOCK_DGRAM``/``IPPROTO_ICMP``) need the
caller's group inside ``net.ipv4.ping_group_range``; where they are not
permitted, echo requests to other hosts are dropped and counted, and the
reason is logged once.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
from typing import TYPE_CHECKING

from .checksum import big_sum, checksum
from .wire import HEADROOM, HOST_MAC, ICMP_ECHO

if TYPE_CHECKING:
    from .engine import Engine
    from .family import IPv4, Packet

_H = struct.Struct("!H")


class EchoFlow:
    __slots__ = ("key", "fam", "sock", "fd", "gaddr", "raddr", "ident", "last")

    def __init__(self, key: tuple, fam: IPv4, sock: socket.socket, gaddr: bytes, raddr: bytes, ident: int,
                 now: float) -> None:
        self.key = key
        self.fam = fam
        self.sock = sock
        self.fd = sock.fileno()
        self.gaddr = gaddr
        self.raddr = raddr
        self.ident = ident
        self.last = now


class Icmp:
    """ICMP echo flows and ICMP errors towards the guest."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.c = engine.counters
        self.flows: dict[tuple, EchoFlow] = {}
        self.ping_sockets_ok: bool | None = None
        self._buf = bytearray(HEADROOM + 14 + 60 + 65536)
        self._view = memoryview(self._buf)

    def _emit(self, fam: IPv4, src: bytes, dst: bytes, icmp: bytes | bytearray | memoryview, hops: int = 64,
              dmac: bytes | None = None) -> None:
        e = self.e
        buf = self._buf
        n = len(icmp)
        l4 = fam.write_headers(buf, HEADROOM, dmac or e.guest_mac, HOST_MAC, src, dst, fam.icmp_proto, n, hops)
        end = l4 + n
        buf[l4:end] = icmp
        _H.pack_into(buf, l4 + 2, 0)
        _H.pack_into(buf, l4 + 2, checksum(self._view[l4:end], fam.icmp_pseudo(src, dst, n)))
        if e.vnet:
            buf[0:10] = bytes(10)
        e.out_view(self._view, end)

    def input(self, fam: IPv4, frame: memoryview, p: Packet, csum_ok: bool) -> None:
        c = self.c
        l4, end = p.l4_off, p.l4_end
        if end - l4 < 8:
            c.drop("icmp_truncated")
            return
        if not csum_ok and (big_sum(frame[l4:end]) + fam.icmp_pseudo(p.src, p.dst, end - l4)) % 0xFFFF:
            c.drop("icmp_bad_checksum")
            return
        itype, _code, _csum, ident, seq = ICMP_ECHO.unpack_from(frame, l4)
        if itype != fam.echo_request:
            if fam.version == 6 and 133 <= itype <= 137 and self.e.ndp is not None:
                self.e.ndp.input(fam, frame, p)
                return
            c.drop("icmp_type_unsupported")
            return
        c["icmp.echo_in"] += 1
        if p.dst in fam.local:
            reply = bytearray(frame[l4:end])
            reply[0] = fam.echo_reply
            self._emit(fam, p.dst, p.src, reply)
            c["icmp.echo_local"] += 1
            return
        if not fam.is_unicast(p.dst):
            c.drop("icmp_not_unicast")
            return
        key = (p.src, p.dst, ident)
        flow = self.flows.get(key)
        if flow is None:
            flow = self._open(fam, frame, p, key, ident)
            if flow is None:
                return
        flow.last = self.e.now
        try:
            flow.sock.sendto(frame[l4:end], (fam.text(p.dst), 0))
        except OSError:
            c.drop("icmp_send_failed")

    def _open(self, fam: IPv4, frame: memoryview, p: Packet, key: tuple, ident: int) -> EchoFlow | None:
        e = self.e
        import ipaddress

        if not e.net.egress.permits(ipaddress.ip_address(p.dst), 0):
            self.c.drop("icmp_egress_denied")
            self.unreachable(fam, frame, p, fam.code_admin)
            return None
        if self.ping_sockets_ok is False:
            self.c.drop("icmp_no_ping_socket")
            return None
        try:
            sock = socket.socket(fam.af, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                                 fam.icmp_proto)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                self.ping_sockets_ok = False
                e.log_once("ping", "ICMP echo to other hosts is disabled: ping sockets are not permitted "
                                   "(net.ipv4.ping_group_range excludes our group); echo to the gateway "
                                   "and DNS addresses still works")
            self.c.drop("icmp_no_ping_socket")
            return None
        self.ping_sockets_ok = True
        flow = EchoFlow(key, fam, sock, p.src, p.dst, ident, e.now)
        self.flows[key] = flow
        e.register(flow.fd, select.EPOLLIN, lambda ev, f=flow: self._sock_event(f, ev))
        return flow

    def _sock_event(self, flow: EchoFlow, ev: int) -> None:
        for _ in range(16):
            try:
                data = flow.sock.recv(65536)
            except OSError:
                return
            if len(data) < 8 or data[0] != flow.fam.echo_reply:
                continue
            msg = bytearray(data)
            _H.pack_into(msg, 4, flow.ident)
            flow.last = self.e.now
            self._emit(flow.fam, flow.raddr, flow.gaddr, msg)
            self.c["icmp.echo_out"] += 1

    def unreachable(self, fam: IPv4, frame: memoryview, p: Packet, code: int) -> None:
        """An ICMP destination unreachable for the guest packet in ``frame``."""
        quote = bytes(frame[14:min(p.l4_end, p.l4_off + 8)])
        self._emit(fam, fam.gateway, p.src, struct.pack("!BBHI", fam.dest_unreach, code, 0, 0) + quote)
        self.c["icmp.unreach_out"] += 1

    def unreachable_for_flow(self, fam: IPv4, gaddr: bytes, gport: int, raddr: bytes, rport: int, proto: int,
                             code: int, data: bytes) -> None:
        """An ICMP error for a flow, quoting a reconstructed guest datagram header."""
        ulen = 8 + len(data)
        quote = fam.bare_header(gaddr, raddr, proto, ulen) + struct.pack("!HHHH", gport, rport, ulen, 0)
        self._emit(fam, raddr, gaddr, struct.pack("!BBHI", fam.dest_unreach, code, 0, 0) + quote)
        self.c["icmp.unreach_out"] += 1

    def tick(self, now: float) -> None:
        timeout = self.e.settings.icmp_timeout
        for flow in [f for f in self.flows.values() if now - f.last > timeout]:
            self._close(flow)

    def _close(self, flow: EchoFlow) -> None:
        self.e.unregister(flow.fd)
        flow.sock.close()
        self.flows.pop(flow.key, None)

    def close_all(self) -> None:
        for flow in list(self.flows.values()):
            self._close(flow)

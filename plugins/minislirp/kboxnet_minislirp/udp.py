"""UDP flows: one connected host socket per guest 4-tuple, closed when idle.

ICMP errors the host kernel reports for a flow (``IP_RECVERR``) are turned
into ICMP errors to the guest, so ``connect()``-ed guest sockets see
ECONNREFUSED as they would on a real network. Datagrams to port 67 go to
the DHCP server; datagrams to the DNS address are forwarded to the resolver.
"""

from __future__ import annotations

import select
import socket
import struct
from typing import TYPE_CHECKING

from .checksum import big_sum, checksum, fold
from .family import IPv4, IPv6
from .wire import HEADROOM, HOST_MAC, IPPROTO_UDP, UDP, VNET, VNET_F_NEEDS_CSUM

if TYPE_CHECKING:
    from .engine import Engine
    from .family import Packet
    from .translate import Target

MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
#: per host socket family: (level, option, origin, ICMP unreachable type) of IP(V6)_RECVERR
RECVERR = {socket.AF_INET: IPv4.recverr, socket.AF_INET6: IPv6.recverr}
_BY_LEVEL = {r[:2]: r for r in RECVERR.values()}
_EE = struct.Struct("=IBBBBII")
_H = struct.Struct("!H")
#: datagrams read from one host socket per wakeup
BURST = 64
MAX_PAYLOAD = 65535 - 8


class UdpFlow:
    __slots__ = ("key", "fam", "sock", "fd", "gaddr", "gport", "raddr", "rport", "pseudo", "last", "timeout",
                 "last_len", "target", "last_query", "peer")

    def __init__(self, key: tuple, fam: IPv4, sock: socket.socket, gaddr: bytes, gport: int, raddr: bytes,
                 rport: int, now: float, timeout: float) -> None:
        self.key = key
        self.fam = fam
        self.sock = sock
        self.fd = sock.fileno()
        self.gaddr = gaddr
        self.gport = gport
        self.raddr = raddr
        self.rport = rport
        self.pseudo = fam.pseudo(raddr, gaddr, IPPROTO_UDP)
        self.last = now
        self.timeout = timeout
        self.last_len = 0
        self.target: Target | None = None
        self.last_query = b""  # DNS flows only: resent to the next resolver if one fails
        self.peer: tuple | None = None  # inbound (forwarded) flows: the host peer; the socket is shared


class Udp:
    """All UDP flows of a session (plus the DHCP hand-off)."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.c = engine.counters
        self.flows: dict[tuple, UdpFlow] = {}
        self._buf = bytearray(HEADROOM + 14 + 40 + 8 + MAX_PAYLOAD)
        self._view = memoryview(self._buf)
        # payload offset per L3 header length (IPv4 20, IPv6 40)
        self._payload = {l3: self._view[HEADROOM + 14 + l3 + 8:][:MAX_PAYLOAD] for l3 in (20, 40)}

    def input(self, fam: IPv4, frame: memoryview, p: Packet, csum_ok: bool) -> None:
        c = self.c
        l4 = p.l4_off
        l4len = p.l4_end - l4
        if l4len < 8:
            c.drop("udp_truncated")
            return
        sport, dport, ulen, csum = UDP.unpack_from(frame, l4)
        if ulen < 8 or ulen > l4len:
            c.drop("udp_bad_length")
            return
        end = l4 + ulen
        if csum and not csum_ok:
            if (big_sum(frame[l4:end]) + fam.pseudo(p.src, p.dst, IPPROTO_UDP) + ulen) % 0xFFFF:
                c.drop("udp_bad_checksum")
                return
        if dport == 67 and fam.version == 4:
            self.e.dhcp.input(frame, l4 + 8, end)
            return
        if dport == 547 and fam.version == 6:
            if self.e.dhcp6 is not None:
                self.e.dhcp6.input(fam, frame, p, sport, l4 + 8, end)
            else:
                c.drop("dhcpv6_disabled")
            return
        if not fam.is_unicast(p.dst):
            c.drop("udp_not_unicast")
            return
        c["udp.frames_in"] += 1
        key = (p.src, sport, p.dst, dport)
        flow = self.flows.get(key)
        if flow is None:
            flow = self._open(fam, frame, p, key, sport, dport)
            if flow is None:
                return
        flow.last = self.e.now
        flow.last_len = ulen
        if flow.target is not None and flow.target.dns:
            flow.last_query = bytes(frame[l4 + 8:end])
        try:
            if flow.peer is None:
                flow.sock.send(frame[l4 + 8:end])
            else:
                flow.sock.sendto(frame[l4 + 8:end], flow.peer)
        except (BlockingIOError, InterruptedError):
            c.drop("udp_host_busy")
        except OSError:
            self._errqueue(flow)  # an error reported for an earlier datagram
            c.drop("udp_host_error")

    def _open(self, fam: IPv4, frame: memoryview, p: Packet, key: tuple, sport: int, dport: int) -> UdpFlow | None:
        e = self.e
        target = e.translator(fam.version).target(p.dst, dport)
        if target.refused:
            self.c.drop("udp_" + target.refused)
            e.icmp.unreachable(fam, frame, p, fam.code_admin if target.refused == "egress_denied" else fam.code_port)
            return None
        try:
            sock = socket.socket(target.af, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            self.c.drop("udp_socket_failed")
            e.log_once("socket", f"cannot create a UDP socket: {exc}")
            return None
        try:
            level, opt = RECVERR[target.af][:2]
            sock.setsockopt(level, opt, 1)
            sock.connect((target.host, target.port))
        except OSError:
            sock.close()
            self.c.drop("udp_connect_failed")
            e.icmp.unreachable(fam, frame, p, fam.code_host)
            return None
        timeout = e.settings.dns_timeout if target.dns else e.settings.udp_timeout
        flow = UdpFlow(key, fam, sock, p.src, sport, p.dst, dport, e.now, timeout)
        flow.target = target
        self.flows[key] = flow
        self.c["udp.flows"] += 1
        e.register(flow.fd, select.EPOLLIN, lambda ev, f=flow: self._sock_event(f, ev))
        return flow

    def _sock_event(self, flow: UdpFlow, ev: int) -> None:
        if ev & select.EPOLLERR:
            self._errqueue(flow)
        if not ev & select.EPOLLIN:
            return
        sock = flow.sock
        payload = self._payload[flow.fam.l3_len]
        for _ in range(BURST):
            try:
                n = sock.recv_into(payload)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._errqueue(flow)
                break
            self._emit(flow, n)

    def _emit(self, flow: UdpFlow, n: int) -> None:
        """Send the ``n`` payload bytes waiting in the payload area to the guest as a datagram of ``flow``."""
        e = self.e
        buf = self._buf
        view = self._view
        fam = flow.fam
        flow.last = e.now
        ulen = 8 + n
        l4 = fam.write_headers(buf, HEADROOM, e.guest_mac, HOST_MAC, flow.raddr, flow.gaddr, IPPROTO_UDP, ulen)
        UDP.pack_into(buf, l4, flow.rport, flow.gport, ulen, 0)
        end = l4 + ulen
        if e.offload:
            _H.pack_into(buf, l4 + 6, fold(flow.pseudo + ulen))
            VNET.pack_into(buf, 0, VNET_F_NEEDS_CSUM, 0, 0, 0, l4 - HEADROOM, 6)
        else:
            _H.pack_into(buf, l4 + 6, checksum(view[l4:end], flow.pseudo + ulen) or 0xFFFF)
            if e.vnet:
                VNET.pack_into(buf, 0, 0, 0, 0, 0, 0, 0)
        e.out_view(view, end)
        self.c["udp.frames_out"] += 1

    def inbound(self, fam: IPv4, lsock: socket.socket, guest_port: int) -> None:
        """Datagrams arriving on a forwarded host port go to the guest; replies go back via ``lsock``."""
        e = self.e
        payload = self._payload[fam.l3_len]
        for _ in range(BURST):
            try:
                n, peer = lsock.recvfrom_into(payload)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            raddr = fam.pack(peer[0])
            if fam.is_host_loopback(raddr):
                raddr = fam.gateway  # host loopback appears as the gateway
            gaddr = fam.inbound_guest()
            key = (gaddr, guest_port, raddr, peer[1])
            flow = self.flows.get(key)
            if flow is None:
                flow = UdpFlow(key, fam, lsock, gaddr, guest_port, raddr, peer[1], e.now, e.settings.udp_timeout)
                flow.peer = peer
                self.flows[key] = flow
                self.c["udp.inbound_flows"] += 1
            self._emit(flow, n)

    def _errqueue(self, flow: UdpFlow) -> None:
        """Reflect errors queued on the host socket (ICMP from the host's network) to the guest."""
        for _ in range(8):
            try:
                data, anc, _flags, _addr = flow.sock.recvmsg(MAX_PAYLOAD, 512, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            for level, kind, cdata in anc:
                rec = _BY_LEVEL.get((level, kind))
                if rec is None or len(cdata) < _EE.size:
                    continue
                _err, origin, itype, code, _pad, _info, _d = _EE.unpack_from(cdata)
                if origin == rec[2] and itype == rec[3]:
                    fam = flow.fam
                    if rec[3] != fam.dest_unreach:  # the host socket's family differs from the guest's
                        port = code == (3 if rec[3] == 3 else 4)
                        code = fam.code_port if port else fam.code_host
                    if flow.target is not None and flow.target.dns and self._dns_failover(flow):
                        continue
                    self.c["udp.icmp_reflected"] += 1
                    self.e.icmp.unreachable_for_flow(flow.fam, flow.gaddr, flow.gport, flow.raddr, flow.rport,
                                                     IPPROTO_UDP, code, bytes(data[:64]))

    def _dns_failover(self, flow: UdpFlow) -> bool:
        """The resolver of a DNS flow is down: move the flow to the next one and resend the query."""
        tr = self.e.translator(flow.fam.version)
        old = flow.target
        tr.resolver_failed(old.host, old.port)
        self.c["dns.resolver_failed"] += 1
        new = tr.target(flow.raddr, flow.rport)
        if new.refused or (new.host, new.port) == (old.host, old.port) or not flow.last_query:
            return False
        try:
            flow.sock.connect((new.host, new.port))
            flow.sock.send(flow.last_query)
        except OSError:
            return False
        flow.target = new
        return True

    def tick(self, now: float) -> None:
        for flow in [f for f in self.flows.values() if now - f.last > f.timeout]:
            self._close(flow)
            self.c["udp.timeouts"] += 1

    def _close(self, flow: UdpFlow) -> None:
        self.flows.pop(flow.key, None)
        if flow.peer is not None:
            return  # the forwarder owns the shared socket
        self.e.unregister(flow.fd)
        flow.sock.close()

    def close_all(self) -> None:
        for flow in list(self.flows.values()):
            self._close(flow)

"""Inbound port forwarding (``[[net.forward]]``): host listeners whose traffic reaches the guest.

TCP: a connection accepted on the host port becomes a SYN to the guest's port
(the flow then works like any other, see :meth:`Tcp.accept_inbound`).
UDP: datagrams to the host port go to the guest's port; the guest's replies
leave from the same host socket. Both families: a listener on an IPv6 host
address (``[::1]:PORT``, bound IPV6_V6ONLY) reaches the guest's IPv6 address
(the configured one if the guest uses it, else the newest address it showed,
see :meth:`IPv6.inbound_guest`). Peers on host loopback (127.0.0.0/8, ::1)
appear to the guest as the gateway address of their family (10.0.2.2,
fd00::2); other peers with their real address.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kboxnet_core.config.model import Forward

    from .engine import Engine
    from .family import IPv4

log = logging.getLogger("kboxnet.minislirp")


class Forwarder:
    """Owns the listening sockets of the configured forwards."""

    def __init__(self, engine: Engine, forwards: tuple[Forward, ...]) -> None:
        self.e = engine
        self.socks: list[socket.socket] = []
        self.bound: list[tuple[str, str, int, int]] = []  # (proto, host addr, host port, guest port)
        for fwd in forwards:
            addr, port = fwd.host_address, fwd.host_port
            fam = engine.ipv4 if addr.version == 4 else engine.ipv6
            if fam is None:
                log.warning("minislirp: IPv6 forward %s skipped ([net.ipv6] is disabled)", fwd.host)
                continue
            kind = socket.SOCK_STREAM if fwd.proto == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(fam.af, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if fam.version == 6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((str(addr), port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(128)
            except OSError:
                sock.close()
                self.close()
                raise
            self.socks.append(sock)
            bound_port = sock.getsockname()[1]
            self.bound.append((fwd.proto, str(addr), bound_port, fwd.guest))
            if kind == socket.SOCK_STREAM:
                engine.register(sock.fileno(), select.EPOLLIN,
                                lambda ev, s=sock, g=fwd.guest, f=fam: self._accept(f, s, g))
            else:
                engine.register(sock.fileno(), select.EPOLLIN,
                                lambda ev, s=sock, g=fwd.guest, f=fam: engine.udp.inbound(f, s, g))
            log.info("minislirp: forwarding %s %s:%d -> guest port %d", fwd.proto, addr, bound_port, fwd.guest)

    def _accept(self, fam: IPv4, lsock: socket.socket, guest_port: int) -> None:
        for _ in range(64):
            try:
                conn, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.e.tcp.accept_inbound(fam, conn, peer, guest_port)

    def close(self) -> None:
        for sock in self.socks:
            self.e.unregister(sock.fileno())
            sock.close()
        self.socks.clear()

"""Inbound port forwarding (``[[net.forward]]``): host listeners whose traffic reaches the guest.

TCP: a connection accepted on the host port becomes a SYN to the guest's port
(the flow then works like any other, see :meth:`Tcp.accept_inbound`).
UDP: datagrams to the host port go to the guest's port; the guest's replies
leave from the same host socket. Peers on host loopback appear to the guest
as the gateway address.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kboxnet_core.config.model import Forward

    from .engine import Engine

log = logging.getLogger("kboxnet.minislirp")


class Forwarder:
    """Owns the listening sockets of the configured forwards."""

    def __init__(self, engine: Engine, forwards: tuple[Forward, ...]) -> None:
        self.e = engine
        self.socks: list[socket.socket] = []
        self.bound: list[tuple[str, str, int, int]] = []  # (proto, host addr, host port, guest port)
        for fwd in forwards:
            addr, port = fwd.host_address, fwd.host_port
            if addr.version != 4:
                log.warning("minislirp: IPv6 forward %s skipped (IPv4 only in this version)", fwd.host)
                continue
            kind = socket.SOCK_STREAM if fwd.proto == "tcp" else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_INET, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
            fam = engine.ipv4
            if kind == socket.SOCK_STREAM:
                engine.register(sock.fileno(), select.EPOLLIN,
                                lambda ev, s=sock, g=fwd.guest: self._accept(s, g))
            else:
                engine.register(sock.fileno(), select.EPOLLIN,
                                lambda ev, s=sock, g=fwd.guest, f=fam: engine.udp.inbound(f, s, g))
            log.info("minislirp: forwarding %s %s:%d -> guest port %d", fwd.proto, addr, bound_port, fwd.guest)

    def _accept(self, lsock: socket.socket, guest_port: int) -> None:
        for _ in range(64):
            try:
                conn, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.e.tcp.accept_inbound(self.e.ipv4, conn, peer, guest_port)

    def close(self) -> None:
        for sock in self.socks:
            self.e.unregister(sock.fileno())
            sock.close()
        self.socks.clear()

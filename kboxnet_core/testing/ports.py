"""Free loopback ports for test servers."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """Return a port that is free right now on ``host`` (TCP by default).

    The port is released before returning, so a race with another process is
    possible but unlikely; servers started by this package bind it at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_tcp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_STREAM, host)


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_DGRAM, host)


def free_tcp_udp_port(host: str = "127.0.0.1", tries: int = 100) -> int:
    """A port free for both TCP and UDP on ``host`` right now (dnsmasq binds both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(tries):
        with socket.socket(family, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(family, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError(f"no port free for both TCP and UDP on {host}")

"""Inbound port forwarding: ``-p/--publish`` parsing and a clear pre-flight check.

The syntax follows podman and docker: ``[[HOST_ADDR:]HOST_PORT:]GUEST_PORT[/udp|/tcp]``, with an
IPv6 host address in brackets (``[::1]:8080:80``). A missing host port means "the same as the
guest port"; a missing host address means 127.0.0.1 (kboxnet never publishes on every interface
unless asked, with ``0.0.0.0:8080:80``).

Before a backend starts, every forward is bound once and released, so that a port already in use
or a privileged port without the capability is reported as a configuration error naming the
forward and the fix, instead of a backend failure (which no fallback could repair).
"""

from __future__ import annotations

import errno
import socket

from .config.errors import ConfigError
from .config.model import Forward, parse_hostport


def parse_publish(text: str) -> Forward:
    """Parse one ``--publish`` value into a :class:`Forward`; raises ConfigError."""
    spec, _, proto = text.strip().partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise ConfigError(f"bad protocol {proto!r} in {text!r}; use /tcp or /udp", key="--publish")
    if spec.startswith("["):
        addr, sep, rest = spec[1:].partition("]:")
        if not sep:
            raise ConfigError(f"bad value {text!r}; expected [V6ADDR]:HOSTPORT:GUESTPORT", key="--publish")
        host_port, _, guest = rest.partition(":")
        host = f"[{addr}]:{host_port}"
    else:
        parts = spec.split(":")
        if len(parts) == 1:
            host, guest = f"127.0.0.1:{parts[0]}", parts[0]
        elif len(parts) == 2:
            host, guest = f"127.0.0.1:{parts[0]}", parts[1]
        elif len(parts) == 3:
            host, guest = f"{parts[0]}:{parts[1]}", parts[2]
        else:
            raise ConfigError(f"bad value {text!r}; expected [[HOST_ADDR:]HOST_PORT:]GUEST_PORT[/udp]",
                              key="--publish")
    if not guest.isdigit() or not 0 < int(guest) < 65536:
        raise ConfigError(f"bad guest port in {text!r}; expected 1-65535", key="--publish")
    try:
        parse_hostport(host)
    except ValueError as exc:
        raise ConfigError(f"bad value {text!r}: {exc}", key="--publish") from exc
    return Forward(guest=int(guest), host=host, proto=proto)


def preflight(forwards: tuple[Forward, ...]) -> None:
    """Bind each forward's host address once; raise ConfigError with the fix on failure."""
    for i, fwd in enumerate(forwards):
        addr, port = fwd.host_address, fwd.host_port
        if port == 0:
            continue
        family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        kind = socket.SOCK_STREAM if fwd.proto == "tcp" else socket.SOCK_DGRAM
        key = f"net.forward[{i}] ({fwd.proto} {fwd.host} -> guest port {fwd.guest})"
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((str(addr), port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"host port {port} on {addr} is already in use by another program; "
                                      "choose another host port or stop that program", key=key) from exc
                if exc.errno == errno.EACCES:
                    raise ConfigError(f"host port {port} is privileged; use a port >= 1024, grant "
                                      "CAP_NET_BIND_SERVICE, or lower net.ipv4.ip_unprivileged_port_start",
                                      key=key) from exc
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ConfigError(f"{addr} is not an address of this host", key=key) from exc
                raise ConfigError(f"cannot bind {addr}:{port}: {exc.strerror}", key=key) from exc

"""Which connect() destinations are switched to a host socket: sockaddr parsing and the policy.

The policy is judged on the supervisor's own copy of the address (never on
the target's memory again). IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``)
are judged as the IPv4 address they stand for.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterable

import attrs

from kboxnet_core.config.model import IPAddress, PolicyRule

AF_UNSPEC = 0
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
SIN6_LEN_RFC2133 = 24  # the shortest sockaddr_in6 the kernel accepts (no scope id)


@attrs.frozen
class Destination:
    """A parsed AF_INET/AF_INET6 connect() address (our own copy).

    :ivar family: AF_INET or AF_INET6 (the sockaddr's family).
    :ivar address: the address as written; :ivar port: host byte order.
    :ivar flowinfo: IPv6 flow label (kept); :ivar scope_id: IPv6 scope (0 = none).
    """

    family: int
    address: IPAddress
    port: int
    flowinfo: int = 0
    scope_id: int = 0

    @property
    def policy_address(self) -> IPAddress:
        """The address the policy judges: IPv4-mapped IPv6 counts as IPv4."""
        if isinstance(self.address, ipaddress.IPv6Address) and self.address.ipv4_mapped is not None:
            return self.address.ipv4_mapped
        return self.address

    def sockaddr(self) -> bytes:
        """A canonical sockaddr built from the parsed fields only."""
        if self.family == AF_INET:
            return struct.pack("=H", AF_INET) + struct.pack("!H", self.port) + self.address.packed + bytes(8)
        return (
            struct.pack("=H", AF_INET6)
            + struct.pack("!HI", self.port, self.flowinfo)
            + self.address.packed
            + struct.pack("=I", self.scope_id)
        )

    def __str__(self) -> str:
        if self.family == AF_INET6:
            scope = f"%{self.scope_id}" if self.scope_id else ""
            return f"[{self.address}{scope}]:{self.port}"
        return f"{self.address}:{self.port}"


def sockaddr_family(raw: bytes) -> int | None:
    """The ``sa_family`` of a raw sockaddr (None when shorter than the field)."""
    if len(raw) < 2:
        return None
    return struct.unpack_from("=H", raw)[0]


def parse_sockaddr(raw: bytes) -> Destination | None:
    """Parse an AF_INET/AF_INET6 sockaddr as the kernel would accept it; None otherwise."""
    family = sockaddr_family(raw)
    if family == AF_INET and len(raw) >= 16:
        port = struct.unpack_from("!H", raw, 2)[0]
        return Destination(AF_INET, ipaddress.IPv4Address(raw[4:8]), port)
    if family == AF_INET6 and len(raw) >= SIN6_LEN_RFC2133:
        port, flowinfo = struct.unpack_from("!HI", raw, 2)
        scope = struct.unpack_from("=I", raw, 24)[0] if len(raw) >= 28 else 0
        return Destination(AF_INET6, ipaddress.IPv6Address(raw[8:24]), port, flowinfo, scope)
    return None


#: ``"auto"`` in a deny list stands for the namespace's own networks (the guest profile).
AUTO = "auto"
DEFAULT_DENY: tuple[str, ...] = (
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "169.254.0.0/16",
    "fe80::/10",
    AUTO,
)


def parse_rules(texts: Iterable[str], auto: Iterable[str] = ()) -> tuple[PolicyRule, ...]:
    """Parse rule strings (``CIDR``, ``CIDR:PORT[-PORT]``, ``[V6CIDR]:PORT``); ``auto`` expands."""
    rules: list[PolicyRule] = []
    for text in texts:
        if text.strip() == AUTO:
            rules.extend(PolicyRule.parse(a) for a in auto)
        else:
            rules.append(PolicyRule.parse(text))
    return tuple(rules)


@attrs.frozen
class BypassPolicy:
    """Deny rules win; an empty allow list allows everything not denied."""

    allow: tuple[PolicyRule, ...] = ()
    deny: tuple[PolicyRule, ...] = ()

    def permits(self, dest: Destination) -> bool:
        addr = dest.policy_address
        if any(rule.matches(addr, dest.port) for rule in self.deny):
            return False
        return not self.allow or any(rule.matches(addr, dest.port) for rule in self.allow)

    def __str__(self) -> str:
        allow = ",".join(map(str, self.allow)) or "*"
        return f"allow={allow} deny={','.join(map(str, self.deny)) or '-'}"

"""Typed, validated configuration values (attrs).

The default guest profile (10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3,
IPv6 ULA fd00::/64 with gateway ::2) is the same for every backend, so a
fallback from one backend to another does not change what the guest sees.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Union

import attrs

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


@attrs.frozen
class IPv4Profile:
    """``[net.ipv4]``: the guest's IPv4 addressing."""

    address: ipaddress.IPv4Address = ipaddress.IPv4Address("10.0.2.15")
    prefix_len: int = attrs.field(default=24, metadata={"range": (1, 30)})
    gateway: ipaddress.IPv4Address = ipaddress.IPv4Address("10.0.2.2")
    dns: ipaddress.IPv4Address = ipaddress.IPv4Address("10.0.2.3")
    lease_time: int = attrs.field(default=86400, metadata={"range": (60, 2**31 - 1)})

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.address}/{self.prefix_len}", strict=False)


@attrs.frozen
class IPv6Profile:
    """``[net.ipv6]``: the guest's IPv6 addressing (ULA by default)."""

    enabled: bool = True
    prefix: ipaddress.IPv6Network = ipaddress.IPv6Network("fd00::/64")
    address: ipaddress.IPv6Address = ipaddress.IPv6Address("fd00::15")
    gateway: ipaddress.IPv6Address = ipaddress.IPv6Address("fd00::2")
    dns: ipaddress.IPv6Address = ipaddress.IPv6Address("fd00::3")
    dhcpv6: bool = True


@attrs.frozen
class Forward:
    """``[[net.forward]]``: inbound port forwarding, host port -> guest port.

    ``host`` is ``"ADDR:PORT"`` or ``"PORT"`` (binds 127.0.0.1), IPv6 as ``"[::1]:PORT"``.
    """

    guest: int = attrs.field(metadata={"range": (1, 65535)})
    host: str = "127.0.0.1:0"
    proto: str = attrs.field(default="tcp", metadata={"choices": ("tcp", "udp")})

    @property
    def host_address(self) -> IPAddress:
        return parse_hostport(self.host)[0]

    @property
    def host_port(self) -> int:
        return parse_hostport(self.host)[1]


def parse_hostport(text: str) -> tuple[IPAddress, int]:
    """Parse ``PORT``, ``ADDR:PORT`` or ``[V6ADDR]:PORT``; raises ValueError."""
    text = text.strip()
    if text.isdigit():
        addr, port = "127.0.0.1", text
    elif text.startswith("["):
        addr, _, port = text[1:].partition("]:")
    else:
        addr, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port (1-65535)")
    return ipaddress.ip_address(addr), int(port)


def parse_resolver(text: str) -> tuple[IPAddress, int]:
    """Parse a ``[net] dns`` entry: ``ADDR``, ``ADDR:PORT`` or ``[V6ADDR]:PORT`` (port 53 default)."""
    text = text.strip()
    try:
        return ipaddress.ip_address(text), 53
    except ValueError:
        return parse_hostport(text)


@attrs.frozen
class PolicyRule:
    """One egress rule: a CIDR and an optional port or port range."""

    network: IPNetwork
    ports: tuple[int, int] | None = None

    @classmethod
    def parse(cls, text: str) -> PolicyRule:
        """``"10.0.0.0/8"``, ``"0.0.0.0/0:443"``, ``"[::/0]:8000-8080"``."""
        text = text.strip()
        ports: tuple[int, int] | None = None
        if text.startswith("["):
            net, _, rest = text[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{text!r}: expected ':PORT' after ']'")
                ports = _parse_ports(rest[1:])
        elif text.count(":") == 1:
            net, _, p = text.partition(":")
            ports = _parse_ports(p)
        else:
            net = text
        return cls(ipaddress.ip_network(net, strict=False), ports)

    def matches(self, addr: IPAddress, port: int) -> bool:
        if addr.version != self.network.version or addr not in self.network:
            return False
        return self.ports is None or self.ports[0] <= port <= self.ports[1]

    def __str__(self) -> str:
        if self.ports is None:
            return str(self.network)
        p = str(self.ports[0]) if self.ports[0] == self.ports[1] else f"{self.ports[0]}-{self.ports[1]}"
        return f"[{self.network}]:{p}" if self.network.version == 6 else f"{self.network}:{p}"


def _parse_ports(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    if not lo.isdigit() or (hi and not hi.isdigit()):
        raise ValueError(f"bad port {text!r}: use PORT or LOW-HIGH")
    a, b = int(lo), int(hi or lo)
    if not (0 < a <= b < 65536):
        raise ValueError(f"bad port range {text!r}: 1-65535, LOW <= HIGH")
    return a, b


@attrs.frozen
class EgressPolicy:
    """``[net.egress]``: which host destinations a guest may reach.

    Deny rules win over allow rules; an empty allow list allows everything not denied.
    """

    allow: tuple[PolicyRule, ...] = ()
    deny: tuple[PolicyRule, ...] = ()

    def permits(self, addr: IPAddress, port: int) -> bool:
        if any(rule.matches(addr, port) for rule in self.deny):
            return False
        return not self.allow or any(rule.matches(addr, port) for rule in self.allow)


@attrs.frozen
class NetConfig:
    """``[net]``: backend choice and the guest profile shared by all backends."""

    backend: str = "auto"
    backends: tuple[str, ...] = ()
    mtu: int = attrs.field(default=1500, metadata={"range": (576, 65520)})
    dns: tuple[str, ...] = ()
    map_gateway_to_loopback: bool = True
    #: on a failed session, start the next available backend on the same link
    fallback: bool = True
    #: tap links: virtio-net header and TSO/checksum offloads for backends that accept them
    tap_offload: bool = True
    pcap: str = ""
    ipv4: IPv4Profile = IPv4Profile()
    ipv6: IPv6Profile = IPv6Profile()
    forward: tuple[Forward, ...] = ()
    egress: EgressPolicy = EgressPolicy()
    #: validated ``[net.<section>]`` tables owned by backends, by section name
    plugins: dict[str, Any] = attrs.field(factory=dict, metadata={"internal": True})

    def resolvers(self) -> tuple[str, ...]:
        """The DNS resolvers to forward to: configured, else the host's."""
        if self.dns:
            return self.dns
        from ..resolvconf import host_resolvers

        return host_resolvers()


@attrs.frozen
class Config:
    """The whole configuration file."""

    net: NetConfig = NetConfig()
    source: str = attrs.field(default="", metadata={"internal": True})

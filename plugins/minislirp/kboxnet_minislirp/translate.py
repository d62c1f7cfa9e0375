"""Where guest traffic goes on the host: address mapping and the egress policy.

The guest sees a small virtual network (gateway, DNS forwarder). A flow's
destination is translated once, when the flow is created, and the egress
policy is checked on the translated (real host) destination before any
host socket exists. Flows to the DNS forwarder go to the configured
resolvers and are not subject to the egress policy (the operator chose them).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Union

import attrs

from kboxnet_core.config.model import EgressPolicy, parse_resolver

HostAddr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@attrs.frozen
class Target:
    """The host-side destination of a new flow, or why there is none."""

    host: str = ""
    port: int = 0
    refused: str = ""  # non-empty: drop reason ("egress_denied", "no_resolver", ...)
    dns: bool = False

    @property
    def af(self) -> int:
        """The host socket family (a v6 guest's DNS flow may go to an IPv4 resolver and vice versa)."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET


@attrs.define
class Translator:
    """Maps guest-visible destinations to host destinations and checks the policy."""

    gateway: bytes
    dns: bytes
    resolvers: tuple[tuple[HostAddr, int], ...]
    policy: EgressPolicy
    map_gateway: bool = True
    loopback: str = "127.0.0.1"
    #: the resolver new DNS flows go to; advanced by :meth:`resolver_failed`
    current: int = 0

    @classmethod
    def from_config(cls, gateway: bytes, dns: bytes, resolver_specs: tuple[str, ...], policy: EgressPolicy,
                    map_gateway: bool, version: int = 4) -> Translator:
        resolvers = []
        for spec in resolver_specs:
            try:
                addr, port = parse_resolver(spec)
            except ValueError:
                continue
            resolvers.append((addr, port))
        # resolvers of the guest's own family first; the others are still used (DNS is DNS)
        resolvers.sort(key=lambda r: r[0].version != version)
        return cls(gateway, dns, tuple(resolvers), policy, map_gateway,
                   "127.0.0.1" if version == 4 else "::1")

    def target(self, dst: bytes, port: int) -> Target:
        """Translate a guest destination (packed address, port)."""
        if dst == self.dns:
            if port != 53:
                return Target(refused="dns_port")
            if not self.resolvers:
                return Target(refused="no_resolver")
            addr, rport = self.resolvers[self.current % len(self.resolvers)]
            return Target(str(addr), rport, dns=True)
        if dst == self.gateway:
            if not self.map_gateway:
                return Target(refused="gateway_unmapped")
            host = self.loopback
        else:
            host = str(ipaddress.ip_address(dst))
        if not self.policy.permits(ipaddress.ip_address(host), port):
            return Target(refused="egress_denied")
        return Target(host, port)

    def resolver_failed(self, host: str, port: int) -> None:
        """A resolver answered with an ICMP error: send new DNS flows to the next one."""
        if not self.resolvers:
            return
        addr, rport = self.resolvers[self.current % len(self.resolvers)]
        if str(addr) == host and rport == port:
            self.current += 1

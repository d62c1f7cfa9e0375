"""Turn the guest profile and ``[net]`` config into passt's command line.

Everything passt cannot do for a given configuration becomes a *problem*
(the backend is then unavailable for that configuration, with the reason);
everything it does differently becomes a *warning* that is logged.
"""

from __future__ import annotations

import ipaddress

import attrs

from kboxnet_core.config import Config
from kboxnet_core.config.model import NetConfig, parse_resolver

from .detect import BinaryInfo
from .quirks import RELAY_MTU_LIMIT, Quirks

LOOPBACK4 = ipaddress.IPv4Network("127.0.0.0/8")


@attrs.frozen
class Plan:
    """passt options for one configuration (without ``--fd``).

    :ivar args: profile options (addressing, DNS, MTU, forwards).
    :ivar problems: reasons this passt cannot serve the configuration.
    :ivar warnings: behaviour that differs from the profile (logged).
    :ivar relay_fixups: the relay must repair the passt build's defects.
    :ivar mtu: the MTU passt offers the guest (``[net] mtu``, or less, see
        :data:`~kboxnet_passt.quirks.RELAY_MTU_LIMIT`).
    :ivar ipv6: passt is given the IPv6 profile (else ``-4``).
    :ivar quirks: the build's defects that matter with these options (its IPv6
        ones only when ``ipv6``).
    """

    args: tuple[str, ...]
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    relay_fixups: bool = False
    mtu: int = 1500
    ipv6: bool = False
    quirks: Quirks = attrs.field(factory=Quirks)


def without_ipv6_quirks(quirks: Quirks) -> Quirks:
    """``quirks`` for a passt running with ``-4`` (its IPv6 defects do not matter)."""
    return attrs.evolve(quirks, gateway_ping6_unmapped=False, dns6_reply_link_local=False)


def loopback_denied(net: NetConfig) -> bool:
    """The guest may not reach the host's loopback through the gateway address."""
    if not net.map_gateway_to_loopback:
        return True
    return any(rule.ports is None and rule.network.version == 4 and LOOPBACK4.subnet_of(rule.network)
               for rule in net.egress.deny)


def _egress_problem(net: NetConfig) -> str | None:
    rest = [r for r in net.egress.deny
            if not (r.ports is None and r.network.version == 4 and LOOPBACK4.subnet_of(r.network))]
    if net.egress.allow or rest:
        rules = ", ".join(str(r) for r in (*net.egress.allow, *rest))
        return f"passt cannot enforce [net.egress] rules ({rules})"
    return None


def _host_resolver() -> str | None:
    try:
        from kboxnet_core.resolvconf import host_resolvers

        found = host_resolvers()
    except OSError:
        return None
    return found[0] if found else None


#: where a passt without ``--dns-host`` sends the queries for the DNS address (see :func:`_dns_args`)
OLD_DNS_TARGET4 = ipaddress.IPv4Address("127.0.0.1")
OLD_DNS_TARGET6 = ipaddress.IPv6Address("::1")


def _dns_args(net: NetConfig, info: BinaryInfo, ipv6: bool = False) -> tuple[list[str], list[str], list[str]]:
    """``-D``/``--dns-forward`` (and ``--dns-host``) for ``net``, with problems and warnings.

    A passt without ``--dns-host`` (2023_03_09, measured) forwards the queries for the DNS address
    to the resolver it read from ``/etc/resolv.conf`` only when it was given no ``-D`` for that
    family; with ``-D`` (which kboxnet always passes, so that the guest is told the DNS address)
    its upstream stays the unspecified address, so the queries go to the host's ``127.0.0.1:53``
    and ``[::1]:53``, whatever ``resolv.conf`` says.
    """
    args: list[str] = ["--dns", str(net.ipv4.dns)]
    problems: list[str] = []
    warnings: list[str] = []
    if not info.has("dns-forward"):
        problems.append("this passt has no --dns-forward (guest DNS address cannot be served)")
        return args, problems, warnings
    args += ["--dns-forward", str(net.ipv4.dns)]
    old_target = (f"this passt forwards the guest's DNS queries to the host's {OLD_DNS_TARGET4}:53"
                  + (f" (IPv6 queries to [{OLD_DNS_TARGET6}]:53)" if ipv6 else ""))
    if not net.dns:
        host = None if info.has("dns-host") else _host_resolver()
        if host is not None and ipaddress.ip_address(host.split("%")[0]) not in (OLD_DNS_TARGET4, OLD_DNS_TARGET6):
            warnings.append(f"{old_target}, not to the host's resolver {host} (/etc/resolv.conf): "
                            "guest DNS works only if a resolver listens there")
        return args, problems, warnings
    addr, port = parse_resolver(net.dns[0])
    if len(net.dns) > 1:
        warnings.append(f"passt forwards DNS to one resolver only; using {net.dns[0]}")
    if info.has("dns-host") and port == 53:
        args += ["--dns-host", str(addr)]
        return args, problems, warnings
    if port == 53 and addr == OLD_DNS_TARGET4:
        if ipv6:
            warnings.append(f"this passt forwards the guest's IPv6 DNS queries to the host's [{OLD_DNS_TARGET6}]:53, "
                            f"not to the configured {net.dns[0]} (they are answered only if a resolver "
                            "listens there)")
        return args, problems, warnings
    problems.append(f"{old_target}, not to the configured {net.dns[0]} "
                    "(needs --dns-host, passt >= 2024_10_30)")
    return args, problems, warnings


def _forward_args(net: NetConfig) -> tuple[list[str], list[str]]:
    args: list[str] = []
    problems: list[str] = []
    tcp = [f for f in net.forward if f.proto == "tcp"]
    udp = [f for f in net.forward if f.proto == "udp"]
    for flag, group in (("--tcp-ports", tcp), ("--udp-ports", udp)):
        if not group:
            args += [flag, "none"]
            continue
        for fwd in group:
            args += [flag, f"{fwd.host_address}/{fwd.host_port}:{fwd.guest}"]
    return args, problems


def build_plan(config: Config, info: BinaryInfo, quirks: Quirks, *, relay: bool, fixups: str = "auto") -> Plan:
    """passt options for ``config``; ``relay`` tells whether frames pass through our relay."""
    net = config.net
    v4 = net.ipv4
    problems: list[str] = []
    warnings: list[str] = []
    mtu = net.mtu
    if quirks.partial_frames_dropped and mtu > RELAY_MTU_LIMIT:
        if relay:
            mtu = RELAY_MTU_LIMIT
            warnings.append(f"MTU {net.mtu} lowered to {mtu}: this passt loses frames that reach it in pieces, "
                            f"and only frames up to {mtu + 14} bytes are written to it in one piece")
        else:
            warnings.append(f"unrepaired passt defect at MTU {net.mtu}: frames over {RELAY_MTU_LIMIT + 14} bytes "
                            "that reach this passt in pieces are dropped and its stream goes out of step "
                            f"(use MTU {RELAY_MTU_LIMIT} or less)")
    args: list[str] = ["--mtu", str(mtu),
                       "--address", str(v4.address), "--netmask", str(v4.prefix_len),
                       "--gateway", str(v4.gateway)]
    ipv6 = net.ipv6.enabled and info.has("ipv6-only")
    if not ipv6:
        quirks = without_ipv6_quirks(quirks)
    if ipv6:
        v6 = net.ipv6
        args += ["--address", str(v6.address), "--gateway", str(v6.gateway), "--dns", str(v6.dns)]
        if info.has("dns-forward"):
            args += ["--dns-forward", str(v6.dns)]
    else:
        args.append("-4")
    dns, dns_problems, dns_warnings = _dns_args(net, info, ipv6)
    args += dns
    problems += dns_problems
    warnings += dns_warnings
    fwd, fwd_problems = _forward_args(net)
    args += fwd
    problems += fwd_problems
    egress = _egress_problem(net)
    if egress:
        problems.append(egress)
    if loopback_denied(net):
        if info.has("no-map-gw"):
            args.append("--no-map-gw")
        else:
            problems.append("policy denies host loopback but this passt has no --no-map-gw")
    if net.pcap:
        args += ["--pcap", net.pcap]
    relay_fixups = False
    if quirks.any:
        if relay and fixups == "auto":
            relay_fixups = True
        else:
            if quirks.gateway_ping_unmapped:
                if info.has("no-icmp"):
                    args.append("--no-icmp")
                warnings.append("ICMP disabled: this passt would send guest pings to the gateway address "
                                "out to the network")
                if ipv6:
                    warnings.append("IPv6 will not work: this passt's --no-icmp also turns off NDP "
                                    "(router advertisements, neighbour discovery)")
            warnings += [f"unrepaired passt defect: {text}" for text in attrs.evolve(
                quirks, gateway_ping_unmapped=False, gateway_ping6_unmapped=False,
                partial_frames_dropped=False).describe()]
    return Plan(tuple(args), tuple(problems), tuple(warnings), relay_fixups, mtu, ipv6, quirks)

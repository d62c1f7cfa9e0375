"""Mapping the guest profile and [net] config onto passt options."""

from __future__ import annotations

import datetime

from kboxnet_passt.detect import OPTIONAL_OPTIONS, REQUIRED_OPTIONS, BinaryInfo, PasstVersion
from kboxnet_passt.plan import build_plan
from kboxnet_passt.quirks import RELAY_MTU_LIMIT, Quirks, quirks_for
from kboxnet_passt.relay import ATOMIC_WRITE

from kboxnet_core.config import Config
from kboxnet_core.config.model import EgressPolicy, Forward, IPv6Profile, NetConfig, PolicyRule

OLD = frozenset(REQUIRED_OPTIONS) | {"dns-forward", "no-map-gw", "no-icmp", "ipv6-only", "one-off", "runas"}
NEW = frozenset(REQUIRED_OPTIONS) | frozenset(OPTIONAL_OPTIONS)


def info(options: frozenset[str]) -> BinaryInfo:
    return BinaryInfo("/usr/bin/passt", (0, 0, 0, 0), PasstVersion("x", datetime.date(2025, 5, 3), "--version"),
                      options)


def pairs(args: tuple[str, ...]) -> list[tuple[str, str]]:
    return list(zip(args, args[1:]))


def test_default_profile():
    plan = build_plan(Config(), info(NEW), Quirks(), relay=False)
    a = plan.args
    assert ("--address", "10.0.2.15") in pairs(a) and ("--netmask", "24") in pairs(a)
    assert ("--gateway", "10.0.2.2") in pairs(a) and ("--dns", "10.0.2.3") in pairs(a)
    assert ("--dns-forward", "10.0.2.3") in pairs(a) and ("--mtu", "1500") in pairs(a)
    assert ("--address", "fd00::15") in pairs(a) and ("--dns-forward", "fd00::3") in pairs(a)
    assert ("--tcp-ports", "none") in pairs(a) and ("--udp-ports", "none") in pairs(a)
    assert "-4" not in a and "--no-map-gw" not in a and not plan.problems


def test_ipv4_only_forwards_and_mtu():
    net = NetConfig(mtu=65520, ipv6=IPv6Profile(enabled=False),
                    forward=(Forward(guest=80, host="127.0.0.1:8080"), Forward(guest=53, host="5353", proto="udp")))
    plan = build_plan(Config(net=net), info(NEW), Quirks(), relay=False)
    assert "-4" in plan.args and ("--mtu", "65520") in pairs(plan.args)
    assert ("--tcp-ports", "127.0.0.1/8080:80") in pairs(plan.args)
    assert ("--udp-ports", "127.0.0.1/5353:53") in pairs(plan.args)


def test_no_map_gw_when_loopback_denied():
    for net in (NetConfig(map_gateway_to_loopback=False),
                NetConfig(egress=EgressPolicy(deny=(PolicyRule.parse("127.0.0.0/8"),)))):
        plan = build_plan(Config(net=net), info(NEW), Quirks(), relay=False)
        assert "--no-map-gw" in plan.args and not plan.problems


def test_other_egress_rules_are_a_problem():
    net = NetConfig(egress=EgressPolicy(allow=(PolicyRule.parse("0.0.0.0/0:443"),)))
    plan = build_plan(Config(net=net), info(NEW), Quirks(), relay=False)
    assert any("egress" in p for p in plan.problems)


def test_configured_resolver_needs_dns_host_on_old_passt():
    net = NetConfig(dns=("192.0.2.53",))
    new = build_plan(Config(net=net), info(NEW), Quirks(), relay=False)
    assert ("--dns-host", "192.0.2.53") in pairs(new.args) and not new.problems
    old = build_plan(Config(net=net), info(OLD), quirks_for(info(OLD)), relay=True)
    assert any("--dns-host" in p for p in old.problems)


def test_quirks_relay_or_disable_icmp():
    old = info(OLD)
    q = quirks_for(old)
    assert q.any and not quirks_for(info(NEW)).any
    relayed = build_plan(Config(), old, q, relay=True)
    assert relayed.relay_fixups and "--no-icmp" not in relayed.args
    direct = build_plan(Config(), old, q, relay=False)
    assert not direct.relay_fixups and "--no-icmp" in direct.args
    assert any("ICMP disabled" in w for w in direct.warnings)


def test_mtu_is_capped_for_old_passt_on_relayed_links_only():
    net = NetConfig(mtu=65520)
    old = info(OLD)
    q = quirks_for(old)
    assert q.partial_frames_dropped and not quirks_for(info(NEW)).partial_frames_dropped
    assert RELAY_MTU_LIMIT + 14 + 4 <= ATOMIC_WRITE  # a capped frame and its length word: one atomic write
    relayed = build_plan(Config(net=net), old, q, relay=True)
    assert ("--mtu", str(RELAY_MTU_LIMIT)) in pairs(relayed.args) and relayed.mtu == RELAY_MTU_LIMIT
    assert any("lowered" in w for w in relayed.warnings)
    off = build_plan(Config(net=net), old, q, relay=True, fixups="off")
    assert off.mtu == RELAY_MTU_LIMIT and not any("unrepaired" in w and "pieces" in w for w in off.warnings)
    direct = build_plan(Config(net=net), old, q, relay=False)
    assert ("--mtu", "65520") in pairs(direct.args) and direct.mtu == 65520
    assert any("unrepaired" in w and "pieces" in w for w in direct.warnings)
    new = build_plan(Config(net=net), info(NEW), quirks_for(info(NEW)), relay=True)
    assert ("--mtu", "65520") in pairs(new.args) and new.mtu == 65520 and not new.warnings
    assert build_plan(Config(net=NetConfig(mtu=9000)), old, q, relay=True).mtu == 9000


def test_old_passt_sends_dns_to_host_loopback_whatever_resolv_conf_says(monkeypatch):
    """bookworm's passt with -D forwards to 127.0.0.1:53 / [::1]:53 (pinned in test_netns_ipv6.py)."""
    from kboxnet_passt import plan as plan_mod

    monkeypatch.setattr(plan_mod, "_host_resolver", lambda: "127.0.0.53")
    old = info(OLD)
    # the host's first resolver is not what this passt forwards to: a configured one is refused ...
    refused = build_plan(Config(net=NetConfig(dns=("127.0.0.53",))), old, quirks_for(old), relay=True)
    assert any("127.0.0.1:53" in p and "127.0.0.53" in p for p in refused.problems), refused.problems
    # ... the default (host resolvers) is served, with a warning
    default = build_plan(Config(), old, quirks_for(old), relay=True)
    assert not default.problems
    assert any("127.0.0.1:53" in w and "[::1]:53" in w and "127.0.0.53" in w for w in default.warnings)
    # 127.0.0.1:53 is exactly where it forwards: accepted (IPv6 queries go to [::1]:53, said in a warning)
    loop = build_plan(Config(net=NetConfig(dns=("127.0.0.1:53",))), old, quirks_for(old), relay=True)
    assert not loop.problems and any("[::1]:53" in w for w in loop.warnings)
    v4only = build_plan(Config(net=NetConfig(dns=("127.0.0.1",), ipv6=IPv6Profile(enabled=False))), old,
                        quirks_for(old), relay=True)
    assert not v4only.problems and not any("DNS" in w for w in v4only.warnings)
    monkeypatch.setattr(plan_mod, "_host_resolver", lambda: "127.0.0.1")
    assert not any("DNS" in w for w in build_plan(Config(), old, quirks_for(old), relay=True).warnings)


def test_ipv6_plan_and_quirks():
    old = info(OLD)
    v6 = build_plan(Config(), old, quirks_for(old), relay=True)
    assert v6.ipv6 and v6.relay_fixups and "-4" not in v6.args
    v4 = build_plan(Config(net=NetConfig(ipv6=IPv6Profile(enabled=False))), old, quirks_for(old), relay=True)
    assert not v4.ipv6 and "-4" in v4.args
    # without the relay, --no-icmp is the only guard against the ping leak, and it also turns off NDP
    direct = build_plan(Config(), old, quirks_for(old), relay=False)
    assert "--no-icmp" in direct.args and any("NDP" in w for w in direct.warnings)
    assert not any("IPv6 pings" in w for w in direct.warnings)  # --no-icmp covers them
    assert any("IPv6 DNS replies" in w for w in direct.warnings)

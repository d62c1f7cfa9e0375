"""IPv6 through passt over a tap (a real Linux guest in a namespace), and passt without IPv6 routes.

passt runs in a :class:`~kboxnet_core.testing.netns.HostNetns` whose IPv6
default route leads into a dead-end namespace: an ICMPv6 echo that passt
sent out (bookworm's defect) would vanish there, so a reply proves that it
was answered in the relay (or, for a fixed passt, by passt itself).
"""

from __future__ import annotations

import contextlib
import os
import re
import time

import pytest
from kboxnet_passt.plugin import PasstBackend
from topo import PasstTopology

from kboxnet_core.backend import SessionContext
from kboxnet_core.testing.dnsmasq import Dnsmasq

pytestmark = pytest.mark.netns

GW6 = "fd00::2"
DNS6 = "fd00::3"
NAME6 = "www.kboxnet6.test"


def _passt_installed() -> None:
    if not any(os.access(os.path.join(d, "passt"), os.X_OK) for d in os.environ["PATH"].split(":")):
        pytest.skip("passt not installed")


def _slaac_address(topo: PasstTopology, timeout: float = 30.0) -> str:
    """The guest's global address from passt's router advertisement (DAD done)."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = topo.guest_run(["ip", "-6", "-o", "addr", "show", "dev", "tap0", "scope", "global"]).stdout
        found = re.search(r"inet6 (fd00::[0-9a-f:]+)/64", out)
        if found and "tentative" not in out:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f"no SLAAC address in fd00::/64 within {timeout} s: {out!r}")


def test_ipv6_ping_and_dns_through_passt(tmp_path):
    _passt_installed()
    if Dnsmasq.available():
        pytest.skip(Dnsmasq.available())
    with PasstTopology(area="passt6", ipv6=True) as topo, \
            Dnsmasq({"kboxnet.test": "10.0.2.2", "kboxnet6.test": GW6}, netns=topo.hostns.host, port=53, listen="::1") as dns6:
        cfg = topo.config(ipv6=True)
        backend = PasstBackend()
        av = backend.probe(cfg)
        assert av.available, av
        assert "no IPv6" not in av.reason, av.reason
        link = topo.open_tap()
        session = backend.open(link, SessionContext(cfg, tmp_path))
        session.start()
        try:
            assert session.ready(10), session.wait(0)
            _slaac_address(topo)
            ping = topo.guest_run(["busybox", "ping", "-6", "-c", "2", "-W", "3", GW6], timeout=20)
            assert " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
            ns = topo.guest_run(["busybox", "nslookup", "-type=aaaa", NAME6, DNS6], timeout=20)
            assert ns.returncode == 0 and GW6 in ns.stdout.split(NAME6, 1)[-1], ns.stdout + ns.stderr
            assert f"query[AAAA] {NAME6}" in dns6.log()
            counters = session.counters()
            assert counters.get("passt_ipv6_off") == 0
            if "fixup_pings6_answered" in counters:  # an old passt: the repairs did it
                assert counters["fixup_pings6_answered"] >= 2, counters
                assert counters["fixup_dns6_rewritten"] >= 1, counters
        finally:
            session.stop()
            result = session.wait(10)
        assert result is not None and result.ok, result


def test_passt_without_ipv6_route_is_reported(tmp_path, caplog):
    """No IPv6 default route where passt runs: passt turns IPv6 off, and kboxnet says so."""
    _passt_installed()
    with PasstTopology(area="passt6", ipv6=False) as topo:
        cfg = topo.config(ipv6=True)
        backend = PasstBackend()
        av = backend.probe(cfg)
        assert av.available, av
        assert "gets no IPv6" in av.reason, av.reason
        link = topo.open_tap()
        session = backend.open(link, SessionContext(cfg, tmp_path))
        session.start()
        try:
            assert session.ready(10), session.wait(0)
            deadline = time.monotonic() + 10
            while session.counters().get("passt_ipv6_off") != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert session.counters().get("passt_ipv6_off") == 1
            assert any("gets no IPv6" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
        finally:
            session.stop()
            result = session.wait(10)
        assert result is not None and result.ok, result
    # with [net.ipv6] disabled (-4), nothing is reported
    with PasstTopology(area="passt6", ipv6=False) as topo:
        av = PasstBackend().probe(topo.config(ipv6=False))
        assert av.available and "IPv6" not in av.reason, av.reason



def test_old_passt_forwards_dns_to_host_loopback(tmp_path):
    """Pins what kboxnet_passt.plan assumes of a passt without --dns-host: given -D (as kboxnet always
    does), it sends the queries for the DNS address to the host's 127.0.0.1:53 and [::1]:53, not to
    the resolvers of /etc/resolv.conf."""
    _passt_installed()
    if Dnsmasq.available():
        pytest.skip(Dnsmasq.available())
    from kboxnet_passt.detect import inspect_binary, resolve_binary

    found = inspect_binary(resolve_binary("passt") or "passt")
    if found.has("dns-host"):
        pytest.skip("this passt has --dns-host (forwards to the resolver it is given)")
    resolver6 = "fd6b:626e:e2e::53"
    with PasstTopology(area="passt6", ipv6=True) as topo:
        (topo.etc / "resolv.conf").write_text(f"nameserver 127.0.0.53\nnameserver {resolver6}\n")
        topo.hostns.host.ip("-6", "addr", "add", f"{resolver6}/128", "dev", "lo", "nodad")
        servers = {}
        with contextlib.ExitStack() as stack:
            for listen, a, aaaa in (("127.0.0.53", "10.0.2.77", "fd00::77"), ("127.0.0.1", "10.0.2.11", "fd00::11"),
                                    (resolver6, "10.0.2.66", "fd00::66"), ("::1", "10.0.2.61", "fd00::61")):
                servers[listen] = stack.enter_context(Dnsmasq({"kboxnet.test": a, "kboxnet6.test": aaaa},
                                                              netns=topo.hostns.host, port=53, listen=listen))
            cfg = topo.config(ipv6=True)
            link = topo.open_tap()
            session = PasstBackend().open(link, SessionContext(cfg, tmp_path))
            session.start()
            try:
                assert session.ready(10), session.wait(0)
                _slaac_address(topo)
                topo.guest_run(["ip", "addr", "add", "10.0.2.15/24", "dev", "tap0"], check=True)
                ns4 = topo.guest_run(["busybox", "nslookup", "-type=a", "www.kboxnet.test", "10.0.2.3"], timeout=20)
                ns6 = topo.guest_run(["busybox", "nslookup", "-type=aaaa", "www.kboxnet6.test", DNS6], timeout=20)
            finally:
                session.stop()
                session.wait(10)
            assert "10.0.2.11" in ns4.stdout, ns4.stdout + ns4.stderr  # answered by 127.0.0.1
            assert "fd00::11" not in ns6.stdout and "fd00::61" in ns6.stdout, ns6.stdout + ns6.stderr  # by ::1
            asked = {listen: any("query[" in line and "probe." not in line for line in d.log().splitlines())
                     for listen, d in servers.items()}
            assert asked == {"127.0.0.53": False, "127.0.0.1": True, resolver6: False, "::1": True}, asked

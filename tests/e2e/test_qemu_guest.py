"""A real Linux guest under QEMU (TCG) on ``-netdev stream`` to ``kboxnet serve``.

The guest (Debian's kernel, a busybox initramfs) gets a DHCP lease, pings
the gateway, resolves a name through a test dnsmasq and downloads a file
whose sha256 is checked, once per backend. In the same boot it does the
same over IPv6: a SLAAC address in fd00::/64 from the backend's router
advertisement, ``ping -6`` to fd00::2, an AAAA lookup through fd00::3 and
a download from host ``::1`` via ``[fd00::2]``. ``kboxnet serve`` and the
servers run in a "host" namespace whose only routes (IPv4 and IPv6) lead
into a dead-end namespace, so nothing the guest sends can leave the machine.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from contextlib import ExitStack

import pytest

from kboxnet_core.testing import Dnsmasq, HostNetns, HttpFileServer, Netns, netns_supported
from kboxnet_core.testing.qemu import (
    boot,
    kernel_args,
    prepare_guest,
    qemu_available,
    stream_netdev,
    user_netdev,
)

from .serve import kboxnet_argv, kboxnet_serve, write_config

pytestmark = [pytest.mark.netns, pytest.mark.qemu]

NAME = "www.example.test"
NAME_ADDR = "10.0.2.2"
NAME6 = "www.example6.test"
NAME6_ADDR = "fd00::2"
#: the guest's IPv6 profile (config defaults): SLAAC in fd00::/64, gateway fd00::2 (host ::1), DNS fd00::3
GW6 = "fd00::2"
DNS6 = "fd00::3"
#: Debian bookworm's passt (0.0~git20230309) has IPv6 defects: an ICMPv6 echo to fd00::2 leaves through
#: the host's IPv6 default route (here: into the dead end), and the DNS reply to a query for fd00::3
#: comes from passt's link-local address to the guest's link-local address. The relay repairs both
#: (plugins/passt, fixups.py), so the guest must get its ping -6 reply and its AAAA answer.


@pytest.fixture(scope="module")
def guest_image():
    reason = netns_supported() or qemu_available() or Dnsmasq.available()
    if reason:
        pytest.skip(reason)
    return prepare_guest()


def _explain(report) -> str:
    return f"guest console (last lines):\n{report.tail(40)}"


def test_guest_kit_with_qemu_user(guest_image):
    """The kit itself, on QEMU's own user-mode network (libslirp; in a namespace with no route out).

    IPv6 too, with libslirp's prefix set to fd00::/64: its gateway fd00::2 maps to the
    namespace's ::1, where the second dnsmasq and the second file server listen.
    """
    names = {"example.test": NAME_ADDR, "example6.test": NAME6_ADDR}
    with Netns(area="e2e") as ns, Dnsmasq(names, netns=ns, port=53) as dns, \
            Dnsmasq(names, netns=ns, port=53, listen="::1") as dns6, \
            HttpFileServer(netns=ns) as http, HttpFileServer("::1", netns=ns) as http6:
        ns.set_resolv_conf(["127.0.0.1", "::1"])  # what libslirp would forward to: never off the machine
        digest = http.add_file("blob.bin", 1 << 20, seed=7)
        digest6 = http6.add_file("blob6.bin", 1 << 20, seed=8)
        args = kernel_args(http.url("blob.bin", "10.0.2.2"), NAME, dns="10.0.2.2", gw6=GW6, name6=NAME6,
                           dns6=GW6, url6=http6.url("blob6.bin", f"[{GW6}]"))
        report = boot(guest_image, user_netdev("ipv6-prefix=fd00::,ipv6-prefixlen=64"), args, netns=ns,
                      timeout=120)
        assert report.exit_code == 0 and report.done, _explain(report)
        assert report.lease.get("ip") == "10.0.2.15", _explain(report)
        assert report.ping == "ok", _explain(report)
        assert report.dns_rc == 0 and NAME_ADDR in report.dns_addrs, _explain(report)
        assert report.wget_rc == 0 and report.sha256 == digest, _explain(report)
        assert f"query[A] {NAME}" in dns.log()
        assert any("GET /blob.bin" in r for r in http.requests)
        broken = _check_ipv6(report, dns6.log(), http6, digest6, 1500, _explain(report))
        assert not broken, "IPv6: " + "; ".join(broken) + f"\n{_explain(report)}"


def _backend_state(netns: Netns, name: str, config) -> tuple[bool, str]:
    proc = netns.run([*kboxnet_argv(), "backends", "--json", "--config", str(config)], check=False, timeout=60)
    try:
        rows = {row["name"]: row for row in json.loads(proc.stdout)}
    except (ValueError, KeyError, TypeError):
        return False, f"kboxnet backends --json failed: {proc.stderr.strip()[-300:]}"
    row = rows.get(name)
    if row is None:
        return False, f"backend {name} is not installed"
    return bool(row["available"]), str(row.get("reason", ""))


@pytest.mark.parametrize("mtu", [1500, 65520])
@pytest.mark.parametrize("backend", ["minislirp", "passt"])
def test_guest_through_kboxnet_serve(backend, mtu, guest_image, tmp_path):
    """IPv4 and then IPv6 in one boot (a boot costs about 7 s of TCG)."""
    # ipv6: a dead-end IPv6 default route too; without one passt turns IPv6 off
    # ("No external routable interface for IPv6") and the guest gets no router advertisement
    with HostNetns(area="e2e", ipv6=True) as topo, ExitStack() as stack:
        # passt (bookworm) sends the guest's DNS to the host's own 127.0.0.1:53 and [::1]:53 whatever
        # resolv.conf says (docs/passt.md): inside the host namespace those are our dnsmasqs; minislirp
        # forwards to the resolv.conf entry, which names the same dnsmasq
        topo.host.set_resolv_conf(["127.0.0.1"])
        # passt cannot enforce egress rules (it refuses them); the others get a loopback-only policy
        config = write_config(tmp_path / "kboxnet.toml", backend, 53, mtu=mtu, egress=backend != "passt")
        ok, reason = _backend_state(topo.host, backend, config)
        if not ok:
            pytest.skip(f"{backend}: {reason}")
        names = {"example.test": NAME_ADDR, "example6.test": NAME6_ADDR}
        dns = stack.enter_context(Dnsmasq(names, netns=topo.host, port=53))
        # bookworm's passt forwards the guest's queries to fd00::3 to [::1]:53, whatever resolv.conf says
        dns6 = stack.enter_context(Dnsmasq(names, netns=topo.host, port=53, listen="::1"))
        http = stack.enter_context(HttpFileServer(netns=topo.host))
        http6 = stack.enter_context(HttpFileServer("::1", netns=topo.host))
        digest = http.add_file("blob.bin", 1 << 20, seed=11)
        digest6 = http6.add_file("blob6.bin", 1 << 20, seed=12)
        sock = tmp_path / "guest.sock"
        log = tmp_path / "serve.log"
        args = kernel_args(http.url("blob.bin", "10.0.2.2"), NAME, gw6=GW6, name6=NAME6, dns6=DNS6,
                           url6=http6.url("blob6.bin", f"[{GW6}]"))
        with kboxnet_serve(topo.host, sock, backend, config, log) as serve:
            report = boot(guest_image, stream_netdev(sock), args, timeout=150)
            try:
                code = serve.wait(15)
            except subprocess.TimeoutExpired:
                code = None
        serve_log = log.read_text(errors="replace")
        why = f"{_explain(report)}\nkboxnet serve log:\n{serve_log[-3000:]}"
        assert f"backend {backend} ready" in serve_log, why  # served by the backend asked for
        assert report.exit_code == 0 and report.done, why
        assert report.lease.get("ip") == "10.0.2.15", why
        assert report.lease.get("router") == "10.0.2.2", why
        assert report.lease.get("dns") == "10.0.2.3", why
        mtu = _offered_mtu(mtu, serve_log)
        assert report.mtu == mtu, why  # DHCP option 26 (1500 is the interface default)
        assert report.ping == "ok", why
        assert report.dns_rc == 0 and NAME_ADDR in report.dns_addrs, why
        assert f"query[A] {NAME}" in dns.log(), why
        assert report.wget_rc == 0 and report.wget_size == 1 << 20, why
        assert report.sha256 == digest, why
        assert any("GET /blob.bin" in r for r in http.requests), why
        broken = _check_ipv6(report, dns.log() + dns6.log(), http6, digest6, mtu, why)
        assert code == 0, f"kboxnet serve --once did not exit cleanly after the guest left ({code})\n{why}"
        assert not broken, "IPv6: " + "; ".join(broken) + f"\n{why}"


def _offered_mtu(mtu: int, serve_log: str) -> int:
    """The MTU the backend offers: ``mtu``, unless its log says it lowered it (and why)."""
    found = re.search(r"MTU (\d+) lowered to (\d+)", serve_log)
    return int(found.group(2)) if found and int(found.group(1)) == mtu else mtu


def _check_ipv6(report, dns_log: str, http6: HttpFileServer, digest6: str, mtu: int, why: str) -> list[str]:
    """The same boot's IPv6 part: SLAAC from the backend's RA and a download from host ::1 must work;
    returns what is broken of ``ping -6`` to the gateway and the AAAA lookup through fd00::3."""
    assert report.addr6, f"IPv6: no SLAAC address (no router advertisement?)\n{why}"
    addr6 = ipaddress.IPv6Interface(report.addr6)
    assert addr6.network == ipaddress.IPv6Network("fd00::/64"), why
    assert report.router6.startswith("fe80::"), why  # the default route from the RA (link-local router)
    assert report.mtu6 == mtu, why  # the RA's MTU option (or the link MTU it must not exceed)
    assert report.wget6_rc == 0 and report.wget6_size == 1 << 20, why
    assert report.sha256_6 == digest6, why
    assert any(r.startswith("::1 ") and "GET /blob6.bin" in r for r in http6.requests), why
    broken = []
    if report.ping6 != "ok":
        broken.append(f"ping -6 {GW6} got no reply ({report.ping6 or 'not run'})")
    if report.dns6_rc != 0 or NAME6_ADDR not in report.dns6_addrs:
        broken.append(f"AAAA {NAME6} via {DNS6} failed (rc={report.dns6_rc}, addrs={report.dns6_addrs})")
    else:
        assert f"query[AAAA] {NAME6}" in dns_log, why  # answered by the test's dnsmasq, nothing else
    return broken

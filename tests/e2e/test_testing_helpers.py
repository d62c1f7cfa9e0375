"""Light tests of kboxnet_core.testing: each helper against the real thing."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from kboxnet_core.testing import (
    Dnsmasq,
    HostNetns,
    HttpFileServer,
    Netns,
    UdpEchoServer,
    call_in_netns,
    free_tcp_port,
    free_udp_port,
    udhcpc_script,
)
from kboxnet_core.testing.guestkernel import VIRTIO_NET_MODULES, GuestKernel
from kboxnet_core.testing.initramfs import CpioWriter, build_initramfs, init_script
from kboxnet_core.testing.qemu import kernel_args, parse_console


def test_free_ports_are_bindable():
    for port, kind in ((free_tcp_port(), socket.SOCK_STREAM), (free_udp_port(), socket.SOCK_DGRAM)):
        assert 0 < port < 65536
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))


def test_http_file_server_serves_known_sha256(http_server):
    digest = http_server.add_file("a/b.bin", 300_000, seed=3)
    data = urllib.request.urlopen(http_server.url("a/b.bin"), timeout=5).read()
    assert len(data) == 300_000 and hashlib.sha256(data).hexdigest() == digest
    assert http_server.files["a/b.bin"] == digest
    assert any("GET /a/b.bin" in line for line in http_server.requests)


def test_udp_echo(udp_echo):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for i in range(5):
            s.sendto(b"ping%d" % i, ("127.0.0.1", udp_echo.port))
            assert s.recvfrom(100)[0] == b"ping%d" % i
    assert udp_echo.echoed == 5


def test_dnsmasq_answers_test_domain_only(dnsmasq):
    assert dnsmasq.lookup("www.example.test") == ["10.0.2.2"]
    with pytest.raises(ValueError, match="rcode"):
        dnsmasq.lookup("example.com")  # --no-resolv: never forwarded anywhere
    assert "query[A] www.example.test" in dnsmasq.log()


def test_dnsmasq_moves_to_another_port_when_its_port_was_taken(monkeypatch):
    """The picked port is released before dnsmasq binds it; a busy machine can take it in between."""
    import kboxnet_core.testing.dnsmasq as dnsmasq_mod
    from kboxnet_core.testing.ports import free_tcp_udp_port

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        taken = squatter.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(dnsmasq_mod, "free_tcp_udp_port", lambda host: next(picks, None) or free_tcp_udp_port(host))
        with dnsmasq_mod.Dnsmasq() as dns:
            assert dns.port != taken
            assert dns.lookup("www.example.test") == ["10.0.2.2"]
        with pytest.raises(RuntimeError, match="Address already in use"):
            dnsmasq_mod.Dnsmasq(port=taken).start()  # a port the caller chose is not changed


def test_dnsmasq_on_ipv6_loopback():
    from kboxnet_core.testing.dnsmasq import Dnsmasq

    with Dnsmasq(listen="::1") as dns:
        assert dns.lookup("www.example.test") == ["10.0.2.2"]
        pid = dns.proc.pid
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_udhcpc_script_is_valid_shell(tmp_path):
    path = tmp_path / "udhcpc.script"
    path.write_text(udhcpc_script())
    subprocess.run(["sh", "-n", str(path)], check=True)


def test_cpio_writer_is_readable_by_cpio(tmp_path):
    cpio = CpioWriter()
    cpio.directory("d")
    cpio.file("d/f.txt", b"hello", 0o644)
    cpio.symlink("link", "d/f.txt")
    data = cpio.finish()
    if not subprocess.run(["which", "cpio"], capture_output=True).returncode == 0:
        pytest.skip("cpio not installed")
    out = subprocess.run(["cpio", "-itv"], input=data, capture_output=True, check=True).stdout.decode()
    assert "d/f.txt" in out and "link -> d/f.txt" in out


def test_initramfs_contains_init_busybox_and_modules(tmp_path):
    mods = []
    for name in VIRTIO_NET_MODULES:
        p = tmp_path / f"{name}.ko"
        p.write_bytes(b"\x7fELF" + name.encode())
        mods.append(p)
    fake_bb = tmp_path / "busybox"
    fake_bb.write_bytes(b"bb")
    kernel = GuestKernel("x", tmp_path / "vmlinuz", tuple(mods))
    out = build_initramfs(kernel, tmp_path / "initrd.gz", busybox=fake_bb)
    raw = gzip.decompress(out.read_bytes())
    for needle in (b"init\0", b"bin/busybox\0", b"etc/udhcpc.script\0", b"lib/modules/virtio_net.ko\0",
                   b"dev/console\0"):
        assert needle in raw
    assert "insmod /lib/modules/$m.ko" in init_script()
    assert " ".join(VIRTIO_NET_MODULES) in init_script()


def test_parse_console():
    log = "\r\n".join([
        "noise", "KBN_INIT uptime=1.9",
        "KBN_LEASE ip=10.0.2.15 mask=24 router=10.0.2.2 dns=10.0.2.3 mtu=65520 server=10.0.2.2",
        "KBN_ADDR 10.0.2.15/24 mtu=65520", "KBN_PING ok target=10.0.2.2 2",
        "KBN_DNS rc=0 server=10.0.2.3 name=a.example.test addrs=10.0.2.2,",
        "KBN_WGET rc=0 size=1048576 sha256=abc",
        "KBN_ADDR6 addr=fd00::5054:ff:fe12:3456/64 router=fe80::2 mtu6=65520 waited=16",
        "KBN_PING6 fail target=fd00::2 0", "KBN_DNS6 rc=0 server=fd00::3 name=b.example6.test addrs=fd00::2,",
        "KBN_WGET6 rc=1 size= sha256=", "KBN_DONE uptime=3.5",
    ])
    r = parse_console(log, 6.5, 0)
    assert r.lease["router"] == "10.0.2.2" and r.lease["mtu"] == "65520" and r.mtu == 65520
    assert r.ping == "ok" and r.dns_rc == 0 and r.dns_addrs == ("10.0.2.2",)
    assert r.wget_rc == 0 and r.wget_size == 1 << 20 and r.sha256 == "abc" and r.done
    assert r.addr6 == "fd00::5054:ff:fe12:3456/64" and r.router6 == "fe80::2" and r.mtu6 == 65520
    assert r.ping6 == "fail" and r.dns6_rc == 0 and r.dns6_addrs == ("fd00::2",)
    assert r.wget6_rc == 1 and r.wget6_size == 0 and r.sha256_6 == ""
    empty = parse_console("kernel panic", 90, None)
    assert not empty.done and empty.ping == "" and empty.sha256 == ""
    assert empty.addr6 == "" and empty.ping6 == "" and empty.dns6_rc is None and empty.wget6_rc is None


def test_kernel_args_leave_out_empty_values():
    assert kernel_args() == ""
    assert kernel_args("http://10.0.2.2:1/a", gw6="fd00::2", url6="http://[fd00::2]:2/b") == (
        "kbn.url=http://10.0.2.2:1/a kbn.gw6=fd00::2 kbn.url6=http://[fd00::2]:2/b")


@pytest.mark.netns
def test_netns_lifecycle_and_sysctl():
    ns = Netns(area="t")
    with ns:
        assert ns.name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        ns.allow_ping_sockets()
        out = ns.run(["sysctl", "-n", "net.ipv4.ping_group_range"]).stdout.split()
        assert out == ["0", "2147483647"]
        root = Path("/proc/sys/net/ipv4/ping_group_range").read_text().split()
        assert root != out or root == ["0", "2147483647"]  # unchanged outside (unless it was already so)
        assert "state UNKNOWN" in ns.run(["ip", "link", "show", "lo"]).stdout or "UP" in ns.run(
            ["ip", "link", "show", "lo"]).stdout
        ns.set_resolv_conf(["127.0.0.1"])
        assert ns.run(["cat", "/etc/resolv.conf"]).stdout == "nameserver 127.0.0.1\n"
    assert ns.name not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not Path(f"/etc/netns/{ns.name}").exists()


@pytest.mark.netns
def test_host_netns_is_a_dead_end(host_netns):
    route = host_netns.host.run(["ip", "route", "get", "192.0.2.1"]).stdout
    assert f"via {HostNetns.GW_ADDR} dev veth-h" in route
    # the gw namespace has no route beyond its own subnet: nothing is forwarded off it
    gw_routes = host_netns.gw.run(["ip", "-4", "route"]).stdout
    assert "default" not in gw_routes
    assert host_netns.gw.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    # the host reaches the gw address (the veth works)
    assert host_netns.host.run(["busybox", "ping", "-c", "1", "-W", "2", HostNetns.GW_ADDR], check=False).returncode == 0


@pytest.mark.netns
def test_servers_inside_a_namespace(netns):
    with HttpFileServer(netns=netns) as http, UdpEchoServer(netns=netns) as udp, \
            Dnsmasq(netns=netns) as dns:
        digest = http.add_file("x.bin", 1000)
        got = netns.run(["python3", "-c", f"import urllib.request,hashlib;print(hashlib.sha256("
                         f"urllib.request.urlopen('{http.url('x.bin')}').read()).hexdigest())"]).stdout
        assert got.strip() == digest
        # not reachable from the root namespace's loopback (it lives in the other namespace)
        with pytest.raises(OSError):
            urllib.request.urlopen(http.url("x.bin"), timeout=2).read()

        def udp_roundtrip() -> bytes:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                s.sendto(b"hi", ("127.0.0.1", udp.port))
                return s.recvfrom(10)[0]

        assert call_in_netns(netns.name, udp_roundtrip) == b"hi"
        assert dns.lookup("a.example.test") == ["10.0.2.2"]


@pytest.mark.netns
def test_host_netns_ipv6_is_a_dead_end_too():
    with HostNetns(area="t6", ipv6=True) as topo:
        route = topo.host.run(["ip", "-6", "route", "get", "2001:db8::1"]).stdout
        assert f"via {HostNetns.GW_ADDR6} dev veth-h" in route
        assert "default" not in topo.gw.run(["ip", "-6", "route"]).stdout
        assert topo.gw.run(["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.strip() == "0"
        ping = topo.host.run(["busybox", "ping", "-6", "-c", "1", "-W", "2", HostNetns.GW_ADDR6], check=False)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    with HostNetns(area="t4") as topo:  # IPv6 stays off unless asked for
        assert "default" not in topo.host.run(["ip", "-6", "route"]).stdout

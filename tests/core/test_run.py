"""``kboxnet run``: a real network namespace with a tap link served by a backend."""

from __future__ import annotations

import pytest

from .helpers import kboxnet

pytestmark = pytest.mark.netns


def test_exit_status_is_the_commands():
    assert kboxnet("run", "--net", "arp-responder", "--", "sh", "-c", "exit 7").returncode == 7
    assert kboxnet("run", "--net", "arp-responder", "--", "true").returncode == 0


def test_signal_death_is_128_plus_signal():
    assert kboxnet("run", "--net", "arp-responder", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15


def test_namespace_is_configured_with_the_guest_profile():
    out = kboxnet("run", "--net", "arp-responder", "--", "sh", "-c",
                  "ip -4 -o addr show tap0; ip route show default; ip -o link show lo; "
                  "cat /etc/resolv.conf; cat /sys/class/net/tap0/mtu")
    assert out.returncode == 0, out.stderr
    assert "10.0.2.15/24" in out.stdout
    assert "default via 10.0.2.2 dev tap0" in out.stdout
    assert "LOOPBACK,UP" in out.stdout
    assert "nameserver 10.0.2.3" in out.stdout  # never the host's resolvers
    assert out.stdout.strip().endswith("1500")


def test_guest_frames_reach_the_backend():
    out = kboxnet("run", "--net", "arp-responder", "-v", "--", "busybox", "arping", "-c", "2", "-w", "3",
                  "-I", "tap0", "10.0.2.2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Received 2 response" in out.stdout
    assert "arp_replies=2" in out.stderr


def test_mtu_option_and_missing_command():
    out = kboxnet("run", "--net", "arp-responder", "--mtu", "9000", "--", "cat", "/sys/class/net/tap0/mtu")
    assert out.stdout.strip() == "9000"
    assert kboxnet("run", "--net", "arp-responder").returncode != 0


def test_command_not_found_is_reported():
    out = kboxnet("run", "--net", "arp-responder", "--", "/nonexistent/prog")
    assert out.returncode != 0 and "nonexistent" in out.stderr


def test_ipv6_address_is_ready_when_the_command_starts():
    """minislirp sends router advertisements; ``run`` waits for SLAAC before starting the command."""
    out = kboxnet("run", "--net", "minislirp", "--", "sh", "-c",
                  "ip -6 -o addr show dev tap0 scope global; ip -6 route show default")
    assert out.returncode == 0, out.stderr
    assert " fd00::" in out.stdout and "tentative" not in out.stdout
    assert "default via fe80::2 dev tap0" in out.stdout

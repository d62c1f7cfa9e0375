"""The tap link against the real kernel: frames in and out, and the virtio-net header."""

from __future__ import annotations

import ipaddress
import subprocess
import time

import pytest
from kboxnet_testbackends.plugin import arp_reply

from kboxnet_core.links.tap import VNET_HDR, VNET_HDR_LEN, TapLink
from kboxnet_core.testing.netns import Netns

pytestmark = pytest.mark.netns
GW = ipaddress.IPv4Address("10.0.2.2")


@pytest.fixture
def ns():
    with Netns(area="lead-tap") as n:
        yield n


def answer_arping(link: TapLink, ns: Netns, expect_header: bool) -> tuple[str, list[bytes]]:
    ns.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
    proc = subprocess.Popen(ns.prefix() + ["busybox", "arping", "-c", "1", "-w", "3", "-I", "tap0", str(GW)],
                            stdout=subprocess.PIPE, text=True)
    seen: list[bytes] = []
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline and proc.poll() is None:
        for frame in link.recv_frames():
            seen.append(bytes(frame))
            eth = frame[VNET_HDR_LEN:] if expect_header else frame
            reply = arp_reply(eth, GW)
            if reply is not None:
                link.send_frame((bytes(VNET_HDR_LEN) if expect_header else b"") + reply)
        time.sleep(0.005)
    return proc.communicate(timeout=5)[0], seen


def test_plain_tap_round_trip(ns):
    link = TapLink.open_in_netns(ns.path, "tap0")
    try:
        out, seen = answer_arping(link, ns, expect_header=False)
        assert "Received 1 response" in out
        assert any(f[12:14] == b"\x08\x06" for f in seen)
    finally:
        link.close()


def test_vnet_header_exposed_to_a_backend_that_accepts_it(ns):
    link = TapLink.open_in_netns(ns.path, "tap0", vnet_hdr=True, offload=True)
    try:
        link.adapt_to(True)
        assert link.vnet_hdr
        out, seen = answer_arping(link, ns, expect_header=True)
        assert "Received 1 response" in out
        arp = [f for f in seen if f[VNET_HDR_LEN + 12 : VNET_HDR_LEN + 14] == b"\x08\x06"]
        assert arp and VNET_HDR.unpack_from(arp[0])[1] == 0  # gso_type NONE for ARP
    finally:
        link.close()


def test_vnet_header_hidden_from_a_backend_that_does_not(ns):
    link = TapLink.open_in_netns(ns.path, "tap0", vnet_hdr=True, offload=True)
    try:
        link.adapt_to(False)
        assert not link.vnet_hdr
        out, seen = answer_arping(link, ns, expect_header=False)
        assert "Received 1 response" in out
        assert any(f[12:14] == b"\x08\x06" for f in seen)  # plain Ethernet, header stripped
    finally:
        link.close()

"""A real Linux guest uploading through minislirp while guest frames are lost: it recovers with SACK.

The loss is injected between the tap and the engine (every 7th guest data frame of the upload is
dropped, as a full tap queue drops them; retransmissions included, so some of those are lost too).
Before minislirp offered SACK the guest recovered such losses only by duplicate ACKs (three needed)
or by retransmission timeouts that back off exponentially: under the heavy loss of 1,000 flows behind
a short tap queue, tens of flows did not finish in 60 s (bench/heavy_loss.py). Here the guest must
have negotiated SACK and used it, and every byte must arrive in order.
"""

from __future__ import annotations

import struct
import sys

import flow_server
import guest_tools
import pytest
from guest import GuestNet

from kboxnet_core.testing.netns import netns_supported
from kboxnet_core.testing.ports import free_tcp_port

pytestmark = pytest.mark.netns


@pytest.fixture
def sink_port():
    reason = netns_supported()
    if reason:
        pytest.skip(reason)
    with flow_server.served_in_thread("sink", free_tcp_port()) as port:
        yield port


def drop_every(g: GuestNet, port: int, nth: int) -> list[int]:
    """Drop every ``nth`` guest TCP frame with payload to ``port`` before minislirp sees it; returns a counter
    [data frames seen, dropped]."""
    link = g.session.engine.link
    skip = 10 if g.session.engine.vnet else 0
    inner = link.recv_frames
    seen = [0, 0]

    def recv_frames(limit: int = 256):
        out = []
        for f in inner(limit):
            b = skip + 14
            if len(f) > b + 40 and f[b - 2:b] == b"\x08\x00" and f[b + 9] == 6:
                ihl = (f[b] & 15) * 4
                total = struct.unpack_from("!H", f, b + 2)[0]
                dport = struct.unpack_from("!H", f, b + ihl + 2)[0]
                doff = (f[b + ihl + 12] >> 4) * 4
                if dport == port and total > ihl + doff:
                    seen[0] += 1
                    if seen[0] % nth == 0:
                        seen[1] += 1
                        continue
            out.append(f)
        return out

    link.recv_frames = recv_frames
    return seen


def nstat(g: GuestNet, name: str) -> int:
    out = g.ns.run(["nstat", "-az", name], check=False).stdout
    for line in out.splitlines():
        if line.startswith(name + " "):
            return int(line.split()[1])
    return 0


@pytest.mark.parametrize("mtu", [1500, 65520])
def test_upload_under_loss_recovers_with_sack(sink_port, mtu):
    n, size = 4, 4 << 20
    with GuestNet(vnet_hdr=True, mtu=mtu, area="msll") as g:
        assert "KBN_LEASE" in g.dhcp()
        seen = drop_every(g, sink_port, 7)
        r = g.ns.run(["sh", "-c", f"exec {sys.executable} -c '{guest_tools.UPLOAD_FLOWS}' "
                      f"10.0.2.2 {sink_port} {n} 0.5 50 {size}"], timeout=90, check=False)
        out = r.stdout + r.stderr
        assert f"DONE {n} OK {n} FAILED 0 LOST 0 STUCK 0 SENT " in out, out + str(g.session.counters())
        assert seen[1] >= 10, seen  # the loss really happened
        c = g.session.counters()
        assert c["tcp.sack_acks"] > 0 and c["tcp.out_of_order_kept"] > 0
        # the guest's own view: SACK was negotiated and its loss recovery used it
        assert nstat(g, "TcpExtTCPSackRecovery") >= 1, \
            g.ns.run(["nstat", "-az"], check=False).stdout

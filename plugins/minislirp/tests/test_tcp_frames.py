"""The TCP translation driven frame by frame: a scripted guest (scapy) against a real host socket.

These cover what the real-stack tests rarely exercise: duplicate-ACK rewinds,
out-of-order guest data, window scaling, half-close and resets.
"""

from __future__ import annotations

import socket
import time

import pytest
from guest import guest_config
from kboxnet_minislirp.engine import Engine
from kboxnet_minislirp.wire import HOST_MAC
from memlink import MemLink
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from test_unit import GUEST_MAC, assert_checksums_ok

GW = "10.0.2.2"
ME = "10.0.2.15"
ISN = 5000


class Rig:
    """An engine on a memory link, one guest connection and the host server socket."""

    def __init__(self, mtu: int = 1500) -> None:
        self.link = MemLink(mtu=mtu)
        self.e = Engine(self.link, guest_config(mtu=mtu).net)
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(4)
        self.port = self.srv.getsockname()[1]
        self.sport = 41000
        self.host: socket.socket | None = None
        self.gseq = ISN + 1  # next guest seq

    def frame(self, flags: str, seq: int | None = None, ack: int = 0, data: bytes = b"", window: int = 1000,
              options=None):
        pkt = Ether(src=GUEST_MAC, dst=HOST_MAC.hex(":")) / IP(src=ME, dst=GW) / \
            TCP(sport=self.sport, dport=self.port, flags=flags, seq=self.gseq if seq is None else seq, ack=ack,
                window=window, options=options or [])
        if data:
            pkt = pkt / Raw(data)
        return pkt

    def send(self, pkt) -> None:
        self.e.input(memoryview(bytes(pkt)))
        self.e.tcp.end_of_batch()

    def pump(self, until=None, timeout: float = 2.0) -> list[Ether]:
        """Run the engine's host side until ``until(frames)`` is true (or for a short while)."""
        out: list[Ether] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for fd, ev in self.e.ep.poll(0.02):
                self.e.handlers[fd](ev)
            self.e.now = time.monotonic()
            if self.e.tcp.more:
                self.e.tcp.resume()
            out += [Ether(f) for f in self.link.sent]
            self.link.sent.clear()
            if until is not None and until(out):
                break
        return out

    def take(self) -> list[Ether]:
        out = [Ether(f) for f in self.link.sent]
        self.link.sent.clear()
        return out

    def connect(self, ws: int = 7, sack: bool = False) -> Ether:
        opts = [("MSS", 1460), ("WScale", ws)] + ([("NOP", None), ("NOP", None), ("SAckOK", b"")] if sack else [])
        self.send(self.frame("S", seq=ISN, options=opts))
        (synack,) = self.pump(lambda f: f)
        assert synack[TCP].flags == "SA" and synack[TCP].ack == ISN + 1
        self.hseq = synack[TCP].seq + 1
        self.send(self.frame("A", ack=self.hseq))
        self.host, _ = self.srv.accept()
        self.host.setblocking(False)
        return synack

    def close(self) -> None:
        self.e.close()
        self.link.close()
        self.srv.close()
        if self.host is not None:
            self.host.close()


@pytest.fixture
def rig():
    r = Rig()
    yield r
    r.close()


def data_frames(frames):
    return [f for f in frames if TCP in f and len(f[TCP].payload)]


def test_handshake_negotiates_mss_and_window_scale(rig):
    synack = rig.connect(ws=7)
    opts = dict(synack[TCP].options)
    assert opts["MSS"] == 1460 and opts["WScale"] == 8
    assert_checksums_ok(synack)


def test_host_data_is_segmented_checksummed_and_discarded_only_when_acked(rig):
    rig.connect()
    payload = bytes(range(256)) * 40  # 10240 bytes
    rig.host.sendall(payload)
    frames = data_frames(rig.pump(lambda f: sum(len(x[TCP].payload) for x in data_frames(f)) >= len(payload)))
    got = b"".join(bytes(f[TCP].payload) for f in frames)
    assert got == payload
    assert all(len(f[TCP].payload) <= 1460 for f in frames)
    for f in frames:
        assert_checksums_ok(f)
    assert frames[-1][TCP].flags & 0x08  # PSH on the last segment
    # nothing acknowledged yet: the data is still in the host socket (peeked, not read)
    flow = next(iter(rig.e.tcp.flows.values()))
    assert flow.undiscarded == 0 and (flow.seq_to_tap - flow.seq_ack_from_tap) % 2**32 == len(payload)
    # three duplicate ACKs for the first segment: everything after it is sent again (a rewind)
    first = frames[0][TCP]
    ack1 = first.seq + len(first.payload)
    rig.send(rig.frame("A", ack=ack1, window=1000))
    for _ in range(3):
        rig.send(rig.frame("A", ack=ack1, window=1000))
    again = data_frames(rig.take())
    assert again and again[0][TCP].seq == ack1
    assert b"".join(bytes(f[TCP].payload) for f in again) == payload[len(first.payload):]
    assert rig.e.counters["tcp.fast_retransmits"] == 1
    # the guest acknowledges everything: the host socket's receive queue is empty afterwards
    rig.send(rig.frame("A", ack=(first.seq + len(payload)) % 2**32, window=1000))
    assert flow.seq_ack_from_tap == flow.seq_to_tap
    with pytest.raises(BlockingIOError):
        flow.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)


def test_guest_data_in_order_out_of_order_and_duplicate(rig):
    rig.connect()
    rig.link.sent.clear()
    rig.send(rig.frame("PA", ack=rig.hseq, data=b"hello "))
    (ack,) = rig.take()
    assert ack[TCP].ack == rig.gseq + 6
    rig.gseq += 6
    # a gap: the segment after the missing one is kept aside and the ACK repeats
    rig.send(rig.frame("PA", seq=rig.gseq + 100, ack=rig.hseq, data=b"later"))
    (dup,) = rig.take()
    assert dup[TCP].ack == rig.gseq
    assert rig.e.counters["tcp.out_of_order"] == 1
    # overlapping retransmission: only the new part is written
    rig.send(rig.frame("PA", seq=rig.gseq - 3, ack=rig.hseq, data=b"lo world"))
    rig.gseq += 5
    time.sleep(0.05)
    assert rig.host.recv(100) == b"hello world"
    (ack2,) = rig.take()
    assert ack2[TCP].ack == rig.gseq
    assert_checksums_ok(ack2)


def test_out_of_order_guest_data_is_kept_until_the_gap_fills(rig):
    """Regression: segments beyond a gap were dropped, so every loss on the guest's side cost the guest a
    retransmission timeout (backed off exponentially), and uploads of 1,000 flows stalled for minutes."""
    rig.connect()
    rig.link.sent.clear()
    g = rig.gseq
    rig.send(rig.frame("PA", seq=g + 5, ack=rig.hseq, data=b"world"))
    (dup,) = rig.take()
    assert dup[TCP].ack == g
    assert rig.e.counters["tcp.out_of_order_kept"] == 1
    # the gap is filled: both segments reach the host, in order, and one ACK covers both
    rig.send(rig.frame("PA", seq=g, ack=rig.hseq, data=b"hello"))
    acks = rig.take()
    assert acks[-1][TCP].ack == g + 10
    time.sleep(0.05)
    assert rig.host.recv(100) == b"helloworld"
    assert rig.e.tcp.ooo_total == 0


def test_one_duplicate_ack_per_out_of_order_segment(rig):
    """Three segments beyond a gap in one batch give three duplicate ACKs (the guest's fast retransmit)."""
    rig.connect()
    rig.link.sent.clear()
    g = rig.gseq
    for i in range(3):
        rig.e.input(memoryview(bytes(rig.frame("PA", seq=g + 10 + 10 * i, ack=rig.hseq, data=b"0123456789"))))
    rig.e.tcp.end_of_batch()
    dups = rig.take()
    assert len(dups) == 3 and all(d[TCP].ack == g and not len(d[TCP].payload) for d in dups)
    rig.send(rig.frame("PA", seq=g, ack=rig.hseq, data=b"abcdefghij"))
    assert rig.take()[-1][TCP].ack == g + 40
    time.sleep(0.05)
    assert rig.host.recv(100) == b"abcdefghij" + b"0123456789" * 3


def test_out_of_order_fin_waits_for_the_data_before_it(rig):
    """Data+FIN beyond a gap: the host sees EOF only after the missing data, and the FIN is acknowledged then."""
    rig.connect()
    rig.link.sent.clear()
    g = rig.gseq
    rig.send(rig.frame("FA", seq=g + 4, ack=rig.hseq, data=b"tail"))
    (dup,) = rig.take()
    assert dup[TCP].ack == g
    time.sleep(0.05)
    with pytest.raises(BlockingIOError):
        rig.host.recv(100)  # neither data nor EOF yet
    rig.send(rig.frame("PA", seq=g, ack=rig.hseq, data=b"head"))
    assert rig.take()[-1][TCP].ack == g + 9  # 8 bytes and the FIN
    time.sleep(0.05)
    assert rig.host.recv(100) == b"headtail"
    assert rig.host.recv(100) == b""


def test_window_reflects_host_send_buffer(rig):
    rig.connect()
    rig.link.sent.clear()
    rig.send(rig.frame("PA", ack=rig.hseq, data=b"x"))
    (ack,) = rig.take()
    flow = next(iter(rig.e.tcp.flows.values()))
    sndbuf = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    advertised = ack[TCP].window << 8
    assert 0 < advertised <= sndbuf
    assert advertised >= sndbuf // 2  # nearly all of it is free


def test_half_close_both_ways_then_close(rig):
    rig.connect()
    rig.link.sent.clear()
    # guest FIN: the host sees EOF but can still send
    rig.send(rig.frame("FA", ack=rig.hseq))
    (ack,) = rig.take()
    assert ack[TCP].ack == rig.gseq + 1
    time.sleep(0.05)
    assert rig.host.recv(10) == b""
    rig.host.sendall(b"bye")
    rig.host.shutdown(socket.SHUT_WR)
    frames = rig.pump(lambda f: any(x[TCP].flags & 0x01 for x in f))
    assert b"".join(bytes(f[TCP].payload) for f in data_frames(frames)) == b"bye"
    fin = [f for f in frames if f[TCP].flags & 0x01][0]
    # the guest acknowledges data and FIN: the flow is gone
    rig.send(rig.frame("A", seq=rig.gseq + 1, ack=(fin[TCP].seq + 1) % 2**32))
    assert not rig.e.tcp.flows
    assert rig.e.counters["tcp.closed"] == 1


def test_guest_rst_resets_the_host_connection(rig):
    rig.connect()
    rig.send(rig.frame("R", ack=rig.hseq))
    assert not rig.e.tcp.flows
    time.sleep(0.05)
    with pytest.raises(ConnectionResetError):
        rig.host.recv(10)


def test_host_reset_gives_guest_rst(rig):
    rig.connect()
    import struct

    rig.host.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rig.host.close()
    rig.host = None
    frames = rig.pump(lambda f: any(x[TCP].flags & 0x04 for x in f))
    assert any(f[TCP].flags & 0x04 for f in frames)
    assert not rig.e.tcp.flows


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_segments = st.lists(st.tuples(st.sampled_from(["A", "PA", "FA", "S", "SA", "R", "RA", "", "F", "UA"]),
                               st.integers(-3000, 3000), st.integers(-3000, 3000), st.integers(0, 65535),
                               st.binary(max_size=3000)), min_size=1, max_size=12)


@pytest.mark.parametrize("sack", [False, True])
@given(segments=_segments)
@settings(max_examples=60, deadline=None)
def test_random_segments_on_an_established_flow_never_break_the_engine(sack, segments):
    rig = Rig()
    try:
        rig.connect(sack=sack)
        rig.host.sendall(b"y" * 5000)
        rig.pump(timeout=0.05)
        for flags, dseq, dack, window, data in segments:
            pkt = rig.frame(flags, seq=(rig.gseq + dseq) % 2**32, ack=(rig.hseq + dack) % 2**32, data=data,
                            window=window)
            rig.send(pkt)
        rig.pump(timeout=0.05)
        for f in rig.take():
            assert_checksums_ok(f)
        assert rig.e.counters["drop.internal_error"] == 0
    finally:
        rig.close()

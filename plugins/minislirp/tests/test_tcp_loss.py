"""Heavy loss on the guest's side: SACK of kept segments, the rest of a short sendmsg() kept, SYN-ACK backoff.

Frame by frame, a scripted guest (scapy) against a real host socket (see test_tcp_frames).

Regression (1,000 uploads with the tap queue cut short, bench/heavy_loss.py): without SACK a Linux guest
has neither RACK nor tail-loss probes, so a segment lost with fewer than three segments behind it, and
every lost retransmission, waits for a retransmission timeout, and those back off exponentially: tens of
flows did not finish within 60 s. And a handshake whose ACK and first data were lost was reset after 6 s.
"""

from __future__ import annotations

import socket
import time

import pytest
from kboxnet_minislirp.sack import ranges, sack_option
from kboxnet_minislirp.tcp import OOO_FLOW_MAX
from scapy.layers.inet import TCP
from test_tcp_frames import Rig
from test_unit import assert_checksums_ok

M = 2**32


@pytest.fixture
def rig():
    r = Rig(mtu=65520)
    yield r
    r.close()


def sack_blocks(frame) -> list[tuple[int, int]]:
    for kind, value in frame[TCP].options:
        if kind == "SAck":
            return [(value[i], value[i + 1]) for i in range(0, len(value), 2)]
    return []


def test_sack_permitted_only_when_the_guest_offers_it(rig):
    synack = rig.connect(sack=True)
    assert "SAckOK" in dict(synack[TCP].options)
    assert_checksums_ok(synack)
    other = Rig()
    try:
        synack = other.connect(sack=False)
        assert "SAckOK" not in dict(synack[TCP].options)
    finally:
        other.close()


def test_segment_beyond_a_gap_is_sacked(rig):
    """A lost segment with one segment behind it: the duplicate ACK reports the kept segment, so the guest's
    RACK retransmits the hole at once instead of waiting for its (backed-off) retransmission timeout."""
    rig.connect(sack=True)
    rig.link.sent.clear()
    g = rig.gseq
    rig.send(rig.frame("PA", seq=g + 100, ack=rig.hseq, data=b"b" * 50))
    (dup,) = rig.take()
    assert dup[TCP].ack == g
    assert sack_blocks(dup) == [(g + 100, g + 150)]
    assert_checksums_ok(dup)
    # a second hole, before a FIN (one sequence number more): the newest segment's block comes first, then
    # the one nearest the ACK number
    rig.send(rig.frame("FA", seq=g + 300, ack=rig.hseq, data=b"d" * 50))
    (dup,) = rig.take()
    assert sack_blocks(dup) == [(g + 300, g + 351), (g + 100, g + 150)]
    # a segment that joins both blocks
    rig.send(rig.frame("A", seq=g + 150, ack=rig.hseq, data=b"c" * 150))
    (dup,) = rig.take()
    assert sack_blocks(dup) == [(g + 100, g + 351)]
    # the hole is filled: everything reaches the host, the ACK covers the FIN, no SACK is left
    rig.send(rig.frame("PA", seq=g, ack=rig.hseq, data=b"a" * 100))
    ack = rig.take()[-1]
    assert ack[TCP].ack == (g + 351) % M and not sack_blocks(ack)
    time.sleep(0.05)
    assert rig.host.recv(1000) == b"a" * 100 + b"b" * 50 + b"c" * 150 + b"d" * 50


def test_duplicates_are_reported_with_dsack(rig):
    """A duplicate segment (typically the guest's tail-loss probe, fired when our ACK is late) is answered with a
    D-SACK block (RFC 2883): without it Linux takes the probe for a repaired loss and cuts its window."""
    rig.connect(sack=True)
    rig.link.sent.clear()
    g = rig.gseq
    rig.send(rig.frame("PA", seq=g, ack=rig.hseq, data=b"a" * 100))
    assert rig.take()[-1][TCP].ack == g + 100
    rig.send(rig.frame("PA", seq=g, ack=rig.hseq, data=b"a" * 100))  # the same segment again
    (ack,) = rig.take()
    assert ack[TCP].ack == g + 100 and sack_blocks(ack) == [(g, g + 100)]
    assert_checksums_ok(ack)
    # a duplicate of a kept segment beyond a hole: D-SACK first, then the SACK block
    rig.send(rig.frame("PA", seq=g + 200, ack=rig.hseq, data=b"c" * 50))
    rig.take()
    rig.send(rig.frame("PA", seq=g + 200, ack=rig.hseq, data=b"c" * 50))
    (ack,) = rig.take()
    assert sack_blocks(ack) == [(g + 200, g + 250), (g + 200, g + 250)]
    # reported once: the next ACK carries the SACK block only
    rig.send(rig.frame("PA", seq=g + 300, ack=rig.hseq, data=b"e" * 50))
    (ack,) = rig.take()
    assert sack_blocks(ack) == [(g + 300, g + 350), (g + 200, g + 250)]


def test_no_sack_blocks_without_sack_permitted(rig):
    rig.connect(sack=False)
    rig.link.sent.clear()
    rig.send(rig.frame("PA", seq=rig.gseq + 100, ack=rig.hseq, data=b"b" * 50))
    (dup,) = rig.take()
    assert not sack_blocks(dup)
    assert rig.e.counters["tcp.out_of_order_kept"] == 1


def test_a_segment_that_is_not_kept_is_not_sacked(rig):
    """SACK must be truthful: a segment beyond the per-flow bound is dropped, so no block may cover it."""
    rig.connect(sack=True)
    rig.link.sent.clear()
    g = rig.gseq
    size = 60000
    n = OOO_FLOW_MAX // size
    for i in range(n):
        rig.e.input(memoryview(bytes(rig.frame("A", seq=(g + 1 + i * size) % M, ack=rig.hseq, data=b"k" * size))))
    rig.e.tcp.end_of_batch()
    rig.take()
    beyond = (g + 1 + n * size) % M
    rig.send(rig.frame("A", seq=beyond, ack=rig.hseq, data=b"x" * size))
    (dup,) = rig.take()
    assert rig.e.counters["tcp.out_of_order_dropped"] == 1
    assert sack_blocks(dup) == [(g + 1, beyond)]


def _small_host_buffers(rig: Rig) -> None:
    """Shrink the host socket's send buffer and the peer's receive buffer: sendmsg() then takes only part."""
    flow = next(iter(rig.e.tcp.flows.values()))
    flow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    rig.host.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)


def _read_all(rig: Rig, want: int, frames: list | None = None, timeout: float = 10.0) -> bytes:
    """Read the host side while running the engine (EPOLLOUT writes what was kept); ``want`` bytes, or up
    to EOF with ``want=-1``. The frames minislirp sends meanwhile are added to ``frames``."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while (want < 0 or len(got) < want) and time.monotonic() < deadline:
        try:
            chunk = rig.host.recv(1 << 16)
            if not chunk:
                break
            got += chunk
        except BlockingIOError:
            pass
        out = rig.pump(timeout=0.02)
        rig.e.tcp.tick(time.monotonic())
        if frames is not None:
            frames += out + rig.take()
    return bytes(got)


def test_the_rest_of_a_short_sendmsg_is_kept_and_written_on_epollout(rig):
    """A short sendmsg() used to drop the rest: the guest had to retransmit it, after its retransmission
    timeout (a window update is no duplicate ACK). Now it is kept and written when the host socket drains,
    and the guest never has to send it again."""
    rig.connect(sack=True)
    _small_host_buffers(rig)
    rig.link.sent.clear()
    g = rig.gseq
    payload = bytes(range(256)) * 1000  # 256,000 bytes: far more than the host socket takes at once
    parts = [payload[i:i + 64000] for i in range(0, len(payload), 64000)]
    for i, part in enumerate(parts):
        rig.e.input(memoryview(bytes(rig.frame("PA", seq=(g + 64000 * i) % M, ack=rig.hseq, data=part))))
    rig.e.tcp.end_of_batch()
    (ack,) = rig.take()
    assert rig.e.counters["tcp.host_short_send"] >= 1
    taken = (ack[TCP].ack - g) % M
    assert 0 < taken < len(payload)  # acknowledged only as far as the host socket took it
    # the guest sends nothing more; the host reads: everything arrives, in order, and is acknowledged
    frames: list = []
    assert _read_all(rig, len(payload), frames) == payload
    assert rig.e.counters["tcp.unsent_kept"] >= len(payload) - taken
    frames += rig.pump(lambda f: any(x[TCP].ack == (g + len(payload)) % M for x in f), timeout=2)
    acks = [f for f in frames if TCP in f]
    assert acks and acks[-1][TCP].ack == (g + len(payload)) % M
    assert rig.e.tcp.ooo_total == 0
    for f in acks:
        assert_checksums_ok(f)


def test_sacked_data_is_never_dropped_by_a_short_sendmsg(rig):
    """Kept segments are SACKed; when the hole is filled and the host socket takes only part, the kept
    (SACKed) segments must survive: dropping them would be reneging, answered by a retransmission timeout."""
    rig.connect(sack=True)
    _small_host_buffers(rig)
    rig.link.sent.clear()
    g = rig.gseq
    head, tail = b"h" * 60000, b"t" * 60000
    rig.send(rig.frame("PA", seq=(g + len(head)) % M, ack=rig.hseq, data=tail))
    (dup,) = rig.take()
    assert sack_blocks(dup) == [((g + len(head)) % M, (g + len(head) + len(tail)) % M)]
    rig.send(rig.frame("PA", seq=g, ack=rig.hseq, data=head))
    assert rig.e.counters["tcp.host_short_send"] >= 1
    assert _read_all(rig, len(head) + len(tail)) == head + tail


def test_a_fin_behind_a_short_sendmsg_waits_and_is_delivered(rig):
    rig.connect(sack=True)
    _small_host_buffers(rig)
    rig.link.sent.clear()
    g = rig.gseq
    payload = b"y" * 60000 + b"z" * 60000
    rig.e.input(memoryview(bytes(rig.frame("A", seq=g, ack=rig.hseq, data=payload[:60000]))))
    rig.send(rig.frame("FPA", seq=(g + 60000) % M, ack=rig.hseq, data=payload[60000:]))
    assert rig.e.counters["tcp.host_short_send"] >= 1
    frames: list = []
    assert _read_all(rig, -1, frames) == payload  # the data, then EOF: the FIN reached the host after it
    acks = [f for f in frames if TCP in f]
    assert acks and acks[-1][TCP].ack == (g + len(payload) + 1) % M


def test_sack_option_helpers():
    from kboxnet_minislirp.tcp import Kept

    ooo = {1100: (Kept(b"x" * 100), 0), 1150: (Kept(b"y" * 100), 0), 1400: (Kept(b"z" * 10), 1), 1000: (Kept(b"o"), 0)}
    assert ranges(ooo, 1000) == [(100, 250), (400, 411)]  # merged; the FIN counts; data at the ACK is left out
    opt = sack_option(ooo, 1000, 1400)
    assert opt[:4] == b"\x01\x01\x05\x12" and len(opt) == 20
    assert int.from_bytes(opt[4:8], "big") == 1400 and int.from_bytes(opt[12:16], "big") == 1100
    assert sack_option({}, 1000, 0) == b""
    many = {1000 + 20 * i: (Kept(b"q"), 0) for i in range(1, 8)}
    assert len(sack_option(many, 1000, 1020)) == 4 + 4 * 8  # at most 4 blocks (40 bytes of options)
    # wrap-around of the sequence space
    assert ranges({5: (Kept(b"w" * 10), 0)}, M - 10) == [(15, 25)]


def _syn_only(rig: Rig) -> float:
    """The guest's SYN and our SYN-ACK (the host connect() done); returns the engine time then."""
    rig.send(rig.frame("S", seq=rig.gseq - 1, options=[("MSS", 1460), ("WScale", 7), ("SAckOK", b"")]))
    (synack,) = rig.pump(lambda f: f)
    assert synack[TCP].flags == "SA"
    rig.hseq = synack[TCP].seq + 1
    return rig.e.now


def _advance(rig: Rig, start: float, seconds: float, step: float = 0.1) -> list[tuple[float, str]]:
    """Run the timers from ``start`` for ``seconds`` of engine time; (time since start, flags) of what was sent."""
    sent = []
    for i in range(1, int(seconds / step) + 1):
        now = start + i * step
        rig.e.now = now
        rig.e.tcp.tick(now)
        sent += [(round(i * step, 1), str(f[TCP].flags)) for f in rig.take() if TCP in f]
    return sent


def test_synack_retransmissions_back_off_like_linux(rig):
    """Regression: the SYN-ACK was resent every second and the flow reset after 6 s. Under heavy loss a guest
    that had the SYN-ACK but lost its ACK and first data segments saw its established connection reset.
    Now: resent after 1, 2, 4, 8, 16 s, given up after 63 s (Linux: tcp_synack_retries = 5)."""
    start = _syn_only(rig)
    sent = _advance(rig, start, 70)
    synacks = [t for t, flags in sent if flags == "SA"]
    assert synacks == pytest.approx([1, 3, 7, 15, 31], abs=0.15)
    resets = [t for t, flags in sent if "R" in flags]
    assert resets == pytest.approx([63], abs=0.15)
    assert rig.e.counters["tcp.synack_timeout"] == 1 and not rig.e.tcp.flows


def test_a_late_guest_ack_still_establishes_the_connection(rig):
    start = _syn_only(rig)
    _advance(rig, start, 20)
    assert rig.e.tcp.flows  # still waiting for the guest
    rig.send(rig.frame("PA", ack=rig.hseq, data=b"late but fine"))
    rig.host, _ = rig.srv.accept()
    rig.host.settimeout(5)
    assert rig.host.recv(100) == b"late but fine"

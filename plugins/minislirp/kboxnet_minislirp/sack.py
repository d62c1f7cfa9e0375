"""Selective acknowledgements (RFC 2018) of the out-of-order guest data minislirp holds.

Without SACK a Linux guest has no tail-loss probe and no RACK: a segment lost
with fewer than three segments behind it, or a lost retransmission, is
recovered only by a retransmission timeout, and those back off exponentially
(without timestamps no RTT sample from retransmitted data resets the
backoff). Under heavy loss on the guest's tap queue, flows then stall for
tens of seconds. With SACK the guest's RACK/TLP recover such losses within
a few round trips.

Duplicates are reported with D-SACK (RFC 2883): with SACK the guest sends
tail-loss probes when an ACK is late (minislirp is a Python loop on a shared
CPU), and without D-SACK it takes every needless probe for a repaired loss
and reduces its congestion window.

SACK must be truthful: a block covers only data the flow keeps
(``TcpFlow.ooo``) until it is written to the host socket, never data that is
dropped later (that would be reneging, which Linux answers with a
retransmission timeout).
"""

from __future__ import annotations

from .wire import HALF, MASK

#: SACK blocks per ACK: 4 fit in the 40 bytes of options (2 NOPs + 2 + 4 * 8 = 36)
MAX_BLOCKS = 4
#: NOP NOP SACK-permitted, appended to a SYN's options
SACK_PERMITTED = b"\x01\x01\x04\x02"


def ranges(ooo: dict[int, tuple[bytes, int]], ack: int) -> list[tuple[int, int]]:
    """The kept segments as merged ranges of offsets from ``ack``, in order; a FIN counts one."""
    spans = []
    for seq, (data, fin) in ooo.items():
        start = (seq - ack) & MASK
        if start >= HALF or not start:
            continue  # at or behind the ACK number: no longer out of order
        spans.append((start, start + len(data) + fin))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def sack_option(ooo: dict[int, tuple[bytes, int]], ack: int, recent: int,
                dsack: tuple[int, int] | None = None) -> bytes:
    """NOP NOP SACK with up to :data:`MAX_BLOCKS` blocks, or b"" when there is nothing to report.

    ``dsack`` (start, end): duplicate data just received, reported first (a D-SACK block, RFC 2883:
    the guest learns that a retransmission, typically its tail-loss probe, was not needed). Then the
    block holding ``recent`` (the segment that caused this ACK, RFC 2018 4.), then the others nearest
    to the ACK number first (the holes the guest should fill next).
    """
    spans = ranges(ooo, ack)
    blocks: list[tuple[int, int]] = []
    if dsack is not None:
        blocks.append(dsack)
    if spans:
        at = (recent - ack) & MASK
        first = next((i for i, (s, e) in enumerate(spans) if s <= at < e), 0)
        blocks += [((ack + s) & MASK, (ack + e) & MASK)
                   for s, e in (spans[first], *spans[:first], *spans[first + 1:])]
    if not blocks:
        return b""
    blocks = blocks[:MAX_BLOCKS]
    out = bytearray(b"\x01\x01\x05")
    out.append(2 + 8 * len(blocks))
    for start, end in blocks:
        out += start.to_bytes(4, "big")
        out += end.to_bytes(4, "big")
    return bytes(out)

"""TCP translation in passt's style: no per-connection data buffers.

* The SYN-ACK is sent only after the host ``connect()`` succeeded; a failure
  becomes an RST, so the guest's connect fails at once and truthfully.
* Host -> guest: data is read with ``MSG_PEEK`` (``SO_PEEK_OFF`` keeps the
  offset of what was sent and not yet acknowledged) straight into frame
  buffers behind pre-built headers, and discarded with ``MSG_TRUNC`` only when
  the guest acknowledges it. Retransmission is a rewind of the peek offset.
* Guest -> host: a segment is acknowledged only as far as ``send()`` accepted
  it; the window advertised to the guest is the free space of the host
  socket's send buffer (``SO_SNDBUF`` and ``SIOCOUTQ``).
* Out-of-order guest segments are kept (copied, bounded per flow and per
  session) until the gap before them is filled: dropping them leaves the
  guest's loss recovery to retransmission timeouts that back off
  exponentially, and a flow of 1,000 concurrent ones then stalls for minutes.
  They are reported with SACK (:mod:`.sack`) when the guest offers it, so
  its RACK and tail-loss probes recover what the tap queue dropped.
* What a short ``sendmsg()`` left over is kept the same way (it may include
  data already SACKed, which must not be dropped) and written on
  ``EPOLLOUT``, instead of waiting for the guest's retransmission timeout.
* Window scaling and MSS are always negotiated; FIN/half-close and RST work
  both ways; dead flows time out.

Sequence numbers: ``seq_to_tap`` is the next byte we send to the guest,
``seq_ack_from_tap`` the oldest byte the guest has not acknowledged,
``seq_max`` the highest sequence number sent (including our FIN),
``seq_from_tap`` the next byte expected from the guest (our ACK number).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import random
import select
import socket
import struct
from typing import TYPE_CHECKING

from .checksum import big_sum, checksum
from .sack import SACK_PERMITTED, sack_option
from .wire import (
    HALF,
    HEADROOM,
    IPPROTO_TCP,
    MASK,
    TCP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    VNET,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_NONE,
)

if TYPE_CHECKING:
    from .engine import Engine
    from .family import IPv4, Packet

#: our window scale; windows are capped at 65535 << 8 (16 MiB), like passt
WS_TO_TAP = 8
MAX_WINDOW = 0xFFFF << WS_TO_TAP
SO_PEEK_OFF = getattr(socket, "SO_PEEK_OFF", 42)
SIOCOUTQ = 0x5411
MSG_PEEK = socket.MSG_PEEK
MSG_TRUNC = socket.MSG_TRUNC
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLRDHUP = select.EPOLLRDHUP
SOCK_EVENTS = EPOLLIN | EPOLLOUT | EPOLLRDHUP | select.EPOLLET
#: bytes read from one host socket per turn (then other flows get theirs)
TURN_BYTES = 512 * 1024
#: out-of-order guest data kept per flow and per session (beyond that it is dropped, as before)
OOO_FLOW_MAX = 4 << 20
OOO_TOTAL_MAX = 128 << 20
NSLOTS = 64
#: SYN / SYN-ACK retransmissions to the guest: after 1 s, doubling, 5 times (given up after 63 s, as Linux
#: does with tcp_synack_retries = 5). A fixed 1 s gave up after 6 s: under heavy loss on the guest's tap
#: queue, a guest that had its SYN-ACK and whose ACK and first data segments were all dropped saw its
#: established connection reset.
SYN_RTO = 1.0
SYN_RETRIES = 5
_H = struct.Struct("!H")
_I = struct.Struct("i")
_LINGER0 = struct.pack("ii", 1, 0)
_SYN_OPTS = struct.Struct("!BBHBBBB")  # MSS(2,4,mss) NOP WS(3,3,shift)


class Kept(bytes):
    """A copy of guest data that minislirp keeps (out of order, or left over by a short ``sendmsg()``).

    Its own type tells a kept (and possibly SACKed, so never to be dropped) piece of pending data from
    a view into a guest frame.
    """

    __slots__ = ()


#: guest SYN seen, host connect() running / SYN-ACK sent / both sides up /
#: host connection accepted on a forwarded port, SYN sent to the guest
CONNECTING, SYN_ACK_SENT, ESTABLISHED, SOCK_ACCEPTED = 0, 1, 2, 3


class TcpFlow:
    """One guest connection and its host socket (about 300 bytes, no data buffers)."""

    __slots__ = (
        "key", "fam", "sock", "fd", "gaddr", "gport", "raddr", "rport", "pseudo", "state",
        "seq_to_tap", "seq_ack_from_tap", "seq_max", "seq_from_tap", "seq_ack_to_tap",
        "wnd_from_tap", "ws_from_tap", "ws_to_tap", "wnd_to_tap", "mss", "readable", "eof",
        "fin_to_tap", "fin_acked", "fin_from_tap", "dup_acks", "rto_at", "retries", "last",
        "created", "force_ack", "wnd_wait", "closing_since", "pend", "pend_len", "tmpl", "fin_seq", "undiscarded", "keepalive",
        "ooo", "ooo_len", "ooo_recent", "sack_ok", "dsack",
    )

    def __init__(self, key: tuple, fam: IPv4, sock: socket.socket, gaddr: bytes, gport: int, raddr: bytes,
                 rport: int, now: float) -> None:
        self.key = key
        self.fam = fam
        self.sock = sock
        self.fd = sock.fileno()
        self.gaddr = gaddr
        self.gport = gport
        self.raddr = raddr
        self.rport = rport
        self.pseudo = fam.pseudo(raddr, gaddr, IPPROTO_TCP)
        self.state = CONNECTING
        self.seq_to_tap = self.seq_ack_from_tap = self.seq_max = 0
        self.seq_from_tap = self.seq_ack_to_tap = 0
        self.wnd_from_tap = 0
        self.ws_from_tap = 0
        self.ws_to_tap = 0
        self.wnd_to_tap = 0
        self.mss = 536
        self.readable = False
        self.eof = False
        self.fin_to_tap = False
        self.fin_acked = False
        self.fin_seq = -1
        self.undiscarded = 0
        self.keepalive = False
        self.fin_from_tap = False
        self.dup_acks = 0
        self.rto_at = 0.0
        self.retries = 0
        self.last = now
        self.created = now
        self.force_ack = False
        self.wnd_wait = False
        self.closing_since = 0.0
        self.pend: list[memoryview] = []
        self.pend_len = 0
        self.tmpl: tuple[bytes, int] | None = None
        #: out-of-order guest segments: seq -> (payload copy, FIN)
        self.ooo: dict[int, tuple[Kept, int]] | None = None
        self.ooo_len = 0
        #: seq of the segment kept last (the first SACK block holds it)
        self.ooo_recent = 0
        #: both SYNs carried SACK-permitted: our ACKs report the kept segments
        self.sack_ok = False
        #: (start, end) of duplicate data received, reported once as a D-SACK block (RFC 2883)
        self.dsack: tuple[int, int] | None = None


def parse_syn_options(frame: memoryview, start: int, end: int) -> tuple[int, int, bool]:
    """MSS (536 if absent), window shift (-1 if absent) and SACK-permitted from a SYN's options."""
    mss, ws, sack = 536, -1, False
    i = start
    while i < end:
        kind = frame[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        length = frame[i + 1]
        if length < 2 or i + length > end:
            break
        if kind == 2 and length == 4:
            mss = (frame[i + 2] << 8) | frame[i + 3]
        elif kind == 3 and length == 3:
            ws = min(frame[i + 2], 14)
        elif kind == 4 and length == 2:
            sack = True
        i += length
    return mss, ws, sack


class Tcp:
    """All TCP flows of a session."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.c = engine.counters
        self.flows: dict[tuple, TcpFlow] = {}
        self.ack_due: set[TcpFlow] = set()
        self.more: set[TcpFlow] = set()
        self.discard_due: set[TcpFlow] = set()
        self.ooo_total = 0
        # MSG_TRUNC never writes into it: anonymous pages that never become resident
        self._discard = mmap.mmap(-1, MAX_WINDOW + 65536)
        self._discard_view = memoryview(self._discard)
        self._ctl = bytearray(HEADROOM + 14 + 60 + 60)
        self._ctl_view = memoryview(self._ctl)
        self._ioctl_buf = bytearray(4)
        self.peek_off = self._probe_peek_off()
        fam = engine.ipv4
        self.mtu_mss = engine.mtu - fam.l3_len - 20
        #: MSS per L3 header length (IPv4 20, IPv6 40)
        self._mss = {20: engine.mtu - 40, 40: engine.mtu - 60}
        # frame slots: headroom + headers + one segment (a GSO super-frame with offload)
        self.seg_max = (fam.max_l4 - 20) if engine.offload else self.mtu_mss
        # sized for the longest L3 header (IPv6, 40 bytes); payload offsets per header length
        self._slot_size = HEADROOM + 14 + 40 + 20 + self.seg_max
        nslots = 8 if engine.offload else NSLOTS
        self._slots = [bytearray(self._slot_size) for _ in range(nslots)]
        self._slot_views = [memoryview(s) for s in self._slots]
        self._payload_views = {l3: [v[HEADROOM + 14 + l3 + 20:] for v in self._slot_views] for l3 in (20, 40)}
        self._rand = random.Random()

    @staticmethod
    def _probe_peek_off() -> bool:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            return True
        except OSError:
            return False

    # ==== guest -> us =======================================================
    def input(self, fam: IPv4, frame: memoryview, p: Packet, csum_ok: bool) -> None:
        c = self.c
        l4 = p.l4_off
        end = p.l4_end
        l4len = end - l4
        if l4len < 20:
            c.drop("tcp_truncated")
            return
        sport, dport, seq, ack, offfl, wnd, _csum, _urg = TCP.unpack_from(frame, l4)
        doff = (offfl >> 12) << 2
        if doff < 20 or doff > l4len:
            c.drop("tcp_bad_doff")
            return
        if not csum_ok:
            if (big_sum(frame[l4:end]) + fam.pseudo(p.src, p.dst, IPPROTO_TCP) + l4len) % 0xFFFF:
                c.drop("tcp_bad_checksum")
                return
        flags = offfl & 0x3F
        key = (p.src, sport, p.dst, dport)
        flow = self.flows.get(key)
        c["tcp.frames_in"] += 1
        if flow is None:
            if flags & TCP_RST:
                return
            if flags & TCP_SYN and not flags & TCP_ACK:
                self._open(fam, frame, p, key, sport, dport, seq, l4 + 20, l4 + doff, wnd)
            else:
                plen = l4len - doff + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
                if flags & TCP_ACK:
                    self._rst_raw(fam, p.dst, dport, p.src, sport, ack, 0, TCP_RST)
                else:
                    self._rst_raw(fam, p.dst, dport, p.src, sport, 0, (seq + plen) & MASK, TCP_RST | TCP_ACK)
                c["tcp.rst_no_flow"] += 1
            return
        flow.last = self.e.now
        if flags & TCP_RST:
            c["tcp.rst_from_guest"] += 1
            self._close(flow, reset_host=True)
            return
        state = flow.state
        if state != ESTABLISHED:
            if state == CONNECTING:
                return  # a retransmitted SYN while the host connect() runs
            if state == SOCK_ACCEPTED:
                self._guest_synack(flow, frame, l4, doff, flags, seq, ack, wnd)
                return
            if flags & TCP_SYN:
                self._send_synack(flow)
                return
            if not flags & TCP_ACK or ack != flow.seq_to_tap:
                return
            flow.state = ESTABLISHED
            flow.seq_ack_from_tap = ack
            flow.wnd_from_tap = min(wnd << flow.ws_from_tap, MAX_WINDOW)
            flow.readable = True
            self.more.add(flow)
        elif flags & TCP_SYN:
            flow.force_ack = True
            self.ack_due.add(flow)
            return
        if flags & TCP_ACK:
            self._ack_from_tap(flow, ack, wnd, l4len == doff)
            if flow.sock is None:
                return
        if l4len > doff or flags & TCP_FIN:
            self._data_from_tap(flow, frame, l4 + doff, end, seq, flags & TCP_FIN)

    def _ack_from_tap(self, flow: TcpFlow, ack: int, wnd: int, pure: bool) -> None:
        new_wnd = wnd << flow.ws_from_tap
        if new_wnd > MAX_WINDOW:
            new_wnd = MAX_WINDOW
        base = flow.seq_ack_from_tap
        acked = (ack - base) & MASK
        sent = (flow.seq_max - base) & MASK
        if acked and acked <= sent:
            data = acked
            if flow.fin_seq >= 0 and ack == (flow.fin_seq + 1) & MASK:
                data -= 1  # our FIN (possibly sent before a rewind) is acknowledged
                flow.fin_acked = flow.fin_to_tap = True
            if data:  # discarded once per batch of guest frames (end_of_batch)
                flow.undiscarded += data
                self.discard_due.add(flow)
            flow.seq_ack_from_tap = ack
            if (flow.seq_to_tap - ack) & MASK >= HALF:
                flow.seq_to_tap = ack
            flow.dup_acks = 0
            flow.retries = 0
            flow.rto_at = (self.e.now + self.e.settings.tcp_rto) if ack != flow.seq_max else 0.0
        elif not acked and pure and sent and new_wnd == flow.wnd_from_tap:
            flow.dup_acks += 1
            if flow.dup_acks == 3:
                self.c["tcp.fast_retransmits"] += 1
                flow.wnd_from_tap = new_wnd
                self._rewind(flow)
                return
        opened = new_wnd > flow.wnd_from_tap
        flow.wnd_from_tap = new_wnd
        if flow.fin_acked and flow.fin_from_tap:
            self._close(flow)
            return
        if flow.readable and (acked or opened):
            self.more.add(flow)

    def _discard_acked(self, flow: TcpFlow) -> None:
        n = flow.undiscarded
        flow.undiscarded = 0
        if n and flow.sock is not None:
            self._discard_bytes(flow, n)

    def _discard_bytes(self, flow: TcpFlow, n: int) -> None:
        view = self._discard_view
        while n > 0:
            try:
                k = flow.sock.recv_into(view, min(n, len(view)), MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if k <= 0:
                return
            n -= k

    def _data_from_tap(self, flow: TcpFlow, frame: memoryview, off: int, end: int, seq: int, fin: int,
                       from_ooo: bool = False) -> None:
        self.ack_due.add(flow)
        if flow.fin_from_tap:
            flow.force_ack = True
            return
        exp = (flow.seq_from_tap + flow.pend_len) & MASK
        plen = end - off
        behind = (exp - seq) & MASK
        if behind:
            if behind >= HALF:  # a gap: something before this segment is missing
                self.c["tcp.out_of_order"] += 1
                self._keep_ooo(flow, frame, off, end, seq, fin)
                self._send_ctl(flow, TCP_ACK)  # an immediate duplicate ACK per segment (RFC 5681)
                return
            if behind >= plen:
                if not (fin and behind == plen):
                    flow.force_ack = True  # old data or a keepalive probe
                    if flow.sack_ok and plen > 1 and not from_ooo:
                        # a duplicate (often the guest's tail-loss probe): D-SACK tells the guest nothing was
                        # lost, else it reduces its congestion window as if the probe had repaired a loss
                        flow.dsack = (seq, (seq + plen) & MASK)
                    if behind == 1 and plen <= 1 and not flow.keepalive:
                        flow.keepalive = True  # the guest keeps it alive: let the host side probe too
                        try:
                            flow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                        except OSError:
                            pass
                    return
                plen = 0
            else:
                if flow.sack_ok and not from_ooo:
                    flow.dsack = (seq, exp)  # partly a duplicate
                off += behind
                plen -= behind
        if plen:
            # gathered per batch and written with one sendmsg() in end_of_batch()
            flow.pend.append(frame[off:end])
            flow.pend_len += plen
            if flow.ooo and not fin and not from_ooo:
                self._drain_ooo(flow)
                return
        if fin and not self._flush(flow):
            if flow.sock is not None:  # the host socket is full: the FIN waits behind the kept rest
                self._keep_ooo(flow, memoryview(b""), 0, 0, (exp + plen) & MASK, fin, force=True)
            return
        if fin:
            try:
                flow.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            flow.seq_from_tap = (flow.seq_from_tap + 1) & MASK
            flow.fin_from_tap = True
            flow.closing_since = self.e.now
            self._drop_ooo(flow)
            if flow.fin_acked:
                self._send_ctl(flow, TCP_ACK)
                self._close(flow)
                self.ack_due.discard(flow)

    def _keep_ooo(self, flow: TcpFlow, frame: memoryview, off: int, end: int, seq: int, fin: int,
                  force: bool = False) -> bool:
        """Keep a copy of a segment that lies beyond a gap (within the window and the memory bounds).

        ``force``: data that was kept (and SACKed) before and came back unwritten from a short
        ``sendmsg()``; it is within the bounds it was counted against then and must not be dropped.
        Returns whether the segment is kept.
        """
        plen = end - off
        ahead = (seq - flow.seq_from_tap) & MASK
        if not plen and not fin:
            return False
        # not the window advertised now: it shrinks as the host socket fills, after the guest sent into it
        if not force and (ahead + plen > MAX_WINDOW or flow.ooo_len + plen > OOO_FLOW_MAX
                          or self.ooo_total + plen > OOO_TOTAL_MAX):
            self.c["tcp.out_of_order_dropped"] += 1
            return False
        ooo = flow.ooo
        if ooo is None:
            ooo = flow.ooo = {}
        old = ooo.get(seq)
        if old is not None:
            if len(old[0]) >= plen and old[1] >= fin:
                if flow.sack_ok and not force and plen:
                    flow.dsack = (seq, (seq + plen) & MASK)  # a duplicate of a kept segment
                return True
            flow.ooo_len -= len(old[0])
            self.ooo_total -= len(old[0])
        view = frame[off:end]
        obj = view.obj
        # a kept segment coming back whole from a short sendmsg() is not copied again
        ooo[seq] = (obj if type(obj) is Kept and len(obj) == plen else Kept(view), fin)
        flow.ooo_len += plen
        self.ooo_total += plen
        flow.ooo_recent = seq
        self.c["tcp.out_of_order_kept"] += 1
        return True

    def _drain_ooo(self, flow: TcpFlow) -> None:
        """Feed kept segments that the data received so far has reached, in sequence order."""
        ooo = flow.ooo
        base = flow.seq_from_tap
        for s in sorted(ooo, key=lambda s: (s - base) & MASK if (s - base) & MASK < HALF else -1):
            if flow.sock is None or flow.fin_from_tap or flow.ooo is not ooo:
                return
            exp = (flow.seq_from_tap + flow.pend_len) & MASK
            if (s - exp) & MASK < HALF and s != exp:
                return  # another gap
            entry = ooo.pop(s, None)
            if entry is None:
                continue
            data, fin = entry
            flow.ooo_len -= len(data)
            self.ooo_total -= len(data)
            self._data_from_tap(flow, memoryview(data), 0, len(data), s, fin, from_ooo=True)

    def _drop_ooo(self, flow: TcpFlow) -> None:
        if flow.ooo:
            self.ooo_total -= flow.ooo_len
        flow.ooo = None
        flow.ooo_len = 0

    def _flush(self, flow: TcpFlow) -> bool:
        """Write the guest data gathered for ``flow``; True if the host socket took all of it."""
        pend = flow.pend
        if not pend:
            return True
        total = flow.pend_len
        try:
            k = flow.sock.sendmsg(pend) if len(pend) > 1 else flow.sock.send(pend[0])
        except (BlockingIOError, InterruptedError):
            k = 0
        except OSError:
            pend.clear()
            flow.pend_len = 0
            self.c["tcp.host_send_error"] += 1
            self._reset(flow)
            return False
        seq = flow.seq_from_tap
        flow.pend_len = 0
        flow.seq_from_tap = (seq + k) & MASK
        self.c["tcp.bytes_to_host"] += k
        if k < total:
            self.c["tcp.host_short_send"] += 1
            self._keep_unsent(flow, pend, seq, k)
            pend.clear()
            flow.force_ack = True
            flow.wnd_wait = True
            return False
        pend.clear()
        return True

    def _keep_unsent(self, flow: TcpFlow, pend: list[memoryview], seq: int, sent: int) -> None:
        """Keep what a short ``sendmsg()`` left over, for EPOLLOUT: the guest need not retransmit it.

        Data that was kept before (and possibly SACKed) is always kept again; fresh data from the guest's
        frames only within the out-of-order bounds (else the guest retransmits it, as it did before any
        was kept).
        """
        skip = sent
        for view in pend:
            n = len(view)
            if skip >= n:
                skip -= n
                seq = (seq + n) & MASK
                continue
            part = view[skip:] if skip else view
            seq = (seq + skip) & MASK
            skip = 0
            if self._keep_ooo(flow, part, 0, len(part), seq, 0, force=type(view.obj) is Kept):
                self.c["tcp.unsent_kept"] += len(part)
            seq = (seq + len(part)) & MASK

    def _write_kept(self, flow: TcpFlow) -> None:
        """The host socket has room again: write kept data that continues the stream (and a FIN behind it)."""
        ooo = flow.ooo
        if not ooo or flow.seq_from_tap not in ooo or flow.sock is None or flow.fin_from_tap:
            return
        self._drain_ooo(flow)
        if flow.sock is not None and flow.pend:
            self._flush(flow)

    def end_of_batch(self) -> None:
        """Drop acknowledged host data, write gathered guest data, send one ACK per flow."""
        if self.discard_due:
            for flow in self.discard_due:
                self._discard_acked(flow)
            self.discard_due.clear()
        for flow in self.ack_due:
            if flow.pend:
                self._flush(flow)
            if flow.sock is None or flow.state != ESTABLISHED:
                continue
            old = flow.wnd_to_tap
            self._update_window(flow)
            if flow.force_ack or flow.seq_ack_to_tap != flow.seq_from_tap or flow.wnd_to_tap > old:
                self._send_ctl(flow, TCP_ACK)
                flow.force_ack = False
        self.ack_due.clear()

    def _update_window(self, flow: TcpFlow) -> None:
        """Advertise what the host socket can take now (free send-buffer space)."""
        sock = flow.sock
        try:
            sndbuf = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            buf = self._ioctl_buf
            fcntl.ioctl(flow.fd, SIOCOUTQ, buf)
            outq = _I.unpack(buf)[0]
        except OSError:
            return
        free = (sndbuf * 3 >> 2) - outq
        if free < flow.mss:
            if free < 0:
                free = 0
            if not flow.wnd_wait:
                flow.wnd_wait = True
                try:  # re-arm: tcp_poll marks the socket SOCK_NOSPACE, so EPOLLOUT comes when space frees
                    self.e.ep.modify(flow.fd, SOCK_EVENTS)
                except OSError:
                    pass
        elif free > MAX_WINDOW:
            free = MAX_WINDOW
        flow.wnd_to_tap = free

    # ==== host socket -> guest ===============================================
    def _sock_event(self, flow: TcpFlow, ev: int) -> None:
        if flow.sock is None:
            return
        if flow.state == CONNECTING:
            if ev & (EPOLLOUT | EPOLLERR | EPOLLHUP):
                err = flow.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.c["tcp.connect_failed"] += 1
                    self._send_ctl(flow, TCP_RST | TCP_ACK, seq=0)
                    self._close(flow)
                else:
                    self.c["tcp.connected"] += 1
                    flow.seq_to_tap = flow.seq_max = (flow.seq_to_tap + 1) & MASK
                    flow.seq_ack_from_tap = flow.seq_to_tap
                    flow.state = SYN_ACK_SENT
                    self._send_synack(flow)
            return
        if ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            flow.readable = True
            if ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
                flow.eof = True  # no further edge will come: keep reading until recv says so
            if flow.state == ESTABLISHED:
                self._sock_to_tap(flow)
        if ev & EPOLLOUT and flow.wnd_wait and flow.sock is not None and flow.state == ESTABLISHED:
            flow.wnd_wait = False
            self._write_kept(flow)
            if flow.sock is None:
                return
            old = flow.wnd_to_tap
            self._update_window(flow)
            if flow.wnd_to_tap > old or flow.seq_ack_to_tap != flow.seq_from_tap:
                self._send_ctl(flow, TCP_ACK)

    def resume(self) -> None:
        """Continue flows that had more to read than one turn allowed."""
        flows = list(self.more)
        self.more.clear()
        for flow in flows:
            if flow.sock is not None and flow.state == ESTABLISHED:
                self._sock_to_tap(flow)

    def _sock_to_tap(self, flow: TcpFlow) -> None:
        e = self.e
        if e.link_full():
            self.more.add(flow)
            return
        if flow.fin_to_tap:
            return
        in_flight = (flow.seq_to_tap - flow.seq_ack_from_tap) & MASK
        avail = flow.wnd_from_tap - in_flight
        if avail <= 0:
            return
        seg = self.seg_max if e.offload else min(flow.mss, self.seg_max)
        budget = avail if avail < TURN_BYTES else TURN_BYTES
        views = self._payload_views[flow.fam.l3_len]
        iov = []
        left = budget
        for view in views:
            if left <= 0:
                break
            if left >= seg:
                iov.append(view[:seg])
                left -= seg
            else:
                iov.append(view[:left])
                left = 0
        wanted = budget - left
        skip = 0
        if not self.peek_off and (in_flight or flow.undiscarded):
            skip = in_flight + flow.undiscarded
            iov.insert(0, self._discard_view[:skip])
        try:
            total = flow.sock.recvmsg_into(iov, 0, MSG_PEEK)[0]
        except (BlockingIOError, InterruptedError):
            flow.readable = False
            return
        except OSError:
            self.c["tcp.host_recv_error"] += 1
            self._reset(flow)
            return
        n = total - skip
        if n <= 0:
            if total and n == 0:
                flow.readable = False  # nothing new beyond what the guest has not acknowledged
            else:
                # end of stream after everything we sent: our FIN
                flow.readable = False
                flow.fin_to_tap = True
                flow.fin_seq = flow.seq_to_tap
                self._send_ctl(flow, TCP_FIN | TCP_ACK)
                flow.seq_to_tap = (flow.seq_to_tap + 1) & MASK
                if (flow.seq_to_tap - flow.seq_max) & MASK < HALF:
                    flow.seq_max = flow.seq_to_tap
                if not flow.closing_since:
                    flow.closing_since = e.now
                if not flow.rto_at:
                    flow.rto_at = e.now + e.settings.tcp_rto
            return
        self._update_window(flow)
        seq = self._emit_data(flow, n, seg)
        flow.seq_to_tap = seq
        if (seq - flow.seq_max) & MASK < HALF:
            flow.seq_max = seq
        flow.seq_ack_to_tap = flow.seq_from_tap
        flow.force_ack = False
        self.c["tcp.bytes_to_guest"] += n
        if not flow.rto_at:
            flow.rto_at = e.now + e.settings.tcp_rto
        if n >= wanted and n < avail:
            self.more.add(flow)
        elif n < wanted:
            if flow.eof:
                self.more.add(flow)  # the FIN (or error) is next; no new edge will announce it
            else:
                flow.readable = False  # drained: wait for the next EPOLLIN edge

    def _emit_data(self, flow: TcpFlow, n: int, seg: int) -> int:
        """Turn the ``n`` bytes peeked into the slots into frames for the guest; returns the next seq.

        The hot loop of host->guest traffic: per frame, one slice copy of the
        flow's header template, the family's length/checksum fix-up, one TCP
        header pack, the L4 checksum (or the virtio-net header that offloads
        it and the segmentation), one write.
        """
        e = self.e
        fam = flow.fam
        tmpl = flow.tmpl
        if tmpl is None:
            tmpl = flow.tmpl = fam.template(e.guest_mac, _HOST_MAC, flow.raddr, flow.gaddr, IPPROTO_TCP)
        hdr, hdr_sum = tmpl
        l4 = HEADROOM + len(hdr)
        set_length = fam.set_length
        tcp_pack = TCP.pack_into
        h_pack = _H.pack_into
        slots = self._slots
        views = self._slot_views
        rport, gport, ack = flow.rport, flow.gport, flow.seq_from_tap
        wnd = flow.wnd_to_tap >> flow.ws_to_tap
        if wnd > 0xFFFF:
            wnd = 0xFFFF
        pseudo = flow.pseudo
        offload = e.offload
        vnet = e.vnet
        mss = flow.mss
        send = e.link.send_frame
        pcap = e.pcap
        seq = flow.seq_to_tap
        left = n
        i = 0
        while left > 0:
            size = seg if left > seg else left
            left -= size
            buf = slots[i]
            view = views[i]
            i += 1
            l4len = 20 + size
            end = l4 + l4len
            buf[HEADROOM:l4] = hdr
            set_length(buf, HEADROOM, hdr_sum, l4len)
            tcp_pack(buf, l4, rport, gport, seq, ack, 0x5010 if left else 0x5018, wnd, 0, 0)
            if offload:
                total = (pseudo + l4len) % 0xFFFF
                h_pack(buf, l4 + 16, total or 0xFFFF)
                if size > mss:
                    VNET.pack_into(buf, 0, VNET_F_NEEDS_CSUM, fam.gso_tcp, l4 - HEADROOM + 20, mss, l4 - HEADROOM, 16)
                else:
                    VNET.pack_into(buf, 0, VNET_F_NEEDS_CSUM, 0, 0, 0, l4 - HEADROOM, 16)
            else:
                total = (big_sum(view[l4:end]) + pseudo + l4len) % 0xFFFF
                h_pack(buf, l4 + 16, 0xFFFF - total if total else 0)
                if vnet:
                    buf[0:HEADROOM] = VNET_HDR_NONE
            if pcap is not None:
                pcap.write(view[HEADROOM:end])
            send(view[:end] if vnet else view[HEADROOM:end])
            seq = (seq + size) & MASK
        self.c["tcp.frames_out"] += i
        return seq

    # ==== control segments ====================================================
    def _send_ctl(self, flow: TcpFlow, flags: int, seq: int | None = None, opts: bytes = b"") -> None:
        """Send a segment without payload (ACK, FIN, RST, SYN-ACK) for ``flow``."""
        if flags & TCP_ACK and not flags & TCP_RST:
            flow.seq_ack_to_tap = flow.seq_from_tap
            if flow.sack_ok and (flow.ooo or flow.dsack) and not flags & TCP_SYN:
                opts = sack_option(flow.ooo or {}, flow.seq_from_tap, flow.ooo_recent, flow.dsack)
                flow.dsack = None
                if opts:
                    self.c["tcp.sack_acks"] += 1
        self._ctl_segment(flow.fam, flow.raddr, flow.rport, flow.gaddr, flow.gport,
                          flow.seq_to_tap if seq is None else seq, flow.seq_from_tap, flags,
                          0 if flags & TCP_RST else min(flow.wnd_to_tap >> (0 if flags & TCP_SYN else flow.ws_to_tap),
                                                        0xFFFF), opts)

    def _rst_raw(self, fam: IPv4, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int,
                 flags: int) -> None:
        self._ctl_segment(fam, src, sport, dst, dport, seq, ack, flags, 0, b"")

    def _ctl_segment(self, fam: IPv4, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int,
                     flags: int, wnd: int, opts: bytes) -> None:
        e = self.e
        buf = self._ctl
        view = self._ctl_view
        l4len = 20 + len(opts)
        l4 = fam.write_headers(buf, HEADROOM, e.guest_mac, _HOST_MAC, src, dst, IPPROTO_TCP, l4len)
        TCP.pack_into(buf, l4, sport, dport, seq, ack, ((5 + len(opts) // 4) << 12) | flags, wnd, 0, 0)
        if opts:
            buf[l4 + 20:l4 + l4len] = opts
        end = l4 + l4len
        _H.pack_into(buf, l4 + 16, checksum(view[l4:end], fam.pseudo(src, dst, IPPROTO_TCP) + l4len))
        if e.vnet:
            VNET.pack_into(buf, 0, 0, 0, 0, 0, 0, 0)
        e.out_view(view, end)
        self.c["tcp.ctl_out"] += 1

    def _send_synack(self, flow: TcpFlow) -> None:
        isn = (flow.seq_to_tap - 1) & MASK
        self._update_window(flow)
        if flow.wnd_to_tap < 65535:
            flow.wnd_to_tap = 65535 if flow.ws_to_tap else flow.wnd_to_tap
        mss = min(self._mss[flow.fam.l3_len], 65495)
        opts = _SYN_OPTS.pack(2, 4, mss, 1, 3, 3, flow.ws_to_tap) if flow.ws_to_tap \
            else _SYN_OPTS.pack(2, 4, mss, 1, 1, 1, 1)
        if flow.sack_ok:
            opts += SACK_PERMITTED
        self._send_ctl(flow, TCP_SYN | TCP_ACK, seq=isn, opts=opts)
        flow.rto_at = self.e.now + SYN_RTO * (1 << flow.retries)

    def _send_syn(self, flow: TcpFlow) -> None:
        """SYN to the guest for a connection accepted on a forwarded port (window scale always offered)."""
        isn = (flow.seq_to_tap - 1) & MASK
        opts = _SYN_OPTS.pack(2, 4, min(self._mss[flow.fam.l3_len], 65495), 1, 3, 3, WS_TO_TAP) + SACK_PERMITTED
        flow.wnd_to_tap = 65535
        self._ctl_segment(flow.fam, flow.raddr, flow.rport, flow.gaddr, flow.gport, isn, 0, TCP_SYN, 65535, opts)
        flow.rto_at = self.e.now + SYN_RTO * (1 << flow.retries)

    def _guest_synack(self, flow: TcpFlow, frame: memoryview, l4: int, doff: int, flags: int, seq: int, ack: int,
                      wnd: int) -> None:
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK or ack != flow.seq_to_tap:
            return
        mss, ws, flow.sack_ok = parse_syn_options(frame, l4 + 20, l4 + doff)
        flow.mss = max(min(mss, self._mss[flow.fam.l3_len]), 64)
        if ws >= 0:
            flow.ws_from_tap = ws
            flow.ws_to_tap = WS_TO_TAP
        else:
            flow.ws_to_tap = 0
        flow.seq_from_tap = flow.seq_ack_to_tap = (seq + 1) & MASK
        flow.seq_ack_from_tap = ack
        flow.wnd_from_tap = wnd  # a SYN's window is never scaled
        flow.state = ESTABLISHED
        flow.retries = 0
        flow.rto_at = 0.0
        self._update_window(flow)
        self._send_ctl(flow, TCP_ACK)
        flow.readable = True
        self.more.add(flow)
        self.c["tcp.inbound_established"] += 1

    def _tune_host_socket(self, sock: socket.socket) -> None:
        """Options every host TCP socket gets: no Nagle, the configured send buffer, a peek offset."""
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.e.settings.tcp_sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.e.settings.tcp_sndbuf)
            if self.peek_off:
                sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
        except OSError:
            pass

    def accept_inbound(self, fam: IPv4, sock: socket.socket, peer: tuple[str, int], guest_port: int) -> None:
        """A host connection accepted on a forwarded port becomes a guest-bound SYN."""
        e = self.e
        raddr = fam.pack(peer[0])
        if fam.is_host_loopback(raddr):
            raddr = fam.gateway  # host loopback appears as the gateway, as for outbound flows
        rport = peer[1]
        gaddr = fam.inbound_guest()
        key = (gaddr, guest_port, raddr, rport)
        if key in self.flows:
            sock.close()
            return
        sock.setblocking(False)
        self._tune_host_socket(sock)
        flow = TcpFlow(key, fam, sock, gaddr, guest_port, raddr, rport, e.now)
        flow.state = SOCK_ACCEPTED
        isn = self._rand.getrandbits(32)
        flow.seq_to_tap = flow.seq_max = flow.seq_ack_from_tap = (isn + 1) & MASK
        self.flows[key] = flow
        self.c["tcp.flows"] += 1
        self.c["tcp.inbound"] += 1
        e.register(flow.fd, SOCK_EVENTS, lambda ev, f=flow: self._sock_event(f, ev))
        e.arp.resolve_guest()
        self._send_syn(flow)

    def _retarget(self, flow: TcpFlow) -> None:
        """Before a SYN retransmission: follow the guest to the address it has now (IPv6: SLAAC/DHCPv6
        may finish after the host connected)."""
        gaddr = flow.fam.inbound_guest()
        key = (gaddr, flow.gport, flow.raddr, flow.rport)
        if gaddr == flow.gaddr or key in self.flows:
            return
        self.flows.pop(flow.key, None)
        flow.key = key
        flow.gaddr = gaddr
        flow.pseudo = flow.fam.pseudo(flow.raddr, gaddr, IPPROTO_TCP)
        flow.tmpl = None
        self.flows[key] = flow
        self.c["tcp.inbound_retargeted"] += 1

    # ==== flow setup and teardown ==============================================
    def _open(self, fam: IPv4, frame: memoryview, p: Packet, key: tuple, sport: int, dport: int, seq: int,
              opt_start: int, opt_end: int, wnd: int) -> None:
        e = self.e
        c = self.c
        target = e.translator(fam.version).target(p.dst, dport)
        if target.refused or not fam.is_unicast(p.dst):
            c.drop("tcp_" + (target.refused or "not_unicast"))
            self._rst_raw(fam, p.dst, dport, p.src, sport, 0, (seq + 1) & MASK, TCP_RST | TCP_ACK)
            return
        mss, ws, sack = parse_syn_options(frame, opt_start, opt_end)
        try:
            sock = socket.socket(target.af, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        except OSError as exc:
            c.drop("tcp_socket_failed")
            self.e.log_once("socket", f"cannot create a TCP socket: {exc}")
            self._rst_raw(fam, p.dst, dport, p.src, sport, 0, (seq + 1) & MASK, TCP_RST | TCP_ACK)
            return
        self._tune_host_socket(sock)
        err = sock.connect_ex((target.host, target.port))
        flow = TcpFlow(key, fam, sock, p.src, sport, p.dst, dport, e.now)
        flow.seq_from_tap = flow.seq_ack_to_tap = (seq + 1) & MASK
        flow.seq_to_tap = flow.seq_max = flow.seq_ack_from_tap = self._rand.getrandbits(32)
        flow.mss = max(min(mss, self._mss[flow.fam.l3_len]), 64)
        flow.sack_ok = sack
        if ws >= 0:
            flow.ws_from_tap = ws
            flow.ws_to_tap = WS_TO_TAP
        flow.wnd_from_tap = wnd  # unscaled in a SYN
        if err not in (0, errno.EINPROGRESS):
            c["tcp.connect_failed"] += 1
            self._send_ctl(flow, TCP_RST | TCP_ACK, seq=0)
            sock.close()
            return
        self.flows[key] = flow
        c["tcp.flows"] += 1
        e.register(flow.fd, SOCK_EVENTS, lambda ev, f=flow: self._sock_event(f, ev))

    def _reset(self, flow: TcpFlow) -> None:
        """The host side failed: RST to the guest, close."""
        if flow.sock is None:
            return
        self._send_ctl(flow, TCP_RST | TCP_ACK)
        self.c["tcp.rst_to_guest"] += 1
        self._close(flow, reset_host=True)

    def _close(self, flow: TcpFlow, reset_host: bool = False) -> None:
        sock = flow.sock
        if sock is None:
            return
        self.e.unregister(flow.fd)
        if reset_host:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
            except OSError:
                pass
        sock.close()
        flow.sock = None
        flow.pend.clear()
        flow.pend_len = 0
        self._drop_ooo(flow)
        self.flows.pop(flow.key, None)
        self.more.discard(flow)
        self.discard_due.discard(flow)
        self.c["tcp.closed"] += 1

    def _rewind(self, flow: TcpFlow) -> None:
        """Retransmit from the oldest unacknowledged byte: the data is still in the host socket."""
        self._discard_acked(flow)  # the peek offset 0 must be seq_ack_from_tap
        flow.seq_to_tap = flow.seq_ack_from_tap
        flow.dup_acks = 0
        if flow.fin_to_tap and not flow.fin_acked:
            flow.fin_to_tap = False
        if self.peek_off:
            try:
                flow.sock.setsockopt(socket.SOL_SOCKET, SO_PEEK_OFF, 0)
            except OSError:
                pass
        flow.readable = True
        self.c["tcp.retransmits"] += 1
        self._sock_to_tap(flow)

    def tick(self, now: float) -> None:
        """Retransmission and dead-flow timeouts."""
        st = self.e.settings
        for flow in list(self.flows.values()):
            if flow.sock is None:
                continue
            state = flow.state
            if state == CONNECTING:
                if now - flow.created > st.tcp_syn_timeout:
                    self.c["tcp.connect_timeout"] += 1
                    self._send_ctl(flow, TCP_RST | TCP_ACK, seq=0)
                    self._close(flow)
                continue
            if state == SOCK_ACCEPTED:
                if now >= flow.rto_at:
                    flow.retries += 1
                    if flow.retries > SYN_RETRIES:
                        self.c["tcp.syn_timeout"] += 1
                        self._close(flow, reset_host=True)
                    else:
                        self._retarget(flow)
                        self._send_syn(flow)
                continue
            if state == SYN_ACK_SENT:
                if now >= flow.rto_at:
                    flow.retries += 1
                    if flow.retries > SYN_RETRIES:
                        self.c["tcp.synack_timeout"] += 1
                        self._reset(flow)
                    else:
                        self._send_synack(flow)
                continue
            if flow.ooo and not flow.wnd_wait and flow.seq_from_tap in flow.ooo:
                self._write_kept(flow)  # kept after a short sendmsg(), and no EPOLLOUT is pending
                if flow.sock is None:
                    continue
                if flow.seq_ack_to_tap != flow.seq_from_tap:
                    self._update_window(flow)
                    self._send_ctl(flow, TCP_ACK)
            if flow.closing_since and now - max(flow.last, flow.closing_since) > st.tcp_fin_timeout:
                self.c["tcp.fin_timeout"] += 1
                self._reset(flow)
                continue
            if flow.rto_at and now >= flow.rto_at:
                if flow.seq_max == flow.seq_ack_from_tap:
                    flow.rto_at = 0.0
                    continue
                flow.retries += 1
                if flow.retries > 8:
                    self.c["tcp.retransmit_timeout"] += 1
                    self._reset(flow)
                    continue
                flow.rto_at = now + st.tcp_rto * (1 << flow.retries)
                self._rewind(flow)

    def close_all(self) -> None:
        for flow in list(self.flows.values()):
            self._close(flow, reset_host=True)
        self._discard_view.release()
        self._discard.close()


from .wire import HOST_MAC as _HOST_MAC  # noqa: E402

"""Copy frames between a guest link and passt's end of a socketpair.

Used for tap links (passt only speaks the qemu stream protocol) and, for old
passt builds, for stream links too (to repair their defects, see
:mod:`kboxnet_passt.fixups`). One epoll loop, batched both ways: up to 256
frames are taken from the link at a time; one ``recv_into`` from passt yields
every complete frame in an 8 MiB buffer.

**Frames reach passt's socket whole.** Old passt (bookworm's 2023_03_09;
every build without ``--map-host-loopback`` is treated alike) reads its socket in big non-blocking reads and completes a frame
cut at the end of a read with *one* blocking ``recv()``: if that returns less
than the rest of the frame, the frame and every frame of that read are
dropped, and if a read ends inside a 4-byte length word those bytes are lost.
Either way its stream is out of step from then on (it takes frame bytes for
lengths, may block in ``recv()`` for bytes that never come, and every flow
stalls). The data of one AF_UNIX stream ``sendmsg`` is queued for the reader
in skbs of up to about 36 KiB each, and the reader may read between two of
them; a write of at most 32 KiB is one skb. So the relay

* writes frames in groups of at most :data:`ATOMIC_WRITE` bytes, one
  ``sendmsg`` per group, each starting and ending on a frame boundary: every
  group arrives in passt's queue in one piece;
* keeps the bytes queued towards passt (its own send buffer) far below the
  size of passt's read, so a read never stops inside a group;
* counts frames too big for one group (``relay_frames_oversize``): they may
  arrive in pieces, which is why the backend caps the MTU it offers to such a
  passt (see :mod:`kboxnet_passt.quirks`).

Frame boundaries are kept on stop: the link only ever gets whole frames
(``send_frame``), and frames from the link are taken whole, so the next
backend can take over the link at once. Bytes queued for passt when it dies
are dropped (the guest retransmits).
"""

from __future__ import annotations

import collections
import errno
import os
import select
import socket
import struct

from kboxnet_core.links.base import ETH_MAX, ETH_MIN, Link
from kboxnet_core.links.stream import enlarge_socket_buffers

from .fixups import Fixups

_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)

_LEN = struct.Struct(">I")
RECV_BUFFER = 8 * 1024 * 1024
BATCH = 256
#: bytes per ``sendmsg`` towards passt. An AF_UNIX stream ``sendmsg`` is queued to the reader in
#: skbs of up to ``SKB_MAX_HEAD(0) + 32 KiB`` (``unix_stream_sendmsg``), so a write of at most
#: 32 KiB is one skb: the reader sees all of it or none of it.
ATOMIC_WRITE = 32 * 1024
#: the largest frame that still fits one atomic write (with its length word)
ATOMIC_FRAME = ATOMIC_WRITE - _LEN.size
#: send buffer of our end, i.e. the most bytes queued for passt. The kernel doubles it (4 MiB),
#: which stays below passt 2023's read size (8 MiB - 64 KiB), so its reads end on our writes.
TO_PASST_SNDBUF = 2 * 1024 * 1024
#: batches per readiness event and direction (fairness between the two directions)
ROUNDS = 16


class PasstClosed(Exception):
    """passt closed its end of the socketpair (it exited or crashed)."""


class Relay:
    """The relay loop; :meth:`run` returns when ``stop_fd`` is readable.

    Raises :class:`PasstClosed` when passt goes away and
    :class:`~kboxnet_core.links.base.LinkClosed` when the guest does.

    :cvar max_write: bytes per write towards passt (:data:`ATOMIC_WRITE`; the
        benchmark's naive reference relay raises it to write each batch at once).
    """

    max_write = ATOMIC_WRITE

    def __init__(self, link: Link, sock: socket.socket, fixups: Fixups | None = None) -> None:
        self.link = link
        self.sock = sock
        self.fixups = fixups
        sock.setblocking(False)
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        #: whole groups (or the tail of one) waiting for room in passt's socket, in order
        self._pending: collections.deque[bytes] = collections.deque()
        self.frames_to_passt = 0
        self.frames_to_guest = 0
        self.bytes_to_passt = 0
        self.bytes_to_guest = 0
        #: frames bigger than one atomic write, written anyway (an old passt may drop them)
        self.frames_oversize = 0
        #: writes that found passt's socket full (the rest waits for EPOLLOUT)
        self.writes_deferred = 0
        #: writes that went out in part (the socket had room for less than one group)
        self.writes_split = 0

    # -- guest -> passt -------------------------------------------------------------
    def _from_link(self) -> None:
        link, fixups, max_write = self.link, self.fixups, self.max_write
        for _ in range(ROUNDS):
            if self._pending:
                return
            frames = link.recv_frames(BATCH)
            if not frames:
                return
            groups: list[tuple[list[bytes | memoryview], int]] = []
            parts: list[bytes | memoryview] = []
            total = 0
            count = 0
            for frame in frames:
                if fixups is not None:
                    reply = fixups.from_guest(frame)
                    if reply is not None:
                        link.send_frame(reply)
                        continue
                n = len(frame)
                if total and total + 4 + n > max_write:
                    groups.append((parts, total))
                    parts, total = [], 0
                if n > ATOMIC_FRAME:
                    self.frames_oversize += 1
                parts.append(_LEN.pack(n))
                parts.append(frame)
                total += 4 + n
                count += 1
            if parts:
                groups.append((parts, total))
            self.frames_to_passt += count
            self.bytes_to_passt += sum(size for _, size in groups) - 4 * count
            if fixups is not None:
                if fixups.inject:
                    link.send_frames(fixups.inject)
                    fixups.inject.clear()
                link.flush()
            self._send_groups(groups)

    def _send(self, data: bytes | memoryview | list[bytes | memoryview]) -> int:
        """One write towards passt; the byte count written (0 when the socket is full)."""
        try:
            if isinstance(data, list):
                return self.sock.sendmsg(data)
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            self.writes_deferred += 1
            return 0
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise PasstClosed(str(exc)) from exc
            raise

    def _send_groups(self, groups: list[tuple[list[bytes | memoryview], int]]) -> None:
        for i, (parts, size) in enumerate(groups):
            sent = self._send(parts)
            if sent == size:
                continue
            # keep the unsent groups as bytes (the frame views die with the next recv_frames)
            if sent:
                self.writes_split += 1
            self._pending.append(b"".join(parts)[sent:])
            self._pending.extend(b"".join(rest) for rest, _ in groups[i + 1 :])
            return

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending:
            data = pending[0]
            sent = self._send(data)
            if sent < len(data):
                if sent:
                    self.writes_split += 1
                    pending[0] = data[sent:]
                return
            pending.popleft()

    # -- passt -> guest -------------------------------------------------------------
    def _from_passt(self) -> None:
        buf, view, link, fixups = self._buf, self._view, self.link, self.fixups
        for _ in range(ROUNDS):
            if link.wants_write():
                return
            if self._end == len(buf):
                self._compact()
            try:
                n = self.sock.recv_into(view[self._end :])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                raise PasstClosed(str(exc)) from exc
            if n == 0:
                raise PasstClosed("passt closed its socket")
            end = self._end + n
            start = self._start
            count = 0
            while end - start >= 4:
                (length,) = _LEN.unpack_from(buf, start)
                if length < ETH_MIN or length > ETH_MAX:
                    raise PasstClosed(f"passt sent a bad frame length {length}")
                if end - start - 4 < length:
                    break
                frame = view[start + 4 : start + 4 + length]
                if fixups is not None:
                    fixed = fixups.to_guest(frame)
                    link.send_frame(frame if fixed is None else fixed)
                else:
                    link.send_frame(frame)
                self.bytes_to_guest += length
                count += 1
                start += 4 + length
            self.frames_to_guest += count
            self._start, self._end = start, end
            if start == end:
                self._start = self._end = 0
            link.flush()

    def _compact(self) -> None:
        start, end = self._start, self._end
        self._buf[0 : end - start] = self._view[start:end].tobytes()
        self._start, self._end = 0, end - start

    # -- loop ---------------------------------------------------------------------
    def run(self, stop_fd: int) -> None:
        link_fd, sock_fd = self.link.fileno(), self.sock.fileno()
        ep = select.epoll()
        try:
            ep.register(stop_fd, select.EPOLLIN)
            ep.register(link_fd, select.EPOLLIN)
            ep.register(sock_fd, select.EPOLLIN)
            link_mask, sock_mask = select.EPOLLIN, select.EPOLLIN
            while True:
                want_link = (select.EPOLLIN if not self._pending else 0) | (
                    select.EPOLLOUT if self.link.wants_write() else 0)
                want_sock = (select.EPOLLIN if not self.link.wants_write() else 0) | (
                    select.EPOLLOUT if self._pending else 0)
                if want_link != link_mask:
                    ep.modify(link_fd, want_link)
                    link_mask = want_link
                if want_sock != sock_mask:
                    ep.modify(sock_fd, want_sock)
                    sock_mask = want_sock
                try:
                    events = ep.poll(1.0)
                except InterruptedError:
                    continue
                for fd, ev in events:
                    if fd == stop_fd:
                        self.link.flush()
                        return
                    if fd == sock_fd:
                        if ev & select.EPOLLOUT:
                            self._flush_pending()
                        if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                            self._from_passt()
                    elif fd == link_fd:
                        if ev & select.EPOLLOUT:
                            self.link.flush()
                        if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                            self._from_link()
                if not events:
                    # a periodic nudge for links that are not edge-exact
                    self._from_link()
        finally:
            ep.close()

    def counters(self) -> dict[str, int]:
        out = {"relay_frames_to_passt": self.frames_to_passt, "relay_frames_to_guest": self.frames_to_guest,
               "relay_bytes_to_passt": self.bytes_to_passt, "relay_bytes_to_guest": self.bytes_to_guest,
               "relay_frames_oversize": self.frames_oversize, "relay_writes_deferred": self.writes_deferred,
               "relay_writes_split": self.writes_split, "relay_tap_tx_dropped": getattr(self.link, "tx_dropped", 0)}
        if self.fixups is not None:
            out.update(self.fixups.counters())
        return out


def make_socketpair(size: int = 16 * 1024 * 1024) -> tuple[socket.socket, socket.socket]:
    """(ours, passt's): a stream socketpair with large forced buffers.

    passt leaves its end at the default 208 KiB otherwise and drops frames
    under load (harness notes); forcing needs CAP_NET_ADMIN, else the plain
    options are capped by ``net.core.[rw]mem_max``. Our send buffer (the bytes
    queued for passt) is kept at :data:`TO_PASST_SNDBUF` (see the module doc).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (ours, theirs):
        enlarge_socket_buffers(sock, size)
    limit_send_buffer(ours, min(size, TO_PASST_SNDBUF))
    os.set_inheritable(theirs.fileno(), True)
    return ours, theirs


def limit_send_buffer(sock: socket.socket, size: int) -> None:
    """Set the send buffer to ``size`` (forced when allowed, so it may exceed ``wmem_max``)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

"""Copy frames between a guest link and passt's end of a socketpair.

Used for tap links (passt only speaks the qemu stream protocol) and, for old
passt builds, for stream links too (to repair their defects, see
:mod:`kboxnet_passt.fixups`). One epoll loop, batched both ways: up to 256
frames from the link go to passt in one ``sendmsg``; one ``recv_into`` from
passt yields every complete frame in an 8 MiB buffer.

Frame boundaries are kept on stop: the link only ever gets whole frames
(``send_frame``), and frames from the link are taken whole, so the next
backend can take over the link at once. Bytes queued for passt when it dies
are dropped (the guest retransmits).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct

from kboxnet_core.links.base import ETH_MAX, ETH_MIN, Link
from kboxnet_core.links.stream import enlarge_socket_buffers

from .fixups import Fixups

_LEN = struct.Struct(">I")
RECV_BUFFER = 8 * 1024 * 1024
OUT_LIMIT = 4 * 1024 * 1024
BATCH = 256
#: batches per readiness event and direction (fairness between the two directions)
ROUNDS = 16


class PasstClosed(Exception):
    """passt closed its end of the socketpair (it exited or crashed)."""


class Relay:
    """The relay loop; :meth:`run` returns when ``stop_fd`` is readable.

    Raises :class:`PasstClosed` when passt goes away and
    :class:`~kboxnet_core.links.base.LinkClosed` when the guest does.
    """

    def __init__(self, link: Link, sock: socket.socket, fixups: Fixups | None = None) -> None:
        self.link = link
        self.sock = sock
        self.fixups = fixups
        sock.setblocking(False)
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._out = bytearray()
        self.frames_to_passt = 0
        self.frames_to_guest = 0
        self.bytes_to_passt = 0
        self.bytes_to_guest = 0

    # -- guest -> passt -------------------------------------------------------------
    def _from_link(self) -> None:
        link, fixups = self.link, self.fixups
        for _ in range(ROUNDS):
            if self._out:
                return
            frames = link.recv_frames(BATCH)
            if not frames:
                return
            parts: list[bytes | memoryview] = []
            total = 0
            for frame in frames:
                if fixups is not None:
                    reply = fixups.from_guest(frame)
                    if reply is not None:
                        link.send_frame(reply)
                        continue
                n = len(frame)
                parts.append(_LEN.pack(n))
                parts.append(frame)
                total += 4 + n
            self.frames_to_passt += len(parts) // 2
            self.bytes_to_passt += total
            if fixups is not None:
                if fixups.inject:
                    link.send_frames(fixups.inject)
                    fixups.inject.clear()
                link.flush()
            if parts:
                self._send_parts(parts, total)

    def _send_parts(self, parts: list[bytes | memoryview], total: int) -> None:
        try:
            sent = self.sock.sendmsg(parts)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise PasstClosed(str(exc)) from exc
            raise
        if sent < total:
            # keep the unsent tail (the frame views die with the next recv_frames)
            skip = sent
            for part in parts:
                n = len(part)
                if skip >= n:
                    skip -= n
                    continue
                self._out += part[skip:]
                skip = 0

    def _flush_out(self) -> None:
        if not self._out:
            return
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise PasstClosed(str(exc)) from exc
            raise
        del self._out[:sent]

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
                want_link = (select.EPOLLIN if not self._out else 0) | (
                    select.EPOLLOUT if self.link.wants_write() else 0)
                want_sock = (select.EPOLLIN if not self.link.wants_write() else 0) | (
                    select.EPOLLOUT if self._out else 0)
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
                            self._flush_out()
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
               "relay_bytes_to_passt": self.bytes_to_passt, "relay_bytes_to_guest": self.bytes_to_guest}
        if self.fixups is not None:
            out.update(self.fixups.counters())
        return out


def make_socketpair(size: int = 16 * 1024 * 1024) -> tuple[socket.socket, socket.socket]:
    """(ours, passt's): a stream socketpair with large forced buffers on both ends.

    passt leaves its end at the default 208 KiB otherwise and drops frames
    under load (harness notes); forcing needs CAP_NET_ADMIN, else the plain
    options are capped by ``net.core.[rw]mem_max``.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (ours, theirs):
        enlarge_socket_buffers(sock, size)
    os.set_inheritable(theirs.fileno(), True)
    return ours, theirs

"""The qemu stream link: 4-byte big-endian length + Ethernet frame over AF_UNIX.

This is the framing of QEMU's ``-netdev stream``/``-netdev socket``, of passt
and of kbox. Reads are batched (one ``recv_into`` fills a large buffer and
yields every complete frame in it); writes are batched (frames are appended
to one output buffer and written with as few ``send`` calls as the socket
allows). A length outside 14..65535 is a framing error: the connection is
dropped cleanly and the error logged, a listener keeps serving new guests.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from typing import ClassVar

from .base import ETH_MAX, ETH_MIN, FramingError, Link, LinkClosed

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
RECV_BUFFER = 4 * 1024 * 1024
SOCKET_BUFFER = 8 * 1024 * 1024
#: output queued beyond this (a guest that stopped reading) is dropped, not buffered
MAX_PENDING = 32 * 1024 * 1024
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def enlarge_socket_buffers(sock: socket.socket, size: int = SOCKET_BUFFER) -> None:
    """Ask for big socket buffers (forced when we have CAP_NET_ADMIN).

    A 208 KiB default send buffer holds only three 64 KiB frames; passt and
    the guest then drop frames under load (see the harness notes).
    """
    for force, plain in ((_SO_SNDBUFFORCE, socket.SO_SNDBUF), (_SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass


class StreamLink(Link):
    """A connected qemu-protocol stream socket (from a listener or an inherited fd).

    :ivar socket: the connected socket; a backend that hands the guest
        connection to another process (passt ``--fd``) passes ``socket.fileno()``
        and must not read from the link itself meanwhile.
    """

    kind: ClassVar[str] = "stream"

    def __init__(self, sock: socket.socket, mtu: int = 1500, name: str = "") -> None:
        self.socket = sock
        self.mtu = mtu
        self.name = name or f"fd {sock.fileno()}"
        sock.setblocking(False)
        enlarge_socket_buffers(sock)
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._out = bytearray()
        self._out_off = 0
        self._closed = False
        self._eof = False
        self.frames_in = 0
        self.frames_out = 0
        self.frames_dropped = 0

    @classmethod
    def from_fd(cls, fd: int, mtu: int = 1500) -> StreamLink:
        """Adopt an inherited, connected AF_UNIX stream socket (``kboxnet serve --fd N``)."""
        sock = socket.socket(fileno=fd)
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.detach()
            raise ValueError(f"fd {fd} is not an AF_UNIX stream socket")
        return cls(sock, mtu=mtu, name=f"inherited fd {fd}")

    def fileno(self) -> int:
        return self.socket.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    def describe(self) -> str:
        return f"qemu stream link ({self.name})"

    def _compact(self) -> None:
        start, end = self._start, self._end
        if start == 0:
            return
        if end > start:
            self._buf[0 : end - start] = self._view[start:end].tobytes()
        self._start, self._end = 0, end - start

    def recv_frames(self, limit: int = 256) -> list[memoryview]:
        if self._closed:
            raise LinkClosed("link closed")
        if self._eof:
            self._closed = True
            partial = self._end - self._start
            if partial:
                log.warning("%s: guest closed the connection mid-frame (%d bytes pending)", self.describe(), partial)
                raise FramingError(f"guest closed mid-frame ({partial} bytes pending)")
            raise LinkClosed("guest closed the connection")
        self._compact()
        view = self._view
        frames: list[memoryview] = []
        bad = False
        while len(frames) < limit and not bad:
            start, end = self._start, self._end
            # parse everything complete in the buffer
            while end - start >= 4 and len(frames) < limit:
                (length,) = _LEN.unpack_from(self._buf, start)
                if length < ETH_MIN or length > ETH_MAX:
                    if not frames:
                        self._fail(f"bad frame length {length} (allowed {ETH_MIN}..{ETH_MAX})")
                    bad = True  # deliver the good frames first; the next call fails
                    break
                if end - start - 4 < length:
                    break
                frames.append(view[start + 4 : start + 4 + length])
                start += 4 + length
            self._start = start
            if bad or len(frames) >= limit or end == len(self._buf):
                break
            try:
                n = self.socket.recv_into(view[end:])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if frames:
                    self._eof = True
                    break
                self._closed = True
                raise LinkClosed(f"guest connection error: {exc}") from exc
            if n == 0:
                self._eof = True
                break
            self._end = end + n
            if end + n < len(self._buf) and frames:
                # short read: the socket is (probably) drained; parse and stop
                continue
        self.frames_in += len(frames)
        if self._eof and not frames:
            return self.recv_frames(limit)  # reports the close (frames first, then EOF)
        return frames

    def _fail(self, message: str) -> None:
        self._closed = True
        log.warning("%s: framing error: %s; dropping this guest connection", self.describe(), message)
        raise FramingError(message)

    def send_frame(self, frame: bytes | bytearray | memoryview) -> None:
        n = len(frame)
        if n < ETH_MIN or n > ETH_MAX:
            raise ValueError(f"frame length {n} outside {ETH_MIN}..{ETH_MAX}")
        out = self._out
        if len(out) - self._out_off > MAX_PENDING:
            self.frames_dropped += 1  # the guest stopped reading: drop like a full NIC ring
            return
        out += _LEN.pack(n)
        out += frame
        self.frames_out += 1

    def flush(self) -> bool:
        out = self._out
        if self._out_off >= len(out):
            return True
        if self._closed:
            raise LinkClosed("link closed")
        view = memoryview(out)
        try:
            while self._out_off < len(out):
                try:
                    sent = self.socket.send(view[self._out_off :])
                except (BlockingIOError, InterruptedError):
                    break
                self._out_off += sent
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                self._closed = True
                raise LinkClosed(f"guest connection error: {exc}") from exc
            raise
        finally:
            view.release()
        if self._out_off >= len(out):
            out.clear()
            self._out_off = 0
            return True
        if self._out_off > (1 << 20):
            del out[: self._out_off]
            self._out_off = 0
        return False

    def wants_write(self) -> bool:
        return self._out_off < len(self._out)

    def pending_bytes(self) -> int:
        return len(self._out) - self._out_off

    def has_partial_input(self) -> bool:
        """True when a frame was started but not completed (fallback check)."""
        return self._end > self._start

    def close(self) -> None:
        self._closed = True
        try:
            self.socket.close()
        except OSError:
            pass


class StreamListener:
    """A listening UNIX socket for ``kboxnet serve --socket PATH``.

    Guests are served one at a time, as with passt. The socket file is
    created with mode 0600 and removed on :meth:`close`.
    """

    def __init__(self, path: str, mtu: int = 1500) -> None:
        self.path = path
        self.mtu = mtu
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale socket file from a dead process
            else:
                probe.close()
                raise OSError(errno.EADDRINUSE, f"{path} is in use by another process")
            finally:
                probe.close()
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            self.socket.bind(path)
        finally:
            os.umask(old)
        self.socket.listen(4)
        self._ino = os.stat(path).st_ino

    def fileno(self) -> int:
        return self.socket.fileno()

    def accept(self) -> StreamLink:
        conn, _ = self.socket.accept()
        return StreamLink(conn, mtu=self.mtu, name=f"{self.path}")

    def close(self) -> None:
        self.socket.close()
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass

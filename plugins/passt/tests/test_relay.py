"""The relay between a guest link and passt's socket, with plain sockets (no root)."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import pytest
from kboxnet_passt.relay import ATOMIC_FRAME, PasstClosed, Relay, make_socketpair

from kboxnet_core.links.base import LinkClosed
from kboxnet_core.links.stream import StreamLink


def framed(frame: bytes) -> bytes:
    return struct.pack(">I", len(frame)) + frame


def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    sock.settimeout(5)
    buf = b""
    out: list[bytes] = []
    while len(out) < count:
        while len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from(">I", buf)[0]:
            n = struct.unpack_from(">I", buf)[0]
            out.append(buf[4 : 4 + n])
            buf = buf[4 + n :]
        if len(out) >= count:
            break
        chunk = sock.recv(1 << 20)
        assert chunk, "closed early"
        buf += chunk
    return out


class Harness:
    def __init__(self) -> None:
        self.guest, link_end = socket.socketpair()
        self.link = StreamLink(link_end, name="test")
        self.relay_end, self.passt = make_socketpair(1 << 20)
        self.relay = Relay(self.link, self.relay_end)
        self.stop_r, self.stop_w = os.pipe()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.relay.run(self.stop_r)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc

    def stop(self) -> None:
        os.write(self.stop_w, b"x")
        self.thread.join(5)

    def close(self) -> None:
        for s in (self.guest, self.link, self.relay_end, self.passt):
            s.close()
        os.close(self.stop_r)
        os.close(self.stop_w)


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.stop()
    harness.close()


def send_in_background(sock: socket.socket, data: bytes) -> None:
    threading.Thread(target=sock.sendall, args=(data,), daemon=True).start()


def frames_of(sizes: list[int]) -> list[bytes]:
    return [bytes([i % 251]) * 14 + os.urandom(n - 14) for i, n in enumerate(sizes)]


def test_frames_keep_their_boundaries_both_ways(h):
    sizes = [14, 60, 1514, 65535, 9000] * 40
    frames = frames_of(sizes)
    send_in_background(h.guest, b"".join(framed(f) for f in frames))
    assert read_frames(h.passt, len(frames)) == frames
    back = frames_of(list(reversed(sizes)))
    send_in_background(h.passt, b"".join(framed(f) for f in back))
    assert read_frames(h.guest, len(back)) == back
    assert h.relay.frames_to_passt == len(frames) and h.relay.frames_to_guest == len(back)


def test_partial_frame_from_passt_is_not_delivered_on_stop(h):
    whole = frames_of([100])[0]
    h.passt.sendall(framed(whole) + framed(frames_of([200])[0])[:50])
    assert read_frames(h.guest, 1) == [whole]
    h.stop()
    assert h.error is None
    h.guest.settimeout(0.2)
    with pytest.raises(TimeoutError):
        h.guest.recv(10)  # nothing of the cut frame reached the guest


def test_passt_closing_ends_the_relay(h):
    h.passt.close()
    h.thread.join(5)
    assert isinstance(h.error, PasstClosed)


def test_guest_closing_ends_the_relay(h):
    h.guest.close()
    h.thread.join(5)
    assert isinstance(h.error, LinkClosed)


def test_bad_length_from_passt_is_fatal(h):
    h.passt.sendall(struct.pack(">I", 3) + b"abc")
    h.thread.join(5)
    assert isinstance(h.error, PasstClosed) and "bad frame length" in str(h.error)


def test_every_write_to_passt_is_whole_frames(h):
    """Each read of passt's end ends on a frame boundary, also while the socket is full.

    passt 2023 drops frames that reach it in pieces (see kboxnet_passt.relay); a reader
    whose buffer is bigger than everything queued gets whole writes, so this holds
    exactly when the relay writes whole frames in atomic groups.
    """
    sizes = [60, 1514, 9014, ATOMIC_FRAME, 200, 14, 4000] * 80
    frames = frames_of(sizes)
    send_in_background(h.guest, b"".join(framed(f) for f in frames))
    buf = bytearray(16 << 20)  # more than the relay ever queues (its send buffer)
    view = memoryview(buf)
    got: list[bytes] = []
    reads = 0
    h.passt.settimeout(10)
    while len(got) < len(frames):
        time.sleep(0.001 if reads % 8 else 0.05)  # now and then let the relay fill the socket
        n = h.passt.recv_into(buf)
        assert n, "closed early"
        reads += 1
        off = 0
        while off < n:
            assert n - off >= 4, f"read {reads} ended inside a length word"
            (length,) = struct.unpack_from(">I", buf, off)
            assert n - off - 4 >= length, f"read {reads} ended inside a frame of {length} bytes"
            got.append(bytes(view[off + 4 : off + 4 + length]))
            off += 4 + length
    assert got == frames
    assert h.relay.writes_deferred > 0, "the test never filled the socket"
    assert h.relay.frames_oversize == 0


def test_frames_too_big_for_one_write_are_counted(h):
    frames = frames_of([ATOMIC_FRAME + 1, 65535, 60])
    send_in_background(h.guest, b"".join(framed(f) for f in frames))
    assert read_frames(h.passt, len(frames)) == frames
    assert h.relay.frames_oversize == 2

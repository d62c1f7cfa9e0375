"""The relay between a guest link and passt's socket, with plain sockets (no root)."""

from __future__ import annotations

import os
import socket
import struct
import threading

import pytest
from kboxnet_passt.relay import PasstClosed, Relay, make_socketpair

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

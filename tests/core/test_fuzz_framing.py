"""Fuzzing the qemu stream framing: any byte stream parses or fails cleanly.

The reference is a plain re-statement of the protocol; the link must agree
with it frame by frame, or raise FramingError/LinkClosed exactly when the
reference finds a bad length or a truncated tail. Nothing else may escape.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kboxnet_core.links.base import FramingError, LinkClosed
from kboxnet_core.links.stream import StreamLink

pytestmark = pytest.mark.fuzz


def reference(stream: bytes) -> tuple[list[bytes], str]:
    frames, off = [], 0
    while off + 4 <= len(stream):
        (n,) = struct.unpack_from(">I", stream, off)
        if not 14 <= n <= 65535:
            return frames, "bad-length"
        if off + 4 + n > len(stream):
            return frames, "truncated"
        frames.append(stream[off + 4 : off + 4 + n])
        off += 4 + n
    return frames, ("truncated" if off != len(stream) else "eof")


valid_frame = st.binary(min_size=14, max_size=300).map(lambda f: struct.pack(">I", len(f)) + f)
chunk = st.one_of(valid_frame, st.binary(max_size=12),
                  st.sampled_from([0, 13, 65536, 0xFFFFFFFF]).map(lambda n: struct.pack(">I", n)))


def run_link(stream: bytes, limit: int) -> tuple[list[bytes], str]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    link = StreamLink(a)
    got: list[bytes] = []
    try:
        b.sendall(stream)
        b.shutdown(socket.SHUT_WR)
        while True:
            got.extend(bytes(f) for f in link.recv_frames(limit))
    except FramingError as exc:
        return got, "bad-length" if "bad frame length" in str(exc) else "truncated"
    except LinkClosed:
        return got, "eof"
    finally:
        link.close()
        b.close()


@given(st.lists(chunk, max_size=20), st.integers(min_value=1, max_value=300))
def test_stream_link_agrees_with_reference(chunks, limit):
    stream = b"".join(chunks)
    assert run_link(stream, limit) == reference(stream)

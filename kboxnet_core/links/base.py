"""The frame-link interface every backend uses for guest I/O.

Frame I/O is a plain method call on a link object, never a pluggy hook:
a hook call costs about 1 µs (measured with pluggy 1.6 on this machine's CPU),
which at 100,000 frames per second would be 10 % of a core spent on
dispatch alone. Hooks are for lifecycle events; frames go through here.

A link is non-blocking and edge-agnostic: a backend registers
:meth:`Link.fileno` in its own event loop (readable = frames may be waiting),
calls :meth:`Link.recv_frames` until it returns an empty list, queues output
with :meth:`Link.send_frame`, and calls :meth:`Link.flush` (and waits for
writability while :meth:`Link.wants_write` is true).

The supervisor owns the link: a session that ends must leave it open so that
the next backend can take over the same guest connection (fallback).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import ClassVar

ETH_MIN = 14
ETH_MAX = 65535


class LinkClosed(Exception):
    """The guest side of the link went away (EOF, reset, or framing error)."""


class FramingError(LinkClosed):
    """The guest sent something that is not a valid frame stream.

    It is a :class:`LinkClosed`: the connection is dropped cleanly, the
    listener (if any) keeps serving new guests.
    """


class Link(abc.ABC):
    """A guest-facing Ethernet frame channel.

    :cvar kind: ``"stream"`` (qemu stream protocol) or ``"tap"``.
    :ivar mtu: the guest interface MTU the backend should assume.
    :ivar vnet_hdr: frames carry a 10-byte virtio-net header (tap only);
        backends that do not understand it must refuse the link or strip it.
    """

    kind: ClassVar[str] = "abstract"
    mtu: int = 1500
    vnet_hdr: bool = False

    @abc.abstractmethod
    def fileno(self) -> int:
        """File descriptor to poll for readability (and writability)."""

    @abc.abstractmethod
    def recv_frames(self, limit: int = 256) -> list[memoryview]:
        """Return the frames available now (possibly none), up to ``limit``.

        Never blocks. The returned views are valid until the next call.
        Raises :class:`LinkClosed` (or :class:`FramingError`) when the guest
        connection is gone; the link is then unusable.
        """

    @abc.abstractmethod
    def send_frame(self, frame: bytes | bytearray | memoryview) -> None:
        """Queue one frame for the guest (copied; the caller may reuse it)."""

    def send_frames(self, frames: Iterable[bytes | bytearray | memoryview]) -> None:
        for frame in frames:
            self.send_frame(frame)

    @abc.abstractmethod
    def flush(self) -> bool:
        """Write queued frames without blocking; True when the queue is empty."""

    @abc.abstractmethod
    def wants_write(self) -> bool:
        """True while queued output waits for the fd to become writable."""

    def pending_bytes(self) -> int:
        """Bytes queued for the guest and not yet written (for back-pressure)."""
        return 0

    def describe(self) -> str:
        return self.kind

    def adapt_to(self, accepts_vnet_hdr: bool) -> None:
        """Prepare the link for the next backend (called by the supervisor before ``open``).

        A tap link opened with the virtio-net header keeps it (and its offloads) for a backend
        that accepts it; for one that does not, offloads are switched off and the header is
        stripped and added by the link, so that backend sees plain frames.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the link (only the supervisor calls this)."""

    @property
    def closed(self) -> bool:
        return False

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

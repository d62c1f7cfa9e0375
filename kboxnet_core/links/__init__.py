"""Guest-facing frame links: the qemu stream socket and the tap device."""

from .base import FramingError, Link, LinkClosed

__all__ = ["FramingError", "Link", "LinkClosed"]

"""An in-memory link for unit tests: frames in by method call, frames out into a list."""

from __future__ import annotations

import os
from typing import ClassVar

from kboxnet_core.links.base import Link


class MemLink(Link):
    kind: ClassVar[str] = "stream"

    def __init__(self, mtu: int = 1500, vnet_hdr: bool = False) -> None:
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.sent: list[bytes] = []
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def recv_frames(self, limit: int = 256) -> list[memoryview]:
        return []

    def send_frame(self, frame) -> None:
        self.sent.append(bytes(frame))

    def flush(self) -> bool:
        return True

    def wants_write(self) -> bool:
        return False

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)

"""A pcap writer for the guest link (classic libpcap format, Ethernet)."""

from __future__ import annotations

import struct
import time
from typing import BinaryIO

_GLOBAL = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
SNAPLEN = 65535
LINKTYPE_ETHERNET = 1


class PcapWriter:
    """Appends every frame seen on the guest link (both directions) to a file.

    Frames are written without the virtio-net header. With offloads on, frames
    to the guest may be larger than the MTU and carry a partial checksum, as
    in a capture on a host with TSO (tcpdump reports "incorrect" checksums).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: BinaryIO = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._file.write(_GLOBAL.pack(0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        self.frames = 0

    def write(self, frame: bytes | bytearray | memoryview) -> None:
        now = time.time()
        sec = int(now)
        n = len(frame)
        cap = min(n, SNAPLEN)
        self._file.write(_RECORD.pack(sec, int((now - sec) * 1e6), cap, n))
        self._file.write(frame[:cap])
        self.frames += 1

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass

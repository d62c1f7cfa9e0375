"""The tap link: a tap device (usually inside a network namespace).

One frame per ``read``/``write`` syscall (that is how tap works). With
``vnet_hdr=True`` the device is opened with ``IFF_VNET_HDR`` and every frame
read or written starts with a 10-byte ``virtio_net_hdr``; ``offload=True``
then enables checksum and TSO offloads (``TUNSETOFFLOAD``), so the kernel
hands over GSO super-frames of up to 64 KiB and segments/checksums what the
backend writes (see the kernel facts notes).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import ClassVar

from ..netns import entered_netns, set_link
from .base import Link, LinkClosed

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

VNET_HDR_LEN = 10
#: flags u8, gso_type u8, hdr_len u16, gso_size u16, csum_start u16, csum_offset u16
VNET_HDR = struct.Struct("<BBHHHH")
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4

_READ_MAX = 65536 + VNET_HDR_LEN
_ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
_BUFFER = 4 * 1024 * 1024


def open_tap(ifname: str, *, vnet_hdr: bool = False, offload: bool = False) -> int:
    """Open (create) tap ``ifname`` in the current thread's netns; returns the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), flags))
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            if offload:
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError:
        os.close(fd)
        raise
    return fd


class TapLink(Link):
    """A tap device fd; frames are whole Ethernet frames (plus vnet header if enabled)."""

    kind: ClassVar[str] = "tap"

    def __init__(self, fd: int, ifname: str, *, mtu: int = 1500, vnet_hdr: bool = False,
                 offload: bool = False) -> None:
        self.fd = fd
        self.ifname = ifname
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr  # what the current backend sees
        self.has_vnet_hdr = vnet_hdr  # what the device was opened with
        self.offload = offload
        self._strip = 0
        os.set_blocking(fd, False)
        self._buf = bytearray(_BUFFER)
        self._view = memoryview(self._buf)
        self._closed = False
        self.frames_in = 0
        self.frames_out = 0
        self.tx_dropped = 0

    @classmethod
    def open_in_netns(cls, netns_path: str | None, ifname: str = "tap0", *, mtu: int = 1500,
                      vnet_hdr: bool = False, offload: bool = False, up: bool = True,
                      txqueuelen: int = 10000) -> TapLink:
        """Create tap ``ifname`` inside the namespace at ``netns_path`` (None: current).

        Needs CAP_NET_ADMIN over that namespace. The interface is set to ``mtu``
        and brought up (``up=False`` leaves it down).
        """
        def _open() -> int:
            fd = open_tap(ifname, vnet_hdr=vnet_hdr, offload=offload)
            set_link(ifname, mtu=mtu, txqueuelen=txqueuelen, up=up or None)
            return fd

        if netns_path is None:
            fd = _open()
        else:
            with entered_netns(netns_path):
                fd = _open()
        return cls(fd, ifname, mtu=mtu, vnet_hdr=vnet_hdr, offload=offload)

    def adapt_to(self, accepts_vnet_hdr: bool) -> None:
        if not self.has_vnet_hdr:
            return
        want_offload = accepts_vnet_hdr and self.offload
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) if want_offload else 0)
        self.vnet_hdr = accepts_vnet_hdr
        self._strip = 0 if accepts_vnet_hdr else VNET_HDR_LEN

    def fileno(self) -> int:
        return self.fd

    @property
    def closed(self) -> bool:
        return self._closed

    def describe(self) -> str:
        extra = ", vnet_hdr" if self.vnet_hdr else ""
        return f"tap link ({self.ifname}{extra})"

    def recv_frames(self, limit: int = 256) -> list[memoryview]:
        if self._closed:
            raise LinkClosed("link closed")
        view = self._view
        frames: list[memoryview] = []
        off = 0
        end = len(self._buf) - _READ_MAX
        readv = os.readv
        fd = self.fd
        strip = self._strip
        while len(frames) < limit and off <= end:
            try:
                n = readv(fd, (view[off : off + _READ_MAX],))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.EBADFD:  # interface deleted with its namespace
                    self._closed = True
                    raise LinkClosed(f"tap {self.ifname} is gone") from exc
                raise
            if n == 0:
                self._closed = True
                raise LinkClosed(f"tap {self.ifname} closed")
            if n > strip:
                frames.append(view[off + strip : off + n])
            off += n
        self.frames_in += len(frames)
        return frames

    def send_frame(self, frame: bytes | bytearray | memoryview) -> None:
        try:
            if self._strip:
                os.writev(self.fd, (_ZERO_VNET_HDR, frame))
            else:
                os.write(self.fd, frame)
            self.frames_out += 1
        except (BlockingIOError, InterruptedError):
            self.tx_dropped += 1
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EBADFD):
                self._closed = True
                raise LinkClosed(f"tap {self.ifname}: {exc}") from exc
            if exc.errno == errno.EINVAL:  # malformed frame refused by the kernel
                self.tx_dropped += 1
                return
            raise

    def flush(self) -> bool:
        return True

    def wants_write(self) -> bool:
        return False

    def close(self) -> None:
        if not self._closed or self.fd >= 0:
            self._closed = True
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1

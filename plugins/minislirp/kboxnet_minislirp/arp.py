"""ARP (RFC 826): answer for every address except the guest's own; learn the guest's MAC."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from .wire import BROADCAST_MAC, ETH_P_ARP, HOST_MAC

if TYPE_CHECKING:
    from .engine import Engine

_ARP = struct.Struct("!HHBBH6s4s6s4s")
_FRAME = struct.Struct("!6s6sHHHBBH6s4s6s4s")


class Arp:
    """Replies to ARP requests so the guest can reach the gateway, DNS and off-link hosts."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine

    def input(self, frame: memoryview) -> None:
        c = self.e.counters
        if len(frame) < 42:
            c.drop("arp_truncated")
            return
        htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = _ARP.unpack_from(frame, 14)
        if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
            c.drop("arp_unsupported")
            return
        c["arp.in"] += 1
        if sha != HOST_MAC and sha[0] & 1 == 0:
            self.e.learn_guest_mac(sha)
        if op != 1:
            return
        # never answer for the guest's own address (duplicate address detection) or gratuitous ARP
        if tpa == spa or tpa == self.e.guest_ip4 or tpa == b"\x00\x00\x00\x00" or tpa[0] >= 224:
            return
        reply = _FRAME.pack(sha, HOST_MAC, ETH_P_ARP, 1, 0x0800, 6, 4, 2, HOST_MAC, tpa, sha, spa)
        self.e.out_bytes(reply)
        c["arp.replies"] += 1

    def resolve_guest(self) -> bool:
        """True if the guest's MAC is known; otherwise ask for it (who-has guest, tell gateway).

        A statically configured guest that has not sent anything yet (``kboxnet run``) is unknown
        until it answers; traffic that starts on the host side (forwarded ports) asks first, and
        its retransmissions then reach the guest.
        """
        e = self.e
        if e.guest_mac != BROADCAST_MAC:
            return True
        req = _FRAME.pack(BROADCAST_MAC, HOST_MAC, ETH_P_ARP, 1, 0x0800, 6, 4, 1,
                          HOST_MAC, bytes(e.gateway4), b"\x00" * 6, bytes(e.guest_ip4))
        e.out_bytes(req)
        e.counters["arp.requests"] += 1
        return False

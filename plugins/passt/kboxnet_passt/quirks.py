"""Known defects of old passt builds, and how the backend deals with each.

Measured with Debian bookworm's passt (0.0~git20230309, see the team notes
``passt-bookworm-quirks.md``) and absent from 0.0~git20250503:

1. ICMP echo to the gateway address is not mapped to the host: the request
   leaves as a real packet towards that address (possibly off the machine).
2. With ``--dns-forward ADDR`` the reply comes back from the *gateway*
   address instead of ADDR, so the guest's resolver drops it.
3. A SYN to a closed host port gets an RST without ACK, which Linux ignores
   in SYN-SENT: connect() hangs until it times out instead of failing.
4. On a forwarded (inbound) connection, passt answers the guest's SYN-ACK
   only together with the first data from the host client: a guest server
   that must speak first (SSH, SMTP and FTP banners) never accept()s.
5. Frames that reach its socket in pieces are lost (``tap_handler_passt()``
   completes a frame cut by its read with a single blocking ``recv()`` and
   drops the whole read when that comes back short, and drops the bytes of a
   length word cut by a read): the stream is then out of step and every flow
   stalls. The relay writes whole frames in atomic groups (see
   :mod:`kboxnet_passt.relay`); frames too big for one atomic write
   (MTU above :data:`RELAY_MTU_LIMIT`) cannot be protected, so the MTU offered
   to such a passt on a relayed link is capped.
6. IPv6 twins of 1 and 2 (measured by the QEMU e2e test): an ICMPv6 echo to
   the IPv6 gateway leaves through the host's IPv6 default route; the reply
   to a DNS query for the IPv6 DNS address comes from passt's link-local
   address to the guest's link-local address (``udp_update_hdr6()`` matches
   it against ``dns_host``, which stays ``::`` when ``-D`` is given, so the
   reply from ``::1`` takes the "local" branch), and the guest drops it.

These releases predate the 2024_08_21 address-mapping rework, which also
added ``--map-host-loopback``. The backend therefore treats a passt that
lacks ``--map-host-loopback`` as affected (probing, not guessing from a
version string that may say "unknown version"). Releases between 2023_03_09
and 2024_08_21 were not measured; treating them as affected costs only the
relay's copy, while the opposite mistake would give the guest a broken network.
"""

from __future__ import annotations

import attrs

from .detect import BinaryInfo
from .relay import ATOMIC_FRAME

#: the largest MTU whose frames (with the 14-byte Ethernet header) fit one atomic write
RELAY_MTU_LIMIT = ATOMIC_FRAME - 14


@attrs.frozen
class Quirks:
    gateway_ping_unmapped: bool = False
    dns_reply_from_gateway: bool = False
    rst_without_ack: bool = False
    inbound_handshake_incomplete: bool = False
    partial_frames_dropped: bool = False
    gateway_ping6_unmapped: bool = False
    dns6_reply_link_local: bool = False

    @property
    def any(self) -> bool:
        """Any defect the relay's repairs (``fixups``) are for."""
        return (self.gateway_ping_unmapped or self.dns_reply_from_gateway or self.rst_without_ack
                or self.inbound_handshake_incomplete or self.gateway_ping6_unmapped
                or self.dns6_reply_link_local)

    def describe(self) -> list[str]:
        out = []
        if self.gateway_ping_unmapped:
            out.append("pings to the gateway are not mapped to the host")
        if self.dns_reply_from_gateway:
            out.append("DNS replies come from the gateway address")
        if self.rst_without_ack:
            out.append("refused connections hang (RST without ACK)")
        if self.inbound_handshake_incomplete:
            out.append("forwarded connections stall until the host side sends (no final handshake ACK)")
        if self.gateway_ping6_unmapped:
            out.append("IPv6 pings to the gateway leave through the host's IPv6 default route")
        if self.dns6_reply_link_local:
            out.append("IPv6 DNS replies come from passt's link-local address to the guest's")
        if self.partial_frames_dropped:
            out.append("frames reaching its socket in pieces are dropped and its stream goes out of step")
        return out


def quirks_for(info: BinaryInfo) -> Quirks:
    legacy = not info.has("map-host-loopback")
    return Quirks(gateway_ping_unmapped=legacy, dns_reply_from_gateway=legacy, rst_without_ack=legacy,
                  inbound_handshake_incomplete=legacy, partial_frames_dropped=legacy,
                  gateway_ping6_unmapped=legacy, dns6_reply_link_local=legacy)

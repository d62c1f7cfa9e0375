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


@attrs.frozen
class Quirks:
    gateway_ping_unmapped: bool = False
    dns_reply_from_gateway: bool = False
    rst_without_ack: bool = False
    inbound_handshake_incomplete: bool = False

    @property
    def any(self) -> bool:
        return (self.gateway_ping_unmapped or self.dns_reply_from_gateway or self.rst_without_ack
                or self.inbound_handshake_incomplete)

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
        return out


def quirks_for(info: BinaryInfo) -> Quirks:
    legacy = not info.has("map-host-loopback")
    return Quirks(gateway_ping_unmapped=legacy, dns_reply_from_gateway=legacy, rst_without_ack=legacy,
                  inbound_handshake_incomplete=legacy)

"""``[net.minislirp]``: tunables of the minislirp backend (all optional)."""

from __future__ import annotations

import attrs


@attrs.frozen
class MinislirpSettings:
    """Timeouts (seconds) and switches.

    :ivar udp_timeout: idle time after which a UDP flow's host socket is closed.
    :ivar dns_timeout: the same for flows to the DNS forwarder.
    :ivar icmp_timeout: the same for ICMP echo flows (ping sockets).
    :ivar tcp_syn_timeout: how long a host ``connect()`` may take before the guest gets an RST.
    :ivar tcp_fin_timeout: how long a closing connection may wait for the guest.
    :ivar tcp_rto: first retransmission timeout for data sent to the guest (doubles, max 8 tries).
    :ivar tcp_sndbuf: ``SO_SNDBUF`` of host TCP sockets (0: kernel autotuning). The window
        advertised to the guest is the free part of it, and autotuning only grows a
        buffer that an application keeps full, which a translator never does.
    :ivar verify_checksums: verify L4 checksums of guest frames (skipped where the
        virtio-net header says the kernel vouches for them).
    :ivar offload: use the virtio-net header for checksum and segmentation offload
        when the tap link has one.
    """

    udp_timeout: float = attrs.field(default=180.0, metadata={"range": (1, 86400)})
    dns_timeout: float = attrs.field(default=10.0, metadata={"range": (1, 3600)})
    icmp_timeout: float = attrs.field(default=10.0, metadata={"range": (1, 3600)})
    tcp_syn_timeout: float = attrs.field(default=30.0, metadata={"range": (1, 600)})
    tcp_fin_timeout: float = attrs.field(default=60.0, metadata={"range": (1, 3600)})
    tcp_rto: float = attrs.field(default=0.2, metadata={"range": (0.01, 10)})
    tcp_sndbuf: int = attrs.field(default=4 << 20, metadata={"range": (0, 1 << 30)})
    verify_checksums: bool = True
    offload: bool = True

"""Entry point of kboxnet-minislirp: registers the minislirp backend."""

from __future__ import annotations

import platform
import socket
from typing import TYPE_CHECKING, ClassVar

from kboxnet_core import hookimpl
from kboxnet_core.availability import Availability
from kboxnet_core.backend import Backend, Session

from .settings import MinislirpSettings

if TYPE_CHECKING:
    from kboxnet_core.backend import SessionContext
    from kboxnet_core.config import Config
    from kboxnet_core.links.base import Link


def ping_sockets_permitted() -> bool:
    """True if this process may open ICMP echo ("ping") sockets."""
    try:
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).close()
    except OSError:
        return False
    return True


class MinislirpBackend(Backend):
    """The embedded, always-available default: pure Python, stdlib only."""

    name: ClassVar[str] = "minislirp"
    description: ClassVar[str] = "pure-Python L2<->L4 translator (passt-style TCP, IPv4 + IPv6)"
    link_kinds: ClassVar[frozenset[str]] = frozenset({"stream", "tap"})
    config_section: ClassVar[str | None] = "minislirp"
    config_model: ClassVar[type | None] = MinislirpSettings
    #: GSO super-frames and checksum offload on tap links (8-10x faster, see bench/RESULTS.md)
    accepts_vnet_hdr: ClassVar[bool] = True
    #: router advertisements (SLAAC) and DHCPv6 when ``[net.ipv6] enabled``
    serves_ipv6: ClassVar[bool] = True

    def probe(self, config: Config) -> Availability:
        try:
            ping = "ping sockets permitted" if ping_sockets_permitted() else \
                "ping sockets not permitted (echo only to gateway/DNS)"
        except Exception as exc:  # noqa: BLE001 - probe must never raise
            ping = f"ping socket check failed: {exc}"
        return Availability.yes(50, f"Python {platform.python_version()}; {ping}",
                                version=f"python {platform.python_version()}")

    def open(self, link: Link, ctx: SessionContext) -> Session:
        from .session import MinislirpSession

        return MinislirpSession(link, ctx, self.section(ctx.config))


@hookimpl
def kboxnet_register_backends():
    return [MinislirpBackend]

"""The minislirp engine: one epoll loop between a guest link and host sockets.

One engine serves both address families: :mod:`.family` holds what differs
between IPv4 and IPv6 (and each family's guest-visible addresses), IPv6 adds
:mod:`.ndp` (router advertisements, neighbour discovery) and :mod:`.dhcp6`.

The engine owns the link, the epoll object, the guest's L2 identity, frame
output (virtio-net header, pcap) and the timers; the protocol modules
(:mod:`.arp`, :mod:`.dhcp`, :mod:`.icmp`, :mod:`.udp`, :mod:`.tcp`) own
their flows and register their host sockets with :meth:`Engine.register`.
Guest frames are read in batches; the work each batch causes (ACKs to the
guest, reads from host sockets) is done once per batch, not once per frame.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kboxnet_core.links.base import Link, LinkClosed

from .arp import Arp
from .counters import Counters
from .dhcp import DhcpServer, host_search_domains
from .dhcp6 import Dhcp6Server
from .family import IPv4, IPv6
from .forward import Forwarder
from .icmp import Icmp
from .ndp import ROUTER_LL, Ndp
from .pcap import PcapWriter
from .settings import MinislirpSettings
from .tcp import Tcp
from .translate import Translator
from .udp import Udp
from .wire import (
    BROADCAST_MAC,
    ETH_P_ARP,
    ETH_P_IP,
    ETH_P_IPV6,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    VNET_F_DATA_VALID,
    VNET_F_NEEDS_CSUM,
    VNET_HDR_NONE,
)

if TYPE_CHECKING:
    from kboxnet_core.config.model import NetConfig

log = logging.getLogger("kboxnet.minislirp")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
#: stop writing host data into the link above this many queued bytes (stream links)
LINK_HIGH_WATER = 8 << 20
TICK = 0.05


class Engine:
    """Translates between one guest link and host sockets (IPv4 and IPv6)."""

    def __init__(self, link: Link, net: NetConfig, settings: MinislirpSettings | None = None) -> None:
        self.link = link
        self.net = net
        self.settings = settings or MinislirpSettings()
        self.counters = Counters()
        self.vnet = bool(link.vnet_hdr)
        self.offload = self.vnet and self.settings.offload
        self.verify = self.settings.verify_checksums
        self.mtu = min(link.mtu or net.mtu, 65520)
        self.guest_mac = BROADCAST_MAC
        self.now = time.monotonic()
        self.ep = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.ipv4 = IPv4()
        v4 = net.ipv4
        self.guest_ip4 = v4.address.packed
        self.gateway4 = v4.gateway.packed
        self.dns4 = v4.dns.packed
        self.translator4 = Translator.from_config(self.gateway4, self.dns4, tuple(net.resolvers()), net.egress,
                                                  net.map_gateway_to_loopback, 4)
        self.local4 = frozenset({self.gateway4, self.dns4})
        fam4 = self.ipv4
        fam4.guest, fam4.gateway, fam4.dns, fam4.local = self.guest_ip4, self.gateway4, self.dns4, self.local4
        v6 = net.ipv6
        #: None when ``[net.ipv6] enabled = false``: IPv6 frames are then dropped and counted
        self.ipv6: IPv6 | None = None
        self.translator6: Translator | None = None
        self.ndp: Ndp | None = None
        self.dhcp6: Dhcp6Server | None = None
        if v6.enabled:
            fam6 = self.ipv6 = IPv6()
            fam6.guest, fam6.gateway, fam6.dns = (IPv6.pack(a) for a in (v6.address, v6.gateway, v6.dns))
            fam6.local = frozenset({fam6.gateway, fam6.dns, ROUTER_LL})
            self.translator6 = Translator.from_config(fam6.gateway, fam6.dns, tuple(net.resolvers()), net.egress,
                                                      net.map_gateway_to_loopback, 6)
            self.ndp = Ndp(self, ipaddress.IPv6Network(v6.prefix), v6.dhcpv6)
            if v6.dhcpv6:
                self.dhcp6 = Dhcp6Server(self, fam6.guest, fam6.dns, v4.lease_time)
        self.pcap = PcapWriter(net.pcap) if net.pcap else None
        self.arp = Arp(self)
        self.dhcp = DhcpServer(self, address=self.guest_ip4, prefix_len=v4.prefix_len, gateway=self.gateway4,
                               dns=self.dns4, lease_time=v4.lease_time, mtu=self.mtu,
                               search=() if net.dns else host_search_domains())
        self.icmp = Icmp(self)
        self.udp = Udp(self)
        self.tcp = Tcp(self)
        self.forwarder = Forwarder(self, net.forward)
        self._link_out = False
        self._logged: set[str] = set()

    # ---- guest identity --------------------------------------------------
    def learn_guest_mac(self, mac: bytes) -> None:
        if mac != self.guest_mac and not mac[0] & 1:
            if self.guest_mac != BROADCAST_MAC:
                log.info("guest MAC changed to %s", mac.hex(":"))
            self.guest_mac = bytes(mac)

    def log_once(self, topic: str, message: str) -> None:
        """Log ``message`` at warning level the first time ``topic`` comes up."""
        if topic not in self._logged:
            self._logged.add(topic)
            log.warning("minislirp: %s", message)

    def _internal_error(self, where: str) -> None:
        """Count and log (first few times) an unexpected exception; the session goes on."""
        self.counters["drop.internal_error"] += 1
        if self.counters["drop.internal_error"] <= 10:
            log.exception("minislirp: internal error in %s (session continues)", where)

    def translator(self, version: int) -> Translator:
        if version == 6 and self.translator6 is not None:
            return self.translator6
        return self.translator4

    # ---- host sockets ------------------------------------------------------
    def register(self, fd: int, events: int, callback: Callable[[int], None]) -> None:
        self.ep.register(fd, events)
        self.handlers[fd] = callback

    def unregister(self, fd: int) -> None:
        """Forget ``fd`` (call before closing it)."""
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except OSError:
                pass

    # ---- output --------------------------------------------------------------
    def link_full(self) -> bool:
        return self.link.pending_bytes() > LINK_HIGH_WATER

    def out_bytes(self, frame: bytes) -> None:
        """Send a small, fully built frame (checksums done) to the guest."""
        if self.pcap is not None:
            self.pcap.write(frame)
        self.link.send_frame(VNET_HDR_NONE + frame if self.vnet else frame)

    def out_view(self, view: memoryview, end: int) -> None:
        """Send ``view[10:end]``; ``view[0:10]`` holds the virtio-net header if the link has one."""
        if self.pcap is not None:
            self.pcap.write(view[10:end])
        self.link.send_frame(view[:end] if self.vnet else view[10:end])

    # ---- input ---------------------------------------------------------------
    def input(self, frame: memoryview) -> None:
        """Handle one guest frame (never raises for malformed input)."""
        csum_ok = not self.verify
        if self.vnet:
            if len(frame) < 10:
                self.counters.drop("vnet_truncated")
                return
            if frame[0] & (VNET_F_NEEDS_CSUM | VNET_F_DATA_VALID):
                csum_ok = True
            frame = frame[10:]
        if self.pcap is not None:
            self.pcap.write(frame)
        if len(frame) < 14:
            self.counters.drop("eth_truncated")
            return
        etype = (frame[12] << 8) | frame[13]
        if etype == ETH_P_IP:
            p = self.ipv4.parse(frame, self.counters)
            if p is None:
                return
            proto = p.proto
            if proto == IPPROTO_TCP:
                self.tcp.input(self.ipv4, frame, p, csum_ok)
            elif proto == IPPROTO_UDP:
                self.udp.input(self.ipv4, frame, p, csum_ok)
            elif proto == IPPROTO_ICMP:
                self.icmp.input(self.ipv4, frame, p, csum_ok)
            else:
                self.counters.drop("ip_proto_unsupported")
        elif etype == ETH_P_ARP:
            self.arp.input(frame)
        elif etype == ETH_P_IPV6:
            fam = self.ipv6
            if fam is None:
                self.counters.drop("ipv6_disabled")
                return
            p = fam.parse(frame, self.counters)
            if p is None:
                return
            proto = p.proto
            if proto == IPPROTO_TCP:
                self.tcp.input(fam, frame, p, csum_ok)
            elif proto == IPPROTO_UDP:
                self.udp.input(fam, frame, p, csum_ok)
            elif proto == IPPROTO_ICMPV6:
                self.icmp.input(fam, frame, p, csum_ok)
            else:
                self.counters.drop("ipv6_proto_unsupported")
        else:
            self.counters.drop("ethertype_unknown")

    def _guest_input(self) -> None:
        link = self.link
        inp = self.input
        for _ in range(8):
            frames = link.recv_frames(256)
            if not frames:
                break
            for frame in frames:
                try:
                    inp(frame)
                except LinkClosed:
                    raise
                except Exception:  # noqa: BLE001 - a bad frame must never end the session
                    self._internal_error("guest frame")
            self.counters["link.frames_in"] += len(frames)
            try:
                self.tcp.end_of_batch()
            except LinkClosed:
                raise
            except Exception:  # noqa: BLE001
                self.tcp.ack_due.clear()
                self._internal_error("end of batch")
            if len(frames) < 256:
                break

    # ---- loop ----------------------------------------------------------------
    def run(self, stop_fd: int, on_ready: Callable[[], None] | None = None) -> str:
        """Serve until ``stop_fd`` is readable (returns "stopped") or the guest leaves (raises LinkClosed)."""
        ep = self.ep
        link = self.link
        link_fd = link.fileno()
        ep.register(link_fd, EPOLLIN)
        ep.register(stop_fd, EPOLLIN)
        handlers = self.handlers
        tcp = self.tcp
        next_tick = time.monotonic() + TICK
        if self.ndp is not None:
            try:
                self.ndp.send_ra()  # the guest may be up already; it also solicits one when it comes up
            except LinkClosed:
                raise
            except Exception:  # noqa: BLE001
                self._internal_error("router advertisement")
        if on_ready is not None:
            on_ready()
        try:
            while True:
                timeout = 0 if (tcp.more and not self.link_full()) else TICK
                events = ep.poll(timeout, 512)
                self.now = now = time.monotonic()
                for fd, ev in events:
                    if fd == link_fd:
                        if ev & ~EPOLLOUT:
                            self._guest_input()
                    elif fd == stop_fd:
                        return "stopped"
                    else:
                        cb = handlers.get(fd)
                        if cb is not None:
                            try:
                                cb(ev)
                            except LinkClosed:
                                raise
                            except Exception:  # noqa: BLE001 - one flow's bug must not end the session
                                self._internal_error("host socket event")
                if tcp.more and not self.link_full():
                    try:
                        tcp.resume()
                    except LinkClosed:
                        raise
                    except Exception:  # noqa: BLE001
                        tcp.more.clear()
                        self._internal_error("resume")
                if not link.flush():
                    if not self._link_out:
                        ep.modify(link_fd, EPOLLIN | EPOLLOUT)
                        self._link_out = True
                elif self._link_out:
                    ep.modify(link_fd, EPOLLIN)
                    self._link_out = False
                if now >= next_tick:
                    next_tick = now + TICK
                    try:
                        tcp.tick(now)
                        self.udp.tick(now)
                        self.icmp.tick(now)
                        if self.ndp is not None:
                            self.ndp.tick(now)
                    except LinkClosed:
                        raise
                    except Exception:  # noqa: BLE001
                        self._internal_error("timers")
        finally:
            for fd in (link_fd, stop_fd):
                try:
                    ep.unregister(fd)
                except OSError:
                    pass

    def close(self) -> None:
        """Close every host socket and the pcap file (never the link)."""
        self.tcp.close_all()
        self.udp.close_all()
        self.forwarder.close()
        self.icmp.close_all()
        self.ep.close()
        if self.pcap is not None:
            self.pcap.close()


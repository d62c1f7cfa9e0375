"""Two small third-party backends used by kboxnet's own tests.

``arp-responder`` answers ARP requests for the gateway address: a real (tiny)
frame protocol, enough to tell whether a guest link is served.
``crashy`` serves nothing and fails on purpose (at start, or after some
frames); it is only available when ``[net.crashy] enabled = true`` and then
ranks above everything, so tests can prove that the supervisor falls back.
"""

from __future__ import annotations

import ipaddress
import select
import struct

import attrs

from kboxnet_core import hookimpl
from kboxnet_core.availability import Availability
from kboxnet_core.backend import Backend, LoopSession, SessionContext, SessionResult
from kboxnet_core.links.base import Link, LinkClosed

ROUTER_MAC = bytes.fromhex("525400000202")


def arp_reply(frame: memoryview, gateway: ipaddress.IPv4Address) -> bytes | None:
    """The ARP reply to ``frame`` if it asks for ``gateway``, else None."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
    if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, 1):
        return None
    sha, spa, tpa = bytes(frame[22:28]), bytes(frame[28:32]), bytes(frame[38:42])
    if tpa != gateway.packed:
        return None
    return (sha + ROUTER_MAC + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2)
            + ROUTER_MAC + tpa + sha + spa)


class ArpSession(LoopSession):
    def __init__(self, link: Link, ctx: SessionContext) -> None:
        super().__init__()
        self.link = link
        self.gateway = ctx.config.net.ipv4.gateway
        self.stats = {"frames_in": 0, "arp_replies": 0}

    def run(self, stop_fd: int) -> SessionResult:
        poller = select.poll()
        poller.register(self.link.fileno(), select.POLLIN)
        poller.register(stop_fd, select.POLLIN)
        self.mark_ready()
        while True:
            for fd, _ in poller.poll(1000):
                if fd == stop_fd:
                    return SessionResult(True, "stopped")
                try:
                    for frame in self.link.recv_frames():
                        self.stats["frames_in"] += 1
                        reply = arp_reply(frame, self.gateway)
                        if reply is not None:
                            self.link.send_frame(reply)
                            self.stats["arp_replies"] += 1
                    self.link.flush()
                except LinkClosed as exc:
                    return SessionResult(True, f"guest gone: {exc}", guest_gone=True)

    def counters(self) -> dict[str, int]:
        return dict(self.stats)


class ArpResponderBackend(Backend):
    name = "arp-responder"
    description = "test backend: answers ARP for the gateway, nothing else"

    def probe(self, config):
        return Availability.yes(1, "always available (test backend)", version="0.1.0")

    def open(self, link, ctx):
        return ArpSession(link, ctx)


@attrs.frozen
class CrashySettings:
    """``[net.crashy]``."""

    enabled: bool = False
    #: "start" (raise in open), "ready" (never ready), or "frames" (die after N frames)
    fail: str = attrs.field(default="frames", metadata={"choices": ("start", "ready", "frames")})
    after_frames: int = 1


class CrashySession(LoopSession):
    def __init__(self, link: Link, settings: CrashySettings) -> None:
        super().__init__()
        self.link = link
        self.settings = settings

    def run(self, stop_fd: int) -> SessionResult:
        if self.settings.fail != "ready":
            self.mark_ready()
        seen = 0
        poller = select.poll()
        poller.register(self.link.fileno(), select.POLLIN)
        poller.register(stop_fd, select.POLLIN)
        while True:
            for fd, _ in poller.poll(1000):
                if fd == stop_fd:
                    return SessionResult(True, "stopped")
                # consume nothing: leave the guest's frames for the next backend
                seen += 1
                if seen >= self.settings.after_frames:
                    raise RuntimeError("crashy backend crashed on purpose")


class CrashyBackend(Backend):
    name = "crashy"
    description = "test backend that fails on purpose (for fallback tests)"
    config_section = "crashy"
    config_model = CrashySettings

    def probe(self, config):
        if not self.section(config).enabled:
            return Availability.no("disabled", hint="set [net.crashy] enabled = true")
        return Availability.yes(1000, "enabled for a fallback test", version="0.1.0")

    def open(self, link, ctx):
        settings = self.section(ctx.config)
        if settings.fail == "start":
            raise RuntimeError("crashy backend refuses to start (on purpose)")
        return CrashySession(link, settings)


@hookimpl
def kboxnet_register_backends():
    return [ArpResponderBackend, CrashyBackend]

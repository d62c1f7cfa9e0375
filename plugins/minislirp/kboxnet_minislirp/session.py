"""The minislirp session: runs the engine's epoll loop in the session thread."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kboxnet_core.backend import LoopSession, SessionResult
from kboxnet_core.links.base import LinkClosed

from .engine import Engine

if TYPE_CHECKING:
    from kboxnet_core.backend import SessionContext
    from kboxnet_core.links.base import Link

    from .settings import MinislirpSettings

log = logging.getLogger("kboxnet.minislirp")


class MinislirpSession(LoopSession):
    """Serves one guest link until stopped or until the guest goes away."""

    backend_name = "minislirp"
    thread_name = "kboxnet-minislirp"

    def __init__(self, link: Link, ctx: SessionContext, settings: MinislirpSettings | None = None) -> None:
        super().__init__()
        self.link = link
        self.ctx = ctx
        self.engine = Engine(link, ctx.config.net, settings)

    def run(self, stop_fd: int) -> SessionResult | None:
        engine = self.engine
        log.info("minislirp serving %s (mtu %d, offload %s)", self.link.describe(), engine.mtu, engine.offload)
        try:
            engine.run(stop_fd, on_ready=self.mark_ready)
        except LinkClosed as exc:
            return SessionResult(ok=True, reason=f"guest gone: {exc}", guest_gone=True)
        finally:
            engine.close()
            log.info("minislirp counters: %s", engine.counters.summary())
        return SessionResult(ok=True, reason="stopped")

    def counters(self) -> Mapping[str, int]:
        return dict(self.engine.counters)

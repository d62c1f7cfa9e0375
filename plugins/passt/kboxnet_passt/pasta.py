"""pasta mode: the passt binary, run as pasta, attaches to ``kboxnet run``'s namespace.

pasta creates and serves a tap device of its own inside the namespace, so no
frame passes through Python. The namespace's existing tap (the link the
supervisor owns) cannot be shared with it (a second ``TUNSETIFF`` on an
attached tap fails), so for the session's lifetime:

1. the link's interface is set down (its addresses stay; its routes go);
2. pasta creates ``<ifname>p`` and configures it (``--config-net``) with the
   same guest profile: address, gateway route, MTU;
3. when pasta ends (stop, crash), its interface disappears with it; the
   session sets the link's interface up again and restores the default
   route via the gateway, so the next backend (fallback) serves the same
   guest addressing on the original tap.

Established connections do not survive the switch either way.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import subprocess

from kboxnet_core.backend import SessionContext, SessionResult
from kboxnet_core.links.base import Link
from kboxnet_core.netns import entered_netns, set_link

from .detect import BinaryInfo
from .plan import Plan
from .process import PasstProcess
from .session import PasstProcessSession
from .settings import PasstSettings

log = logging.getLogger(__name__)


def pasta_ifname(ifname: str) -> str:
    return (ifname[:14] + "p") if len(ifname) >= 15 else ifname + "p"


def pasta_argv(settings: PasstSettings, info: BinaryInfo, plan: Plan, netns_path: str, ifname: str) -> list[str]:
    pasta = os.path.join(os.path.dirname(info.path), "pasta")
    argv = [*settings.wrapper, pasta, "--foreground", "--stderr", "--quiet", "--config-net",
            "--ns-ifname", ifname, "--tcp-ns", "none", "--udp-ns", "none", *plan.args]
    if os.geteuid() == 0:
        # as root, passt/pasta drop to nobody, which may not join a root-owned namespace
        argv += ["--runas", "0"]
    return [*argv, *settings.extra_args, "--netns", netns_path]


class PastaSession(PasstProcessSession):
    mode = "pasta"
    thread_name = "pasta"

    def __init__(self, link: Link, ctx: SessionContext, settings: PasstSettings, info: BinaryInfo,
                 plan: Plan) -> None:
        assert ctx.netns is not None
        super().__init__(ipv6=plan.ipv6)
        self.link = link
        self.ctx = ctx
        self.netns = ctx.netns
        self.ifname = pasta_ifname(ctx.netns.ifname)
        self.argv = pasta_argv(settings, info, plan, ctx.netns.path, self.ifname)
        self._ready_timeout = settings.ready_timeout

    # -- the guest's interface ------------------------------------------------------
    def _set_guest_link(self, up: bool) -> None:
        gateway = str(self.ctx.config.net.ipv4.gateway)
        with entered_netns(self.netns.path):
            set_link(self.netns.ifname, up=up)
            if up:
                # the default route went away with the interface; children inherit our netns
                subprocess.run(["ip", "route", "replace", "default", "via", gateway, "dev", self.netns.ifname],
                               capture_output=True, check=False, timeout=10)

    def _after(self) -> None:
        try:
            self._set_guest_link(True)
        except OSError as exc:
            log.error("pasta: could not restore %s: %s", self.netns.ifname, exc)

    def _serve(self, stop_fd: int) -> SessionResult:
        self._set_guest_link(False)
        log.info("starting pasta on %s (interface %s): %s", self.netns.path, self.ifname, shlex.join(self.argv))
        proc = self._proc = PasstProcess(self.argv, name="pasta", on_line=self._on_stderr)
        if not proc.wait_ready(self._ready_timeout):
            if proc.poll() is None:
                return SessionResult(False, f"pasta did not finish start-up within {self._ready_timeout:.1f} s")
            return SessionResult(False, f"pasta failed to start: {proc.exit_description()}")
        self.mark_ready()
        poller = select.poll()
        poller.register(stop_fd, select.POLLIN)
        while proc.poll() is None:
            if poller.poll(200):
                proc.terminate()
                return SessionResult(True, "stopped")
        if self._stopping:
            return SessionResult(True, "stopped")
        return SessionResult(False, f"pasta ended: {proc.exit_description()}")

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
import threading
from collections.abc import Mapping

from kboxnet_core.backend import Session, SessionContext, SessionResult, SessionState
from kboxnet_core.links.base import Link
from kboxnet_core.netns import entered_netns, set_link

from .detect import BinaryInfo
from .plan import Plan
from .process import PasstProcess
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


class PastaSession(Session):
    backend_name = "passt"
    mode = "pasta"

    def __init__(self, link: Link, ctx: SessionContext, settings: PasstSettings, info: BinaryInfo,
                 plan: Plan) -> None:
        assert ctx.netns is not None
        self.link = link
        self.ctx = ctx
        self.netns = ctx.netns
        self.ifname = pasta_ifname(ctx.netns.ifname)
        self.argv = pasta_argv(settings, info, plan, ctx.netns.path, self.ifname)
        self._ready_timeout = settings.ready_timeout
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ready = threading.Event()
        self._done = threading.Event()
        self._stopping = False
        self._result: SessionResult | None = None
        self._proc: PasstProcess | None = None
        self.state = SessionState.NEW

    def start(self) -> None:
        self.state = SessionState.STARTING
        threading.Thread(target=self._main, name="pasta", daemon=True).start()

    def ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self.state is SessionState.READY

    def wait(self, timeout: float | None = None) -> SessionResult | None:
        return self._result if self._done.wait(timeout) else None

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def pids(self) -> list[int]:
        proc = self._proc
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def counters(self) -> Mapping[str, int]:
        return {}

    # -- the guest's interface ------------------------------------------------------
    def _set_guest_link(self, up: bool) -> None:
        gateway = str(self.ctx.config.net.ipv4.gateway)
        with entered_netns(self.netns.path):
            set_link(self.netns.ifname, up=up)
            if up:
                # the default route went away with the interface; children inherit our netns
                subprocess.run(["ip", "route", "replace", "default", "via", gateway, "dev", self.netns.ifname],
                               capture_output=True, check=False, timeout=10)

    def _main(self) -> None:
        try:
            result = self._serve()
        except Exception as exc:  # noqa: BLE001
            log.exception("pasta session crashed")
            result = SessionResult(False, f"pasta session error: {type(exc).__name__}: {exc}")
        finally:
            if self._proc is not None:
                self._proc.terminate()
            try:
                self._set_guest_link(True)
            except OSError as exc:
                log.error("pasta: could not restore %s: %s", self.netns.ifname, exc)
        self._result = result
        self.state = SessionState.STOPPED if result.ok else SessionState.FAILED
        self._done.set()
        self._ready.set()
        for fd in (self._stop_r, self._stop_w):
            os.close(fd)

    def _serve(self) -> SessionResult:
        self._set_guest_link(False)
        log.info("starting pasta on %s (interface %s): %s", self.netns.path, self.ifname, shlex.join(self.argv))
        proc = self._proc = PasstProcess(self.argv, name="pasta")
        if not proc.wait_ready(self._ready_timeout):
            if proc.poll() is None:
                return SessionResult(False, f"pasta did not finish start-up within {self._ready_timeout:.1f} s")
            return SessionResult(False, f"pasta failed to start: {proc.exit_description()}")
        self.state = SessionState.READY
        self._ready.set()
        poller = select.poll()
        poller.register(self._stop_r, select.POLLIN)
        while proc.poll() is None:
            if poller.poll(200):
                proc.terminate()
                return SessionResult(True, "stopped")
        if self._stopping:
            return SessionResult(True, "stopped")
        return SessionResult(False, f"pasta ended: {proc.exit_description()}")

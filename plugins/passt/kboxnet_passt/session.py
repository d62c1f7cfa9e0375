"""A passt session on one guest link.

Modes:

* ``direct``: the stream link's connected socket itself is passed to passt
  (``--fd``); frames go VMM <-> passt with no copy in kboxnet.
* ``relay``: passt gets one end of a socketpair and :class:`~kboxnet_passt.relay.Relay`
  copies frames to and from the link (tap links; old passt builds whose
  defects are repaired on the way).
* ``pasta``: see :mod:`kboxnet_passt.pasta`.

One monitor thread per session spawns passt (so ``PR_SET_PDEATHSIG`` is tied
to a thread that lives exactly as long as passt), waits for readiness, runs
the relay or watches the process, and turns the way passt ended into a
:class:`~kboxnet_core.backend.SessionResult`. A session never closes the link.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import socket
from collections.abc import Callable, Mapping, Sequence

from kboxnet_core.backend import LoopSession, SessionContext, SessionResult
from kboxnet_core.links.base import Link, LinkClosed
from kboxnet_core.netns import entered_netns, set_link

from .fixups import Fixups
from .process import IPV6_OFF, IPV6_OFF_WARNING, PasstProcess
from .relay import PasstClosed, Relay, make_socketpair

log = logging.getLogger(__name__)


class PasstProcessSession(LoopSession):
    """A session whose event loop owns one passt (or pasta) process.

    ``run()`` is the monitor thread of :class:`~kboxnet_core.backend.LoopSession`; the process
    is spawned from it (so ``PR_SET_PDEATHSIG`` follows a thread that lives exactly as long as
    passt) and terminated when it returns.
    """

    backend_name = "passt"

    def __init__(self, ipv6: bool = False) -> None:
        super().__init__()
        self._proc: PasstProcess | None = None
        self._stopping = False
        #: passt was given the IPv6 profile
        self._ipv6 = ipv6
        #: ... and said that it turned IPv6 off (no IPv6 default route on the host)
        self.ipv6_off = False

    def counters(self) -> Mapping[str, int]:
        return {"passt_ipv6_off": int(self.ipv6_off)} if self._ipv6 else {}

    def _on_stderr(self, line: str) -> None:
        """Called with each line passt prints: a warning when it turned IPv6 off (logged once)."""
        if self._ipv6 and not self.ipv6_off and IPV6_OFF in line:
            self.ipv6_off = True
            log.warning("%s: %s", self.backend_name, IPV6_OFF_WARNING)

    def stop(self) -> None:
        self._stopping = True
        super().stop()

    def pids(self) -> list[int]:
        proc = self._proc
        return [proc.pid] if proc is not None and proc.poll() is None else []

    def health(self) -> str:
        proc = self._proc
        if proc is None:
            return "starting"
        return "ok" if proc.poll() is None else proc.exit_description()

    def run(self, stop_fd: int) -> SessionResult:
        try:
            return self._serve(stop_fd)
        finally:
            if self._proc is not None:
                self._proc.terminate()
            self._after()

    def _serve(self, stop_fd: int) -> SessionResult:
        raise NotImplementedError

    def _after(self) -> None:
        """Clean-up after the process ended (runs in the monitor thread)."""


class PasstSession(PasstProcessSession):
    """passt serving one link (direct or relay mode).

    :param argv_for_fd: builds passt's full argv given the fd number it gets.
    :param guest_mtu: an MTU lower than ``[net] mtu`` that passt was given (see
        :data:`~kboxnet_passt.quirks.RELAY_MTU_LIMIT`): the guest interface of a
        ``kboxnet run`` namespace (``ctx.netns``) is set to it for the session's
        lifetime and restored afterwards, so the next backend gets the MTU asked for.
    :param ipv6: passt was given the IPv6 profile: when it says it turned IPv6 off (no IPv6
        default route on the host), that is logged as a warning and counted
        (``passt_ipv6_off`` = 1).
    """

    def __init__(self, link: Link, ctx: SessionContext, argv_for_fd: Callable[[int], Sequence[str]],
                 mode: str, fixups: Fixups | None = None, ready_timeout: float = 5.0,
                 guest_mtu: int | None = None, ipv6: bool = False) -> None:
        if mode not in ("direct", "relay"):
            raise ValueError(f"unknown mode {mode!r}")
        super().__init__(ipv6)
        self.thread_name = f"passt-{mode}"
        self.link = link
        self.ctx = ctx
        self.mode = mode
        self._argv_for_fd = argv_for_fd
        self._fixups = fixups
        self._ready_timeout = ready_timeout
        self._relay: Relay | None = None
        self._guest_mtu = guest_mtu if ctx.netns is not None and guest_mtu != ctx.config.net.mtu else None
        self.argv: list[str] = []

    def counters(self) -> Mapping[str, int]:
        out = dict(self._relay.counters()) if self._relay is not None else {}
        out.update(super().counters())
        return out

    def _spawn(self, fd: int) -> PasstProcess:
        self.argv = list(self._argv_for_fd(fd))
        log.info("starting passt (%s mode, attempt %d): %s", self.mode, self.ctx.attempt + 1,
                 shlex.join(self.argv))
        proc = PasstProcess(self.argv, pass_fds=(fd,), on_line=self._on_stderr)
        self._proc = proc
        return proc

    def _await_ready(self, proc: PasstProcess) -> SessionResult | None:
        if proc.wait_ready(self._ready_timeout):
            self.mark_ready()
            return None
        if proc.poll() is None:
            return SessionResult(False, f"passt did not finish start-up within {self._ready_timeout:.1f} s")
        return SessionResult(False, f"passt failed to start: {proc.exit_description()}")

    def _serve(self, stop_fd: int) -> SessionResult:
        if self.mode == "direct":
            return self._serve_direct(stop_fd)
        return self._serve_relay(stop_fd)

    def _serve_direct(self, stop_fd: int) -> SessionResult:
        sock: socket.socket = self.link.socket  # type: ignore[attr-defined]
        fd = sock.fileno()
        was_blocking = sock.getblocking()
        # passt (2023) completes partial frames with a blocking recv(): the file
        # description is shared, so give it a blocking socket while it owns it.
        sock.setblocking(True)
        try:
            proc = self._spawn(fd)
            failed = self._await_ready(proc)
            if failed is not None:
                return failed
            return self._watch(proc, sock, stop_fd)
        finally:
            sock.setblocking(was_blocking)

    def _watch(self, proc: PasstProcess, sock: socket.socket, stop_fd: int) -> SessionResult:
        pidfd = _pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(stop_fd, select.POLLIN)
            if pidfd is not None:
                poller.register(pidfd, select.POLLIN)
            while proc.poll() is None:
                events = poller.poll(None if pidfd is not None else 200)
                if any(fd == stop_fd for fd, _ in events):
                    proc.terminate()
                    return SessionResult(True, "stopped")
        finally:
            if pidfd is not None:
                os.close(pidfd)
        proc.wait(1.0)
        if self._stopping:
            return SessionResult(True, "stopped")
        if proc.proc.returncode == 0 and _peer_closed(sock):
            return SessionResult(True, "guest closed the connection", guest_gone=True)
        return SessionResult(False, f"passt ended: {proc.exit_description()}")

    def _set_guest_mtu(self, mtu: int) -> None:
        assert self.ctx.netns is not None
        with entered_netns(self.ctx.netns.path):
            set_link(self.ctx.netns.ifname, mtu=mtu)

    def _after(self) -> None:
        if self._guest_mtu is not None:
            try:
                self._set_guest_mtu(self.ctx.config.net.mtu)
            except OSError as exc:
                log.error("passt: could not restore the MTU of the guest interface: %s", exc)

    def _serve_relay(self, stop_fd: int) -> SessionResult:
        if self._guest_mtu is not None:
            log.info("passt: guest interface MTU set to %d for this session", self._guest_mtu)
            self._set_guest_mtu(self._guest_mtu)
        ours, theirs = make_socketpair()
        try:
            try:
                proc = self._spawn(theirs.fileno())
            finally:
                theirs.close()
            failed = self._await_ready(proc)
            if failed is not None:
                return failed
            self._relay = Relay(self.link, ours, self._fixups)
            try:
                self._relay.run(stop_fd)
            except LinkClosed as exc:
                return SessionResult(True, f"guest link closed: {exc}", guest_gone=True)
            except PasstClosed as exc:
                proc.wait(1.0)
                if self._stopping:
                    return SessionResult(True, "stopped")
                status = proc.exit_description() if proc.poll() is not None else f"passt still running ({exc})"
                return SessionResult(False, f"passt ended: {status}")
            proc.terminate()
            return SessionResult(True, "stopped")
        finally:
            ours.close()


def _pidfd_open(pid: int) -> int | None:
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except OSError:
        return None


def _peer_closed(sock: socket.socket) -> bool:
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return data == b""

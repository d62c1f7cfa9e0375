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
import threading
from collections.abc import Callable, Mapping, Sequence

from kboxnet_core.backend import Session, SessionContext, SessionResult, SessionState
from kboxnet_core.links.base import Link, LinkClosed

from .fixups import Fixups
from .process import PasstProcess
from .relay import PasstClosed, Relay, make_socketpair

log = logging.getLogger(__name__)


class PasstSession(Session):
    """passt serving one link (direct or relay mode).

    :param argv_for_fd: builds passt's full argv given the fd number it gets.
    """

    backend_name = "passt"

    def __init__(self, link: Link, ctx: SessionContext, argv_for_fd: Callable[[int], Sequence[str]],
                 mode: str, fixups: Fixups | None = None, ready_timeout: float = 5.0) -> None:
        if mode not in ("direct", "relay"):
            raise ValueError(f"unknown mode {mode!r}")
        self.link = link
        self.ctx = ctx
        self.mode = mode
        self._argv_for_fd = argv_for_fd
        self._fixups = fixups
        self._ready_timeout = ready_timeout
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ready = threading.Event()
        self._done = threading.Event()
        self._stopping = False
        self._result: SessionResult | None = None
        self._proc: PasstProcess | None = None
        self._relay: Relay | None = None
        self._thread: threading.Thread | None = None
        self.state = SessionState.NEW
        self.argv: list[str] = []

    # -- Session API ----------------------------------------------------------------
    def start(self) -> None:
        self.state = SessionState.STARTING
        self._thread = threading.Thread(target=self._main, name=f"passt-{self.mode}", daemon=True)
        self._thread.start()

    def ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self.state is SessionState.READY

    def wait(self, timeout: float | None = None) -> SessionResult | None:
        if not self._done.wait(timeout):
            return None
        return self._result

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
        return self._relay.counters() if self._relay is not None else {}

    def health(self) -> str:
        proc = self._proc
        if proc is None:
            return "starting"
        return "ok" if proc.poll() is None else proc.exit_description()

    # -- monitor thread -------------------------------------------------------------
    def _main(self) -> None:
        try:
            result = self._serve()
        except Exception as exc:  # noqa: BLE001 - becomes the session's failure reason
            log.exception("passt session crashed")
            result = SessionResult(False, f"passt session error: {type(exc).__name__}: {exc}")
        finally:
            if self._proc is not None:
                self._proc.terminate()
        self._result = result
        self.state = SessionState.STOPPED if result.ok else SessionState.FAILED
        self._done.set()
        self._ready.set()
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _spawn(self, fd: int) -> PasstProcess:
        self.argv = list(self._argv_for_fd(fd))
        log.info("starting passt (%s mode, attempt %d): %s", self.mode, self.ctx.attempt + 1,
                 shlex.join(self.argv))
        proc = PasstProcess(self.argv, pass_fds=(fd,))
        self._proc = proc
        return proc

    def _await_ready(self, proc: PasstProcess) -> SessionResult | None:
        if proc.wait_ready(self._ready_timeout):
            self.state = SessionState.READY
            self._ready.set()
            return None
        if proc.poll() is None:
            return SessionResult(False, f"passt did not finish start-up within {self._ready_timeout:.1f} s")
        return SessionResult(False, f"passt failed to start: {proc.exit_description()}")

    def _serve(self) -> SessionResult:
        if self.mode == "direct":
            return self._serve_direct()
        return self._serve_relay()

    def _serve_direct(self) -> SessionResult:
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
            return self._watch(proc, sock)
        finally:
            sock.setblocking(was_blocking)

    def _watch(self, proc: PasstProcess, sock: socket.socket) -> SessionResult:
        pidfd = _pidfd_open(proc.pid)
        try:
            poller = select.poll()
            poller.register(self._stop_r, select.POLLIN)
            if pidfd is not None:
                poller.register(pidfd, select.POLLIN)
            while proc.poll() is None:
                events = poller.poll(None if pidfd is not None else 200)
                if any(fd == self._stop_r for fd, _ in events):
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

    def _serve_relay(self) -> SessionResult:
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
                self._relay.run(self._stop_r)
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

"""The supervisor: runs sessions on guest links and falls back on failure.

It starts the first candidate backend on a link, waits for readiness,
forwards SIGTERM/SIGINT (as :meth:`Supervisor.request_stop`), reaps child
processes, removes its runtime directory, and when a session fails while the
guest is still connected it starts the next candidate (rank order) on the
same link, asking the ``kboxnet_fallback`` hook first.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

import attrs

from .backend import NetnsTarget, Session, SessionContext, SessionResult
from .config import Config
from .links.base import Link
from .ranking import Ranked
from .registry import Registry

log = logging.getLogger(__name__)

READY_TIMEOUT = 5.0


@attrs.frozen
class LinkOutcome:
    """How serving one guest link ended."""

    result: SessionResult
    backend: str
    attempts: int
    stopped: bool = False

    @property
    def ok(self) -> bool:
        return self.result.ok


@attrs.define
class Supervisor:
    registry: Registry
    config: Config
    candidates: list[Ranked]
    runtime_dir: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="kboxnet-")))
    ready_timeout: float = READY_TIMEOUT
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _current: Session | None = None
    history: list[tuple[str, SessionResult]] = attrs.field(factory=list)

    # -- signals ---------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            # Stop first: the handler runs between two bytecodes of the main thread, possibly inside a write
            # to stderr, where logging can raise ("reentrant call"); the stop must not depend on the log line.
            self.request_stop()
            try:
                log.info("received %s, stopping", signal.Signals(signum).name)
            except Exception:  # noqa: BLE001, S110 - a lost log line must not undo the stop
                pass

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def request_stop(self) -> None:
        self._stop.set()
        session = self._current
        if session is not None:
            session.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def current_session(self) -> Session | None:
        return self._current

    # -- serving -----------------------------------------------------------------
    def serve_link(self, link: Link, netns: NetnsTarget | None = None,
                   on_ready: callable | None = None) -> LinkOutcome:  # type: ignore[valid-type]
        """Serve ``link`` until the guest leaves, a stop is requested, or no backend is left."""
        hook = self.registry.pm.hook
        hook.kboxnet_netdev_init(link=link, config=self.config)
        failed: Ranked | None = None
        reason = ""
        attempt = 0
        last = SessionResult(False, "no backend was tried")
        for cand in self.candidates:
            backend = cand.backend
            assert backend is not None
            if failed is not None:
                if not self.config.net.fallback:
                    break
                if link.closed:
                    break
                verdict = hook.kboxnet_fallback(failed=failed.backend, candidate=backend, reason=reason)
                if verdict is False:
                    log.info("fallback to %s vetoed by a plugin", cand.name)
                    continue
                log.warning("falling back from %s to %s on %s: %s", failed.name, cand.name,
                            link.describe(), reason)
            if self._stop.is_set():
                return LinkOutcome(SessionResult(True, "stopped"), cand.name, attempt, stopped=True)
            ctx = SessionContext(self.config, self.runtime_dir, netns, attempt)
            attempt += 1
            result = self._run_session(cand, link, ctx, on_ready)
            self.history.append((cand.name, result))
            last = result
            if result.ok or result.guest_gone or self._stop.is_set():
                return LinkOutcome(result, cand.name, attempt, stopped=self._stop.is_set())
            failed, reason = cand, result.reason
        return LinkOutcome(last, failed.name if failed else "", attempt)

    def _run_session(self, cand: Ranked, link: Link, ctx: SessionContext,
                     on_ready: callable | None) -> SessionResult:  # type: ignore[valid-type]
        backend = cand.backend
        assert backend is not None
        hook = self.registry.pm.hook
        try:
            link.adapt_to(backend.accepts_vnet_hdr)
            session = backend.open(link, ctx)
            session.backend_name = backend.name
        except Exception as exc:  # noqa: BLE001 - a failed start is a fallback reason
            log.error("backend %s could not open %s: %s", cand.name, link.describe(), exc)
            return SessionResult(False, f"{cand.name} failed to open: {exc}")
        self._current = session
        try:
            t0 = time.monotonic()
            try:
                session.start()
            except Exception as exc:  # noqa: BLE001
                log.error("backend %s failed to start: %s", cand.name, exc)
                session.stop()
                self._reap(session)
                return SessionResult(False, f"{cand.name} failed to start: {exc}")
            if not session.ready(self.ready_timeout):
                early = session.wait(0)
                session.stop()
                result = early or session.wait(2.0) or SessionResult(False, "not ready in time")
                if result.ok and not result.guest_gone:
                    result = SessionResult(False, f"{cand.name} not ready within {self.ready_timeout:.0f} s")
                self._reap(session)
                log.error("backend %s did not become ready: %s", cand.name, result.reason)
                hook.kboxnet_session_stopped(backend=backend, session=session, result=result)
                return result
            log.info("backend %s ready on %s after %.0f ms (attempt %d)", cand.name, link.describe(),
                     (time.monotonic() - t0) * 1000, ctx.attempt + 1)
            hook.kboxnet_session_started(backend=backend, session=session, ctx=ctx)
            if on_ready is not None:
                on_ready(session)
            if self._stop.is_set():
                session.stop()
            result = None
            while result is None:
                result = session.wait(0.5)
                if self._stop.is_set():
                    session.stop()
                    result = session.wait(5.0) or SessionResult(True, "stopped (forced)")
                    break
            self._reap(session)
            if self._stop.is_set() and not result.guest_gone:
                result = SessionResult(True, "stopped on request")
            counters = dict(session.counters())
            if counters:
                log.info("backend %s counters: %s", cand.name,
                         " ".join(f"{k}={v}" for k, v in sorted(counters.items()) if v))
            (log.info if result.ok else log.error)("backend %s session ended: %s", cand.name, result.reason)
            hook.kboxnet_session_stopped(backend=backend, session=session, result=result)
            return result
        finally:
            self._current = None

    def _reap(self, session: Session, grace: float = 2.0) -> None:
        """Make sure every child process of ``session`` is gone (TERM, then KILL)."""
        pids = [p for p in session.pids() if p > 0]
        deadline = time.monotonic() + grace
        for pid in pids:
            while True:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                if time.monotonic() > deadline:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        break
                    deadline = time.monotonic() + 5
                elif time.monotonic() > deadline - grace / 2:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        break
                time.sleep(0.02)

    def cleanup(self) -> None:
        shutil.rmtree(self.runtime_dir, ignore_errors=True)

"""The backend and session interfaces (hatch/tox style: classes, not hooks).

A plugin registers :class:`Backend` subclasses through the
``kboxnet_register_backends`` hook. The core instantiates each once, asks it
to :meth:`Backend.probe` (never raises), and for the chosen one calls
:meth:`Backend.open` with a guest link to get a :class:`Session`.
"""

from __future__ import annotations

import abc
import enum
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from .availability import Availability

if TYPE_CHECKING:
    from .config import Config
    from .links.base import Link


class BackendKind(enum.Enum):
    """What a backend does.

    ``FRAME``: serves Ethernet frames on a link (passt, minislirp).
    ``COMMAND``: wraps the command started by ``kboxnet run`` and relies on a
    frame backend for everything it does not take over (host-bypass).
    """

    FRAME = "frame"
    COMMAND = "command"


@attrs.frozen
class NetnsTarget:
    """The network namespace a tap link lives in (``kboxnet run``).

    :ivar path: a path that opens the namespace (``/proc/PID/ns/net``).
    :ivar ifname: the guest interface name inside it.
    :ivar pid: a process living in the namespace (holds it open).
    """

    path: str
    ifname: str
    pid: int


@attrs.frozen
class SessionContext:
    """Everything a backend needs to open a session.

    :ivar config: the validated configuration (``config.net`` is the guest profile).
    :ivar runtime_dir: a private directory for sockets, pid files and logs;
        the supervisor removes it.
    :ivar netns: set when the link is a tap device in a namespace created by
        ``kboxnet run`` (backends such as pasta can attach to it directly).
    :ivar attempt: 0 for the first backend on a link, 1.. after fallbacks.
    """

    config: Config
    runtime_dir: Path
    netns: NetnsTarget | None = None
    attempt: int = 0


class SessionState(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    READY = "ready"
    STOPPED = "stopped"
    FAILED = "failed"


@attrs.frozen
class SessionResult:
    """How a session ended.

    :ivar ok: ended because it was asked to (stop) or the guest left.
    :ivar reason: human-readable cause; for failures, the thing to log.
    :ivar guest_gone: the guest link is closed; no fallback makes sense.
    """

    ok: bool
    reason: str = ""
    guest_gone: bool = False


class Session(abc.ABC):
    """A backend running on one guest link.

    Lifecycle: ``start()`` (returns quickly), ``ready(timeout)``, then
    ``wait()`` until it ends by itself or ``stop()`` is called. A session
    never closes the link it was given: the supervisor may hand it to the
    next backend.
    """

    backend_name: str = ""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def ready(self, timeout: float) -> bool:
        """Block up to ``timeout`` s until the session serves the guest."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> SessionResult | None:
        """Block until the session ends; None if still running at timeout."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Ask the session to end (idempotent, returns quickly)."""

    def counters(self) -> Mapping[str, int]:
        """Per-protocol and per-drop-reason counters (may be empty)."""
        return {}

    def health(self) -> str:
        return "ok"

    def pids(self) -> list[int]:
        """Child processes this session started (for the supervisor's reaping)."""
        return []


class LoopSession(Session):
    """A session whose work is an event loop run in a thread.

    Subclasses implement :meth:`run`; it must return when ``stop_fd``
    becomes readable. Raising ends the session as failed with the exception
    as its reason; returning a :class:`SessionResult` ends it with that.
    """

    thread_name = "kboxnet-session"

    def __init__(self) -> None:
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ready = threading.Event()
        self._done = threading.Event()
        self._result: SessionResult | None = None
        self._thread: threading.Thread | None = None
        self.state = SessionState.NEW

    @abc.abstractmethod
    def run(self, stop_fd: int) -> SessionResult | None: ...

    def mark_ready(self) -> None:
        self.state = SessionState.READY
        self._ready.set()

    def _main(self) -> None:
        try:
            result = self.run(self._stop_r) or SessionResult(True, "stopped")
        except Exception as exc:  # noqa: BLE001 - reported as the session's failure
            import logging

            logging.getLogger(__name__).exception("session %s crashed", self.backend_name)
            result = SessionResult(False, f"{type(exc).__name__}: {exc}")
        self._result = result
        self.state = SessionState.STOPPED if result.ok else SessionState.FAILED
        self._done.set()
        self._ready.set()
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def start(self) -> None:
        self.state = SessionState.STARTING
        self._thread = threading.Thread(target=self._main, name=self.thread_name, daemon=True)
        self._thread.start()

    def ready(self, timeout: float) -> bool:
        self._ready.wait(timeout)
        return self.state is SessionState.READY

    def wait(self, timeout: float | None = None) -> SessionResult | None:
        if not self._done.wait(timeout):
            return None
        return self._result

    def stop(self) -> None:
        if self._done.is_set():
            return
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass


class Backend(abc.ABC):
    """A networking backend (one per registered class, instantiated once).

    :cvar name: the name users select (``--backend``, ``KBOXNET_BACKEND``, config).
    :cvar description: one line for ``kboxnet backends``.
    :cvar kind: :class:`BackendKind` (frame or command wrapper).
    :cvar link_kinds: link kinds :meth:`open` accepts (``"stream"``, ``"tap"``).
    :cvar auto_select: False for backends used only when named (host-bypass).
    :cvar config_section: the ``[net.<section>]`` table this backend owns.
    :cvar config_model: attrs class for that table (validated by the core).
    :cvar accepts_vnet_hdr: :meth:`open` handles tap links whose frames carry
        the 10-byte virtio-net header (GSO super-frames, checksum offload).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    kind: ClassVar[BackendKind] = BackendKind.FRAME
    link_kinds: ClassVar[frozenset[str]] = frozenset({"stream", "tap"})
    auto_select: ClassVar[bool] = True
    config_section: ClassVar[str | None] = None
    config_model: ClassVar[type | None] = None
    #: accepts tap links opened with the virtio-net header (and offloads)
    accepts_vnet_hdr: ClassVar[bool] = False
    #: sends IPv6 router advertisements, so ``kboxnet run`` waits for the guest's SLAAC address
    serves_ipv6: ClassVar[bool] = False

    @abc.abstractmethod
    def probe(self, config: Config) -> Availability:
        """Say whether this backend can run here. Must never raise."""

    def open(self, link: Link, ctx: SessionContext) -> Session:
        """Create (not start) a session serving ``link`` (netdev init)."""
        raise NotImplementedError(f"backend {self.name!r} cannot serve a frame link")

    def section(self, config: Config) -> Any:
        """This backend's validated ``[net.<section>]`` settings (or defaults)."""
        if self.config_section is None or self.config_model is None:
            return None
        value = config.net.plugins.get(self.config_section)
        return value if value is not None else self.config_model()


class CommandRunner(abc.ABC):
    """Starts the user's command for ``kboxnet run`` (COMMAND backends)."""

    @abc.abstractmethod
    def spawn(self, argv: list[str], netns: NetnsTarget, env: Mapping[str, str]) -> int:
        """Start ``argv`` inside ``netns``; return its pid (the caller reaps it)."""

    def close(self) -> None:
        """Release resources after the command exited."""

    def counters(self) -> Mapping[str, int]:
        return {}


class CommandBackend(Backend):
    """Base for backends of kind COMMAND (wrap the command, not the link)."""

    kind: ClassVar[BackendKind] = BackendKind.COMMAND
    link_kinds: ClassVar[frozenset[str]] = frozenset()
    auto_select: ClassVar[bool] = False

    @abc.abstractmethod
    def runner(self, ctx: SessionContext) -> CommandRunner: ...

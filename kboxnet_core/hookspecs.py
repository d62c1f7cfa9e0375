"""Hook specifications for kboxnet plugins.

Plugins are discovered through the entry-point group ``kboxnet.backends``;
each entry point names a module (or object) whose ``@kboxnet_core.hookimpl``
functions implement the hooks below.

Hooks are for registration and lifecycle only. Frame I/O never goes through
a hook: a pluggy call costs about 1 µs, a bound-method call about 0.05 µs, and
a backend moves 10^5 to 10^6 frames per second. Frames are read and written
through direct methods on :class:`kboxnet_core.links.Link` objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .plugin import hookspec

if TYPE_CHECKING:
    from .availability import Availability
    from .backend import Backend, Session, SessionContext, SessionResult
    from .config import Config
    from .doctor import Check
    from .links.base import Link

# -------------------------------------------------------------------------
# Registration hooks, called once when the plugin manager is set up
# -------------------------------------------------------------------------


@hookspec
def kboxnet_register_backends() -> list[type[Backend]]:
    """Return the backend classes this plugin provides.

    Called once per plugin right after discovery, before any probing.
    Every implementation's list is collected (not firstresult). Backend
    names must be unique across all installed distributions; a duplicate is
    an error naming both distributions.

    :returns: a list of :class:`kboxnet_core.backend.Backend` subclasses.

    .. note:: Keep imports here cheap and guarded; an exception in this hook
       marks the plugin unavailable with the exception as its reason (unless
       ``KBOXNET_STRICT_PLUGINS=1``), it does not break the CLI.
    """


@hookspec
def kboxnet_doctor_checks(config: Config) -> list[Check]:
    """Return extra environment checks for ``kboxnet doctor``.

    Called once per ``kboxnet doctor`` run, after the core's own checks.
    All results are collected (not firstresult).

    :param config: the loaded configuration.
    :returns: a list of :class:`kboxnet_core.doctor.Check` values, each
        with a fix when it fails.
    """


# -------------------------------------------------------------------------
# Probing
# -------------------------------------------------------------------------


@hookspec
def kboxnet_backend_probed(backend: Backend, availability: Availability) -> None:
    """Observe the result of one backend's ``probe()``.

    Called after every probe during ranking, in rank order. Broadcast; the
    return value is ignored. Useful for logging and metrics plugins.

    :param backend: the probed backend instance.
    :param availability: what ``probe()`` returned (or the error it raised,
        turned into an unavailable :class:`Availability`).
    """


# -------------------------------------------------------------------------
# Netdev and session lifecycle (never per frame)
# -------------------------------------------------------------------------


@hookspec
def kboxnet_netdev_init(link: Link, config: Config) -> None:
    """A guest link has been set up and is about to be served.

    Called once per guest link (not per session: a fallback reuses the
    link), before the first backend opens it. Broadcast. Plugins may look at
    the link (kind, MTU, vnet header) but must not read or write frames.

    :param link: the new guest link.
    :param config: the loaded configuration.
    """


@hookspec
def kboxnet_session_started(backend: Backend, session: Session, ctx: SessionContext) -> None:
    """A backend's session reported ready on a link.

    Called by the supervisor after ``session.ready()`` returned true, in the
    supervisor's thread. Broadcast; return values are ignored.

    :param backend: the backend that opened the session.
    :param session: the running session.
    :param ctx: the context it was opened with (``ctx.attempt`` > 0 after a fallback).
    """


@hookspec
def kboxnet_session_stopped(backend: Backend, session: Session, result: SessionResult) -> None:
    """A session ended (stopped on request, guest gone, or failed).

    Called once per session, after its processes were reaped. Broadcast.

    :param backend: the backend whose session ended.
    :param session: the ended session (its ``counters()`` are final).
    :param result: why it ended.
    """


@hookspec(firstresult=True)
def kboxnet_fallback(failed: Backend, candidate: Backend, reason: str) -> bool | None:
    """The supervisor is about to replace a failed session with ``candidate``.

    Called when a session fails (or fails to start) while the guest link is
    still open, once per candidate in rank order. Return ``False`` to veto
    this candidate (the supervisor tries the next one), ``True`` to accept it
    without asking further plugins, or ``None`` to have no opinion.

    Stops at first non-None result.

    :param failed: the backend whose session failed.
    :param candidate: the next available backend in rank order.
    :param reason: why the failed session ended (already logged).
    """

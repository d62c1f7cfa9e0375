"""The notification loop: decides every trapped connect()/bind()/listen() of the sandbox.

For ``connect(fd, addr, len)`` (see docs/host-bypass.md for the reasoning):

1. open a pidfd for the calling thread, copy the sockaddr *once*
   (``process_vm_readv``), then ``NOTIF_ID_VALID``;
2. take a copy of the target's socket (``pidfd_getfd``) and look at it:

   * a **host socket** (one we injected earlier; its netns cookie is ours): the
     supervisor itself connects it to its own copy of the address if the policy
     allows it (EACCES otherwise, and for AF_UNSPEC). Never CONTINUE.
   * an eligible namespace socket (TCP, unbound, unconnected, no mark or device)
     to a destination the policy allows: **bypass**. Create a host socket,
     copy the options that differ from a pristine namespace socket, connect it
     to our copy of the address (non-blocking; a blocking caller is answered
     when the connect completes, out of order), install it at the same fd
     number with ADDFD+SETFD (keeping close-on-exec), re-arm epoll, reply.
     A failed connect is answered with its errno and nothing is installed.
   * anything else: CONTINUE, i.e. the call runs on the namespace's own stack.

``bind``/``listen`` on a host socket fail with EINVAL; otherwise they CONTINUE.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping

import attrs

from . import abi, sockstate
from .epoll import EpollRearmer
from .mediator import Mediator
from .policy import AF_UNSPEC, BypassPolicy, Destination, parse_sockaddr, sockaddr_family
from .target import EpollFdCache, PidfdCache, epoll_registrations, fd_flags

log = logging.getLogger("kboxnet.bypass")

MAX_SOCKADDR = 128
MAX_JUDGED = 4096  # entries of the per-supervisor sockaddr -> decision cache
_HOST_SOCK_TYPE = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
MAX_DEFERRED_CLOSES = 32  # fds whose close waits for an idle moment (see Supervisor._defer_close)
MAX_CLOSE_DELAY = 0.002  # seconds: a busy loop still closes them this soon


@attrs.frozen
class SandboxFacts:
    """What the supervisor learns at spawn time.

    :ivar host_cookie: SO_NETNS_COOKIE of the supervisor's (host) namespace.
    :ivar ns_cookie: SO_NETNS_COOKIE of the sandbox namespace.
    :ivar pristine: option snapshot of a fresh namespace TCP socket, per family.
    """

    host_cookie: int
    ns_cookie: int
    pristine: Mapping[int, sockstate.Snapshot]


@attrs.frozen
class SupervisorSettings:
    policy: BypassPolicy
    connect_timeout: float = 120.0
    epoll_rearm: bool = True
    log_connections: bool = True


@attrs.frozen
class _Verdict:
    """What our copy of a connect() address means (see ``Supervisor._judge``).

    :ivar family: the sockaddr's family (None when too short).
    :ivar dest: the parsed AF_INET/AF_INET6 destination, if any.
    :ivar why_not: why it is not for a host socket ("" when it is).
    :ivar sockaddr: the canonical sockaddr to connect a host socket to (b"" without dest).
    """

    family: int | None
    dest: Destination | None
    why_not: str
    sockaddr: bytes


@attrs.define
class _Pending:
    """A bypass of a *blocking* connect, waiting for the host socket's handshake."""

    notif: abi.Notification
    fd: int
    copy: int
    host: int
    dest: Destination | None
    cloexec: bool
    deadline: float
    sndtimeo: bool
    mediated: bool = False  # a namespace socket we connect for the caller (copy = -1, host = the copy)


def _writable_now(fd: int) -> bool:
    p = select.poll()
    p.register(fd, select.POLLOUT)
    return bool(p.poll(0))


def _connect_outcome(fd: int) -> int:
    """After EINPROGRESS: 0 once established, the error once failed, EINPROGRESS while pending.

    One getpeername in the common case (loopback and other fast paths finish
    the handshake inside connect()); it fails while SYN_SENT and after a failure.
    """
    if abi.sock_name(fd, peer=True) is not None:
        return 0
    return abi.getsockopt_int(fd, socket.SOL_SOCKET, socket.SO_ERROR) or errno.EINPROGRESS


def _timeval_seconds(raw: bytes | None) -> float:
    if not raw or len(raw) < 16:
        return 0.0
    sec, usec = struct.unpack("=qq", raw[:16])
    return sec + usec / 1e6


class Supervisor:
    """One notification listener (one spawned command and its descendants)."""

    def __init__(self, listener: int, facts: SandboxFacts, settings: SupervisorSettings) -> None:
        self.listener = listener
        self.facts = facts
        self.settings = settings
        self._counters: Counter[str] = Counter()
        self._count_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._new_pending: list[int] = []
        self._epoll_seen = False
        self._injected_any = False  # until then no host socket can exist in the sandbox
        self._epoll_fds = EpollFdCache()
        self._pidfds = PidfdCache()
        self._judged: dict[bytes, _Verdict] = {}
        self._spare: dict[int, list[int]] = {socket.AF_INET: [], socket.AF_INET6: []}
        self._deferred_closes: list[int] = []
        self._deferred_since = 0.0
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._rearmer = EpollRearmer()
        self._mediator = Mediator()
        self._thread: threading.Thread | None = None
        self._done = threading.Event()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kboxnet-bypass", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def join(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def counters(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self._counters)

    def _count(self, name: str, n: int = 1) -> None:
        with self._count_lock:
            self._counters[name] += n

    # --- loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        abi.notif_set_sync_wakeup(self.listener)
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        try:
            while True:
                timeout_ms = None
                if self._pending:
                    nearest = min(p.deadline for p in self._pending.values())
                    timeout_ms = max(0, min(1000, int((nearest - time.monotonic()) * 1000) + 1))
                events = poller.poll(0) if self._deferred_closes else None
                if not events:
                    self._idle_work()
                    events = poller.poll(timeout_ms)
                elif time.monotonic() - self._deferred_since > MAX_CLOSE_DELAY:
                    self._flush_closes()  # never idle: do not keep host sockets open behind the program
                for fd, ev in events:
                    if fd == self._stop_r:
                        return
                    if fd == self.listener:
                        if ev & select.POLLIN:
                            self._receive_one()
                        elif ev & (select.POLLHUP | select.POLLERR):
                            return  # every task using the filter is gone
                    elif fd in self._pending:
                        poller.unregister(fd)
                        self._complete_pending(self._pending.pop(fd))
                if self._pending:
                    for fd in self._expire_pending():
                        try:
                            poller.unregister(fd)
                        except KeyError:
                            pass
                if self._new_pending:
                    self._register_new_pending(poller)
        except Exception:  # noqa: BLE001 - the supervisor must not die silently
            log.exception("bypass supervisor crashed")
            self._count("supervisor_crash")
        finally:
            for p in self._pending.values():
                self._drop_pending(p, errno.EINTR)
            self._pending.clear()
            self._flush_closes()
            for spares in self._spare.values():
                self._deferred_closes += spares
                spares.clear()
            self._flush_closes()
            self._rearmer.close()
            self._mediator.close()
            self._pidfds.close()
            for fd in (self._stop_r, self._stop_w, self.listener):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._done.set()

    def _defer_close(self, fd: int) -> None:
        """Close ``fd`` when the loop is next idle (at once when too many are waiting).

        Releasing the program's old namespace socket and our reference to the
        installed host socket takes a while, and a program making connections
        back to back would find the loop still busy with it.
        """
        if not self._deferred_closes:
            self._deferred_since = time.monotonic()
        self._deferred_closes.append(fd)
        if len(self._deferred_closes) > MAX_DEFERRED_CLOSES:
            self._flush_closes()

    def _idle_work(self) -> None:
        """Work kept off the callers' path, done when no notification is waiting."""
        self._flush_closes()  # what the last bypasses left behind
        if not self._injected_any:
            return
        for family, spares in list(self._spare.items()):
            if not spares:  # a program that bypassed once will likely do it again
                try:
                    spares.append(abi.socket_raw(family, _HOST_SOCK_TYPE, socket.IPPROTO_TCP))
                except OSError:
                    del self._spare[family]  # e.g. no IPv6 on the host: stop trying

    def _host_socket(self, family: int) -> int:
        """A fresh host TCP socket (non-blocking, close-on-exec): a spare one made while idle, or new."""
        spares = self._spare.get(family)
        if spares:
            return spares.pop()
        return abi.socket_raw(family, _HOST_SOCK_TYPE, socket.IPPROTO_TCP)

    def _flush_closes(self) -> None:
        fds, self._deferred_closes = self._deferred_closes, []
        for fd in fds:
            os.close(fd)

    def _register_new_pending(self, poller: select.poll) -> None:
        for fd in self._new_pending:
            if fd in self._pending:
                poller.register(fd, select.POLLOUT)
        self._new_pending = []

    def _receive_one(self) -> None:
        try:
            notif = abi.notif_recv(self.listener)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):
                return  # the target was interrupted before we got it
            raise
        self._count("notifications")
        try:
            if notif.arch != abi.AUDIT_ARCH_X86_64:
                # the filter never notifies foreign arches; be safe if it ever does
                self._reply(notif, err=errno.ENOSYS)
            elif notif.nr == abi.NR_X86_64["connect"]:
                self._on_connect(notif)
            elif notif.nr in (abi.NR_X86_64["bind"], abi.NR_X86_64["listen"]):
                self._on_bind_listen(notif)
            elif notif.nr in (abi.NR_X86_64["epoll_create1"], abi.NR_X86_64["epoll_create"]):
                self._on_epoll_create(notif)
            else:
                self._reply(notif, cont=True)
        except Exception:  # noqa: BLE001 - one bad notification must not stop the supervisor
            self._count("errors")
            log.exception("bypass: internal error on pid=%d nr=%d; refusing the call", notif.pid, notif.nr)
            try:
                self._reply(notif, err=errno.EACCES)  # fails harmlessly if already answered
            except OSError:
                pass

    def _reply(self, notif: abi.Notification, val: int = 0, err: int = 0, cont: bool = False) -> bool:
        ok = abi.notif_send(self.listener, notif.id, val, err, cont)
        if not ok:
            self._count("stale")
        return ok

    def _log(self, notif: abi.Notification, fd: int, dest: object, decision: str, level: int = logging.INFO) -> None:
        if self.settings.log_connections and log.isEnabledFor(level):
            log.log(level, "bypass pid=%d fd=%d dst=%s decision=%s", notif.pid, fd, dest, decision)

    # --- connect -----------------------------------------------------------------------------

    def _on_connect(self, notif: abi.Notification) -> None:
        fd = notif.args[0] & 0xFFFFFFFF
        addrlen = notif.args[2] & 0xFFFFFFFF
        raw: bytes | None = None
        if 0 < addrlen <= MAX_SOCKADDR:
            try:
                raw = abi.read_target_memory(notif.pid, notif.args[1], addrlen)
            except OSError:
                raw = None
        if raw is None or len(raw) != addrlen:
            if not abi.notif_id_valid(self.listener, notif.id):
                self._count("stale")
                return
            self._reply(notif, err=errno.EFAULT if addrlen else errno.EINVAL)
            return
        verdict = self._judge(raw)
        family, dest, why_not = verdict.family, verdict.dest, verdict.why_not
        if why_not and not self._injected_any:
            # fast path: no host socket exists in the sandbox, so this is the namespace's business
            if not abi.notif_id_valid(self.listener, notif.id):  # after every read of target memory
                self._count("stale")
                return
            self._continue_in_namespace(notif, fd, family, dest, why_not)
            return
        copy = -1
        getfd_error = 0
        try:
            copy = self._pidfds.getfd(notif.pid, fd)
        except OSError as exc:
            getfd_error = exc.errno or errno.EBADF
        try:
            # one check covers both reads: the sockaddr came from, and the pidfd names, the
            # blocked thread (see target.PidfdCache); nothing was acted on before it
            if not abi.notif_id_valid(self.listener, notif.id):
                self._count("stale")
                return
            if getfd_error:
                self._reply(notif, err=getfd_error)
                return
            info, snap = sockstate.inspect_with_options(copy, not why_not)
            if info is None:
                self._reply(notif, err=errno.ENOTSOCK)
                return
            if info.cookie == self.facts.host_cookie:
                self._connect_host_socket(notif, fd, copy, info, family, dest)
                copy = -1  # handed over
                return
            reason = why_not or self._ineligible(info, dest)
            if reason:
                if self._injected_any:  # CONTINUE could now hit a host socket dup2'ed onto fd
                    self._mediate(notif, fd, copy, family, dest, raw, reason)
                    copy = -1  # handed over
                else:
                    self._continue_in_namespace(notif, fd, family, dest, reason)
                return
            assert dest is not None and snap is not None
            self._bypass(notif, fd, copy, info, dest, verdict.sockaddr, snap)
            copy = -1  # handed over
        finally:
            if copy >= 0:
                os.close(copy)

    def _judge(self, raw: bytes) -> _Verdict:
        """What our copy of a sockaddr means: family, destination, why not for a host socket.

        A pure function of the bytes and the (immutable) policy, so it is
        remembered by the bytes themselves: programs connect to the same few
        destinations again and again.
        """
        hit = self._judged.get(raw)
        if hit is not None:
            return hit
        family = sockaddr_family(raw)
        dest = parse_sockaddr(raw)
        sockaddr = dest.sockaddr() if dest is not None else b""
        verdict = _Verdict(family, dest, self._destination_not_bypassable(family, dest), sockaddr)
        if len(self._judged) >= MAX_JUDGED:
            self._judged.clear()
        self._judged[raw] = verdict
        return verdict

    def _continue_in_namespace(
        self, notif: abi.Notification, fd: int, family: int | None, dest: Destination | None, reason: str
    ) -> None:
        self._reply(notif, cont=True)
        self._count("namespace")
        level = logging.INFO if family in (socket.AF_INET, socket.AF_INET6) else logging.DEBUG
        self._log(notif, fd, dest or f"family={family}", f"namespace ({reason})", level)

    def _mediate(
        self,
        notif: abi.Notification,
        fd: int,
        copy: int,
        family: int | None,
        dest: Destination | None,
        raw: bytes,
        reason: str,
    ) -> None:
        """Connect the program's namespace socket ourselves (see kboxnet_bypass.mediator)."""
        self._count("namespace")
        self._count("mediated")
        level = logging.INFO if family in (socket.AF_INET, socket.AF_INET6) else logging.DEBUG
        self._log(notif, fd, dest or f"family={family}", f"namespace ({reason}, mediated)", level)
        if family == socket.AF_UNIX:  # the path must be resolved as the caller would: a worker
            self._mediator.submit(notif.pid, copy, raw, lambda err: self._reply(notif, err=err))
            return
        flags = fcntl.fcntl(copy, fcntl.F_GETFL)
        if flags & os.O_NONBLOCK:
            err = abi.connect_raw(copy, raw)
            os.close(copy)
            self._reply(notif, err=err)
            return
        # a blocking caller: start the connect non-blocking and answer on completion. The caller
        # is stopped in this very call; only its other threads could see the brief flag change.
        fcntl.fcntl(copy, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        try:
            err = abi.connect_raw(copy, raw)
        finally:
            fcntl.fcntl(copy, fcntl.F_SETFL, flags)
        if err == errno.EINPROGRESS and _writable_now(copy):
            err = abi.getsockopt_int(copy, socket.SOL_SOCKET, socket.SO_ERROR)
        if err != errno.EINPROGRESS:
            os.close(copy)
            self._reply(notif, err=err)
            return
        timeo = _timeval_seconds(abi.getsockopt_or_none(copy, socket.SOL_SOCKET, 21, 16))
        deadline = time.monotonic() + (timeo or self.settings.connect_timeout)
        self._pending[copy] = _Pending(notif, fd, -1, copy, dest, False, deadline, bool(timeo), mediated=True)
        self._new_pending.append(copy)

    def _destination_not_bypassable(self, family: int | None, dest: Destination | None) -> str:
        """Why this address (our copy) is not for a host socket; "" when it is."""
        if family not in (socket.AF_INET, socket.AF_INET6):
            return "not-inet"
        if dest is None:
            return "bad-address"
        if dest.scope_id:
            return "scoped"
        if not self.settings.policy.permits(dest):
            return "policy"
        return ""

    def _ineligible(self, info: sockstate.SocketInfo, dest: Destination | None) -> str:
        """Why this namespace socket must stay on the namespace stack ("" = eligible)."""
        if info.cookie != self.facts.ns_cookie:
            return "other-netns"
        if not info.is_tcp:
            return "not-tcp"
        if dest is None or dest.family != info.domain:
            return "family-mismatch"
        if info.connected:
            return "connected"
        if info.bound:
            return "bound"
        if info.has_device or info.mark:
            return "device-or-mark"
        return ""

    def _bypass(
        self,
        notif: abi.Notification,
        fd: int,
        copy: int,
        info: sockstate.SocketInfo,
        dest: Destination,
        sockaddr: bytes,
        snap: sockstate.Snapshot,
    ) -> None:
        try:  # one fdinfo read: close-on-exec (only there) and the shared file's O_NONBLOCK
            flags = fd_flags(notif.pid, fd)
        except OSError:
            flags = fcntl.fcntl(copy, fcntl.F_GETFL)  # and no close-on-exec
        nonblock = bool(flags & os.O_NONBLOCK)
        cloexec = bool(flags & abi.O_CLOEXEC_FDINFO)
        changes = sockstate.differing(snap, self.facts.pristine.get(info.domain), info.domain)
        host = self._host_socket(info.domain)
        if changes:
            failed = sockstate.apply(host, changes)
            if failed:
                log.debug("bypass: options not copied: %s", ",".join(failed))
        err = abi.connect_raw(host, sockaddr)
        if err not in (0, errno.EINPROGRESS):
            os.close(host)
            os.close(copy)
            self._count("bypass_failed")
            self._log(notif, fd, dest, f"bypass-failed ({errno.errorcode.get(err, err)})")
            self._reply(notif, err=err)
            return
        if err == errno.EINPROGRESS and not nonblock:
            # loopback and other fast paths: the handshake may already have finished
            err = _connect_outcome(host)
            if err not in (0, errno.EINPROGRESS):
                os.close(host)
                os.close(copy)
                self._count("bypass_failed")
                self._log(notif, fd, dest, f"bypass-failed ({errno.errorcode.get(err, err)})")
                self._reply(notif, err=err)
                return
        if nonblock or err == 0:
            self._install(notif, fd, copy, host, dest, cloexec, blocking=not nonblock, result=err)
            return
        sndtimeo = _timeval_seconds(snap[sockstate.SO_SNDTIMEO_INDEX])
        limit = sndtimeo or self.settings.connect_timeout
        pending = _Pending(notif, fd, copy, host, dest, cloexec, time.monotonic() + limit, bool(sndtimeo))
        self._pending[host] = pending
        self._new_pending.append(host)

    def _complete_pending(self, p: _Pending) -> None:
        err = abi.getsockopt_int(p.host, socket.SOL_SOCKET, socket.SO_ERROR)
        if p.mediated:
            os.close(p.host)
            self._reply(p.notif, err=err)
            return
        if err:
            os.close(p.host)
            os.close(p.copy)
            self._count("bypass_failed")
            self._log(p.notif, p.fd, p.dest, f"bypass-failed ({errno.errorcode.get(err, err)})")
            self._reply(p.notif, err=err)
            return
        self._install(p.notif, p.fd, p.copy, p.host, p.dest, p.cloexec, blocking=True, result=0)

    def _expire_pending(self) -> list[int]:
        now = time.monotonic()
        gone = []
        for host, p in list(self._pending.items()):
            if not abi.notif_id_valid(self.listener, p.notif.id):
                self._drop_pending(p, 0)
                gone.append(host)
            elif now >= p.deadline and p.mediated:
                os.close(p.host)
                self._reply(p.notif, err=errno.EINPROGRESS if p.sndtimeo else errno.ETIMEDOUT)
                gone.append(host)
            elif now >= p.deadline:
                if p.sndtimeo:  # Linux: a blocking connect that hits SO_SNDTIMEO says EINPROGRESS
                    self._install(p.notif, p.fd, p.copy, p.host, p.dest, p.cloexec, True, errno.EINPROGRESS)
                else:
                    self._log(p.notif, p.fd, p.dest, "bypass-failed (ETIMEDOUT)")
                    self._drop_pending(p, errno.ETIMEDOUT)
                gone.append(host)
        for host in gone:
            self._pending.pop(host, None)
        return gone

    def _drop_pending(self, p: _Pending, err: int) -> None:
        os.close(p.host)
        if p.copy >= 0:
            os.close(p.copy)
        if err:
            self._count("bypass_failed")
            self._reply(p.notif, err=err)
        else:
            self._count("stale")

    def _install(
        self,
        notif: abi.Notification,
        fd: int,
        copy: int,
        host: int,
        dest: Destination,
        cloexec: bool,
        blocking: bool,
        result: int,
    ) -> None:
        """ADDFD the host socket at ``fd``, drop the old one, re-arm epoll, answer ``result``."""
        try:
            if blocking:  # our socket: O_RDWR | O_NONBLOCK, and F_SETFL ignores the access mode
                fcntl.fcntl(host, fcntl.F_SETFL, 0)
            regs = []
            if self.settings.epoll_rearm and self._epoll_seen:
                epfds = self._epoll_fds.get(notif.pid)
                if epfds:
                    regs = epoll_registrations(notif.pid, fd, os.fstat(copy).st_ino, epfds)
            try:
                abi.notif_addfd(self.listener, notif.id, host, fd, cloexec)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    self._count("stale")
                    return
                raise
            if regs:
                os.close(copy)  # last reference to the old socket: its epoll items go with it
                copy = -1
                count, error = self._rearmer.rearm(notif.pid, host, fd, regs)
                self._count("epoll_rearmed", count)
                if error:
                    log.warning("bypass: epoll re-arm for pid=%d fd=%d failed: %s", notif.pid, fd, error)
            self._injected_any = True
            self._reply(notif, err=result)
            # off the caller's critical path: bookkeeping, and (without epoll items) the old socket's release
            self._count("bypassed")
            self._log(notif, fd, dest, "bypass" if result == 0 else "bypass (EINPROGRESS)")
        finally:
            self._defer_close(host)
            if copy >= 0:
                self._defer_close(copy)

    def _connect_host_socket(
        self,
        notif: abi.Notification,
        fd: int,
        copy: int,
        info: sockstate.SocketInfo,
        family: int | None,
        dest: Destination | None,
    ) -> None:
        """A connect() on a socket we installed: only to allowed destinations, done by us."""
        if family == AF_UNSPEC or dest is None or dest.family != info.domain or dest.scope_id:
            self._count("host_refused")
            self._log(notif, fd, dest or f"family={family}", "refused (host socket, bad address)", logging.WARNING)
            os.close(copy)
            self._reply(notif, err=errno.EACCES if family == AF_UNSPEC else errno.EAFNOSUPPORT)
            return
        if not self.settings.policy.permits(dest):
            self._count("host_refused")
            self._log(notif, fd, dest, "refused (host socket, policy)", logging.WARNING)
            os.close(copy)
            self._reply(notif, err=errno.EACCES)
            return
        if fcntl.fcntl(copy, fcntl.F_GETFL) & os.O_NONBLOCK:
            err = abi.connect_raw(copy, dest.sockaddr())
            os.close(copy)
            self._count("host_reconnect")
            self._reply(notif, err=err)
            return

        def blocking_connect() -> None:  # the shared file is blocking: do not stall the loop
            try:
                err = abi.connect_raw(copy, dest.sockaddr())
            finally:
                os.close(copy)
            self._count("host_reconnect")
            self._reply(notif, err=err)

        threading.Thread(target=blocking_connect, name="kboxnet-bypass-reconnect", daemon=True).start()

    # --- epoll_create -------------------------------------------------------------------------

    def _on_epoll_create(self, notif: abi.Notification) -> None:
        """Create the epoll instance ourselves and hand it over (ADDFD+SEND).

        Only so that the epoll-fd cache is invalidated *after* the new fd exists
        (a CONTINUE would leave a window where a scan misses it).
        """
        arg = notif.args[0] & 0xFFFFFFFF
        if notif.nr == abi.NR_X86_64["epoll_create1"]:
            if arg & ~os.O_CLOEXEC:
                self._reply(notif, err=errno.EINVAL)
                return
            cloexec = bool(arg & os.O_CLOEXEC)
        else:
            if arg == 0 or arg & 0x80000000:  # size <= 0
                self._reply(notif, err=errno.EINVAL)
                return
            cloexec = False
        try:
            ep = abi.epoll_create()
        except OSError as exc:
            self._reply(notif, err=exc.errno or errno.ENOMEM)
            return
        try:
            abi.notif_addfd_send(self.listener, notif.id, ep, cloexec)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                self._count("stale")
            else:
                self._reply(notif, err=exc.errno or errno.EMFILE)
        finally:
            os.close(ep)
            self._epoll_seen = True  # from now on, bypasses look for epoll registrations
            self._epoll_fds.invalidate()

    # --- bind / listen -----------------------------------------------------------------------

    def _on_bind_listen(self, notif: abi.Notification) -> None:
        fd = notif.args[0] & 0xFFFFFFFF
        try:
            copy = self._pidfds.getfd(notif.pid, fd)
        except OSError:
            copy = -1
        is_listen = notif.nr == abi.NR_X86_64["listen"]
        try:
            if not abi.notif_id_valid(self.listener, notif.id):  # the copy is the blocked thread's
                self._count("stale")
                return
            if copy < 0:
                if is_listen and self._injected_any:
                    # no CONTINUE: a host socket could be dup2'ed onto the fd before the kernel looks
                    self._reply(notif, err=errno.EBADF)
                else:
                    self._reply(notif, cont=True)  # EBADF comes from the kernel
                return
            try:
                cookie = abi.netns_cookie(copy)
            except OSError:
                cookie = 0
            if cookie == self.facts.host_cookie:
                self._count("host_refused")
                self._log(notif, fd, "listen" if is_listen else "bind", "refused (host socket)", logging.WARNING)
                self._reply(notif, err=errno.EINVAL)
                return
            if is_listen and self._injected_any:
                # as for connect: never CONTINUE a listen once host sockets exist (fd swap race)
                backlog = notif.args[1] & 0xFFFFFFFF
                backlog = backlog - (1 << 32) if backlog & 0x80000000 else backlog
                self._reply(notif, err=abi.listen_raw(copy, backlog))
                return
            self._reply(notif, cont=True)
        finally:
            if copy >= 0:
                os.close(copy)

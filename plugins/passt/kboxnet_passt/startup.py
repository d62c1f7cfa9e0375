"""The start-up probe: does passt really start (and answer) here?

passt sandboxes itself at start (user/mount/IPC/UTS/PID namespaces,
``pivot_root``, seccomp, capability drop). Where that is not allowed
(unprivileged user namespaces disabled, an LSM profile, a seccomp-filtered
container) or where the 2023 build finds no usable host interface, it exits
with status 1 at once. The probe runs the same command line a session would,
on a private socketpair, waits for the end of start-up (see
:mod:`kboxnet_passt.process`), asks for the gateway's MAC with an ARP request
and expects the reply. Results are cached per binary, command line, user,
network namespace and boot, for :data:`TTL` seconds.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence

import attrs

from .process import IPV6_OFF, IPV6_OFF_WARNING, PasstProcess
from .relay import make_socketpair

TTL = 600.0
PROBE_MAC = bytes.fromhex("02006b626e01")

_SANDBOX = ("user namespace", "Failed to sandbox", "pivot_root", "mount", "unshare", "namespace",
            "capabilit", "Operation not permitted", "seccomp")
_NO_IFACE = ("External interface not usable", "No external routable interface", "No routable interface")


@attrs.frozen
class StartupResult:
    ok: bool
    reason: str
    hint: str = ""
    elapsed: float = 0.0
    #: what a working passt said that the user should know (e.g. that it turned IPv6 off)
    notes: tuple[str, ...] = ()


def arp_request(src_ip: ipaddress.IPv4Address, target: ipaddress.IPv4Address) -> bytes:
    return (b"\xff" * 6 + PROBE_MAC + b"\x08\x06" + struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1)
            + PROBE_MAC + src_ip.packed + b"\0" * 6 + target.packed)


def _read_arp_reply(sock: socket.socket, target: ipaddress.IPv4Address, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            return False
        chunk = sock.recv(65536)
        if not chunk:
            return False
        buf += chunk
        while len(buf) >= 4:
            (n,) = struct.unpack_from(">I", buf)
            if len(buf) < 4 + n:
                break
            frame, buf = buf[4 : 4 + n], buf[4 + n :]
            if frame[12:14] == b"\x08\x06" and len(frame) >= 42 and frame[20:22] == b"\x00\x02" \
                    and frame[28:32] == target.packed:
                return True
    return False


def classify(text: str, status: int | None) -> tuple[str, str]:
    """(reason, hint) for a passt that died during start-up."""
    if any(s in text for s in _NO_IFACE):
        return (f"passt cannot start here: no usable host interface ({text})",
                "old passt builds need a host interface with a default route; "
                "passt >= 2024_11_27 starts without one (local mode)")
    if any(s.lower() in text.lower() for s in _SANDBOX):
        return (f"passt cannot sandbox itself here ({text})",
                "allow unprivileged user namespaces (sysctl user.max_user_namespaces, "
                "kernel.apparmor_restrict_unprivileged_userns=0, container seccomp/AppArmor profile), "
                "or use another backend")
    return (f"passt exited during start-up with status {status}: {text or 'no message'}", "")


def run_startup_probe(argv_for_fd: Callable[[int], Sequence[str]], gateway: ipaddress.IPv4Address,
                      address: ipaddress.IPv4Address, timeout: float = 3.0) -> StartupResult:
    t0 = time.monotonic()
    ours, theirs = make_socketpair(1 << 20)
    proc: PasstProcess | None = None
    try:
        try:
            proc = PasstProcess(list(argv_for_fd(theirs.fileno())), pass_fds=(theirs.fileno(),),
                                name="passt-probe")
        except OSError as exc:
            return StartupResult(False, f"cannot run passt: {exc}")
        finally:
            theirs.close()
        if not proc.wait_ready(timeout):
            if proc.poll() is None:
                return StartupResult(False, f"passt did not finish start-up within {timeout:.0f} s",
                                     elapsed=time.monotonic() - t0)
            proc.wait(1.0)
            reason, hint = classify(proc.stderr_text(), proc.proc.returncode)
            return StartupResult(False, reason, hint, time.monotonic() - t0)
        ours.sendall(struct.pack(">I", 42) + arp_request(address, gateway))
        if not _read_arp_reply(ours, gateway, 1.0):
            status = proc.exit_description() if proc.poll() is not None else "no reply"
            return StartupResult(False, f"passt started but did not answer ARP for {gateway}: {status}",
                                 elapsed=time.monotonic() - t0)
        elapsed = time.monotonic() - t0
        # passt prints its start-up messages before it is ready; once it has exited (its socket's
        # peer closed), the stderr reader has seen all of them
        ours.close()
        proc.wait(2.0)
        proc.stderr_text()
        notes = (IPV6_OFF_WARNING,) if any(IPV6_OFF in line for line in proc.tail) else ()
        return StartupResult(True, "start-up probe passed", elapsed=elapsed, notes=notes)
    finally:
        ours.close()
        if proc is not None:
            if proc.wait(1.0) is None:
                proc.terminate()


def environment_key() -> tuple[object, ...]:
    """What a start-up result depends on besides the binary and its argv."""
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
    except OSError:
        boot = ""
    return (os.geteuid(), netns, boot)


_cache: dict[tuple[object, ...], tuple[float, StartupResult]] = {}
_lock = threading.Lock()


def cached_startup_probe(key: tuple[object, ...], run: Callable[[], StartupResult]) -> StartupResult:
    full = (*key, *environment_key())
    now = time.monotonic()
    with _lock:
        hit = _cache.get(full)
        if hit is not None and now - hit[0] < TTL:
            return hit[1]
    result = run()
    with _lock:
        _cache[full] = (now, result)
    return result


def clear_cache() -> None:
    with _lock:
        _cache.clear()

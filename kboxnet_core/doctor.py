"""``kboxnet doctor``: environment checks, each with a fix."""

from __future__ import annotations

import os
import platform

import attrs

from .netns import CLONE_NEWNET, CLONE_NEWUSER, unshare


@attrs.frozen
class Check:
    """One environment check. ``fix`` says what to do when ``ok`` is false."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    #: a failing optional check only limits some backends
    required: bool = False


def _in_child(flags: int) -> tuple[bool, str]:
    """Try ``unshare(flags)`` in a forked child (never changes this process)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            unshare(flags)
            os.write(w, b"ok")
        except OSError as exc:
            os.write(w, str(exc).encode()[:500])
        os._exit(0)
    os.close(w)
    out = os.read(r, 1000).decode(errors="replace")
    os.close(r)
    os.waitpid(pid, 0)
    return out == "ok", out


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def core_checks() -> list[Check]:
    checks: list[Check] = []
    tun = "/dev/net/tun"
    if not os.path.exists(tun):
        checks.append(Check("tun device", False, f"{tun} does not exist",
                            "load the tun module (modprobe tun) or create the device node", True))
    else:
        ok = os.access(tun, os.R_OK | os.W_OK)
        mode = oct(os.stat(tun).st_mode & 0o777)
        checks.append(Check("tun device", ok, f"{tun} mode {mode}, {'usable' if ok else 'not accessible'} by uid {os.getuid()}",
                            "" if ok else f"chmod 0666 {tun} (or run kboxnet run as root)", True))
    ok, why = _in_child(CLONE_NEWUSER)
    checks.append(Check("user namespaces", ok, "unprivileged user namespaces work" if ok else f"unshare(CLONE_NEWUSER): {why}",
                        "" if ok else "sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000 "
                                      "(or an AppArmor/SELinux policy that allows them)"))
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    ok, why = _in_child(flags)
    checks.append(Check("network namespaces", ok, "can create network namespaces" if ok else f"unshare: {why}",
                        "" if ok else "enable user namespaces (see above) or run as root", True))
    actions = _read("/proc/sys/kernel/seccomp/actions_avail")
    release = platform.release()
    try:
        major, minor = (int(x) for x in release.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    notif = "user_notif" in actions.split()
    addfd = (major, minor) >= (5, 9)
    checks.append(Check("seccomp user notification + ADDFD", notif and addfd,
                        f"kernel {release}; actions: {actions or 'unknown'}",
                        "" if notif and addfd else "host-bypass needs Linux >= 5.9 with seccomp user notification"))
    rng = _read("/proc/sys/net/ipv4/ping_group_range").split()
    gid = os.getgid()
    ping_ok = len(rng) == 2 and int(rng[0]) <= gid <= int(rng[1])
    checks.append(Check("ping sockets", ping_ok, f"net.ipv4.ping_group_range = {' '.join(rng)} (gid {gid})",
                        "" if ping_ok else f'sysctl -w net.ipv4.ping_group_range="0 {2**31 - 1}" to let guests ping '
                                           "hosts other than the gateway (minislirp answers the gateway itself)"))
    return checks

"""Can host-bypass run here? (never raises)"""

from __future__ import annotations

import errno
import os
import platform

from kboxnet_core.availability import Availability

from . import abi

MIN_KERNEL = (5, 14)  # ADDFD (5.9), pidfd_getfd (5.6), SO_NETNS_COOKIE (5.14)


def kernel_version(release: str) -> tuple[int, int]:
    parts = release.split("-", 1)[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def _syscall_exists(fn, *args) -> bool:  # noqa: ANN001
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno != errno.ENOSYS
    return True


def probe_kernel() -> Availability:
    release = os.uname().release
    if platform.machine() != "x86_64":
        return Availability.no(f"host-bypass supports x86_64 only (this is {platform.machine()})")
    if kernel_version(release) < MIN_KERNEL:
        return Availability.no(
            f"kernel {release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}",
            "host-bypass needs seccomp ADDFD, pidfd_getfd and SO_NETNS_COOKIE (Linux >= 5.14)",
            version=release,
        )
    try:
        abi.notif_sizes()
    except OSError as exc:
        return Availability.no(f"seccomp user notification unavailable: {exc}", version=release)
    if not _syscall_exists(abi.pidfd_getfd, -1, 0):
        return Availability.no("pidfd_getfd is not available", version=release)
    if not _syscall_exists(abi.read_target_memory, os.getpid(), 0, 1):
        return Availability.no("process_vm_readv is not available", version=release)
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as fh:
            scope = int(fh.read().strip())
    except (OSError, ValueError):
        scope = 0
    if scope >= 3 or (scope == 2 and os.geteuid() != 0):
        return Availability.no(
            f"yama ptrace_scope={scope} forbids reading the sandbox's syscall arguments",
            "set kernel.yama.ptrace_scope to 0 or 1",
            version=release,
        )
    return Availability.yes(10, "seccomp user notification with ADDFD", version=release)


def safe_probe() -> Availability:
    try:
        return probe_kernel()
    except Exception as exc:  # noqa: BLE001 - probe() must never raise
        return Availability.no(f"probe failed: {type(exc).__name__}: {exc}")

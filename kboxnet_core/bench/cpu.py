"""CPU accounting: wait for an idle machine, and tell our CPU from foreign CPU.

"Ours" is this process and every descendant (iperf3, the backends, the
guest command): ``utime+stime+cutime+cstime`` of this process plus the same
of each live descendant. "Foreign" is the same sum over every other
user-space process (kernel threads such as ksoftirqd are left out: they
mostly carry our own traffic, as does softirq time). A process that exits is
still counted, through its parent's ``cutime``/``cstime``.
"""

from __future__ import annotations

import os
import time

import attrs

CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def _busy_total() -> tuple[float, float]:
    """(busy, total) jiffies summed over all CPUs."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return float(total - idle), float(total)


def _proc_stat(pid: int) -> tuple[int, list[str]] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), rest  # ppid, fields from state on


PF_KTHREAD = 0x00200000


def _tree_jiffies(root: int) -> tuple[float, float]:
    """CPU jiffies of (``root`` and its descendants, every other user-space process)."""
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        got = _proc_stat(int(name))
        if got:
            parents[int(name)], stats[int(name)] = got
    ours = foreign = 0.0
    for pid, fields in stats.items():
        # fields[6] = flags (stat field 9); fields[11..14] = utime stime cutime cstime (fields 14..17)
        if int(fields[6]) & PF_KTHREAD:
            continue
        jiffies = sum(int(x) for x in fields[11:15])
        p = pid
        while p and p != root and p in parents:
            p = parents[p]
        if p == root:
            ours += jiffies
        else:
            foreign += jiffies
    return ours, foreign


@attrs.frozen
class CpuSample:
    busy: float
    total: float
    ours: float
    foreign: float
    when: float


def sample() -> CpuSample:
    busy, total = _busy_total()
    ours, foreign = _tree_jiffies(os.getpid())
    return CpuSample(busy, total, ours, foreign, time.monotonic())


@attrs.frozen
class CpuUsage:
    """CPU use between two samples, in percent of one core.

    ``busy`` is the whole machine (incl. softirq and kernel threads); ``ours``
    and ``foreign`` are user-space process trees (see the module docstring).
    """

    busy_pct: float
    ours_pct: float
    foreign_pct: float


def usage(a: CpuSample, b: CpuSample) -> CpuUsage:
    wall = max(b.when - a.when, 1e-6)
    busy = (b.busy - a.busy) / CLK_TCK / wall * 100
    ours = (b.ours - a.ours) / CLK_TCK / wall * 100
    foreign = (b.foreign - a.foreign) / CLK_TCK / wall * 100
    return CpuUsage(round(busy, 1), round(ours, 1), round(max(foreign, 0.0), 1))


def wait_idle(max_foreign_pct: float = 25.0, window: float = 1.0, timeout: float = 30.0) -> CpuUsage:
    """Wait until a ``window`` s span has less than ``max_foreign_pct`` foreign CPU.

    Returns the last window's usage (which may still be busy after ``timeout``).
    """
    deadline = time.monotonic() + timeout
    while True:
        a = sample()
        time.sleep(window)
        u = usage(a, sample())
        if u.foreign_pct < max_foreign_pct or time.monotonic() >= deadline:
            return u

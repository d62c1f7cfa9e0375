"""One measurement: an iperf3 run or a ping-pong run from a path's guest."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

import attrs

from . import cpu
from .paths import Attached


@attrs.frozen
class Sample:
    """One run's outcome (``error`` set when it produced no number)."""

    path: str
    test: str  # "up", "down", "rr"
    mtu: int
    repeat: int
    gbps: float | None = None
    retransmits: int | None = None
    rr_p50_us: float | None = None
    rr_p99_us: float | None = None
    conn_per_s: float | None = None
    cpu_busy_pct: float = 0.0
    cpu_ours_pct: float = 0.0
    cpu_foreign_pct: float = 0.0
    idle_wait_foreign_pct: float = 0.0
    error: str = ""

    def as_dict(self) -> dict:
        return attrs.asdict(self)


def _run(argv: Sequence[str], timeout: float) -> tuple[subprocess.CompletedProcess | None, str]:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f}s"
    return proc, ""


def parse_iperf(text: str) -> tuple[float, int | None]:
    """(Gbit/s received, sender retransmits) from ``iperf3 -J`` output."""
    data = json.loads(text)
    if data.get("error"):
        raise ValueError(data["error"])
    end = data["end"]
    received = end["sum_received"]["bits_per_second"] / 1e9
    retr = end.get("sum_sent", {}).get("retransmits")
    return received, retr


def iperf(att: Attached, path: str, port: int, mtu: int, reverse: bool, seconds: float, repeat: int,
          idle: cpu.CpuUsage) -> Sample:
    argv = [*att.prefix, "iperf3", "-c", att.server, "-p", str(port), "-t", str(seconds), "-J"]
    if reverse:
        argv.append("-R")
    test = "down" if reverse else "up"
    before = cpu.sample()
    proc, err = _run(argv, seconds + 40)
    use = cpu.usage(before, cpu.sample())
    common = dict(path=path, test=test, mtu=mtu, repeat=repeat, cpu_busy_pct=use.busy_pct,
                  cpu_ours_pct=use.ours_pct, cpu_foreign_pct=use.foreign_pct,
                  idle_wait_foreign_pct=idle.foreign_pct)
    if proc is None:
        return Sample(error=err, **common)
    try:
        gbps, retr = parse_iperf(proc.stdout)
    except (ValueError, KeyError) as exc:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return Sample(error=f"iperf3 rc={proc.returncode}: {exc} {' | '.join(tail)}"[:300], **common)
    return Sample(gbps=round(gbps, 3), retransmits=retr, **common)


def pingpong(att: Attached, path: str, port: int, mtu: int, repeat: int, count: int, conns: int,
             idle: cpu.CpuUsage, time_limit: float = 10.0) -> Sample:
    argv = [*att.prefix, sys.executable, "-m", "kboxnet_core.bench.pingpong", att.server, str(port),
            "--count", str(count), "--conns", str(conns), "--time-limit", str(time_limit)]
    before = cpu.sample()
    proc, err = _run(argv, 2 * time_limit + 40)
    use = cpu.usage(before, cpu.sample())
    common = dict(path=path, test="rr", mtu=mtu, repeat=repeat, cpu_busy_pct=use.busy_pct,
                  cpu_ours_pct=use.ours_pct, cpu_foreign_pct=use.foreign_pct,
                  idle_wait_foreign_pct=idle.foreign_pct)
    if proc is None:
        return Sample(error=err, **common)
    try:
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        data = json.loads(lines[-1])
    except (ValueError, IndexError):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return Sample(error=f"pingpong rc={proc.returncode}: {' | '.join(tail)}"[:300], **common)
    return Sample(rr_p50_us=data["rr_p50_us"], rr_p99_us=data["rr_p99_us"], conn_per_s=data["conn_per_s"],
                  **common)

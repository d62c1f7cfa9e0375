"""One measurement: an iperf3 run or a ping-pong run from a path's guest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import attrs

from . import cpu
from .flows import SinkServer
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
    flows: int | None = None
    rss_mib: float | None = None
    lost_bytes: int | None = None
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


def _rss_kib(pid: int) -> int:
    """Proportional set size (shared pages split between sharers; a forked helper costs little)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(roots: Sequence[int]) -> set[int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    text = fh.read()
                parents[int(name)] = int(text[text.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):
                continue
    out = set(r for r in roots if r in parents)
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in out and pid not in out:
                out.add(pid)
                changed = True
    return out


class RssSampler:
    """Peak summed PSS of the middle processes (and their children, minus the guest's client)."""

    def __init__(self, roots: Sequence[int], exclude: str = f"{sys.executable} -m kboxnet_core.bench.flows") -> None:
        self.roots = list(roots)
        self.exclude = exclude
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kboxnet-rss", daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while True:
            try:
                pids = [p for p in _descendants(self.roots) if not _cmdline(p).startswith(self.exclude)]
                self.peak_kib = max(self.peak_kib, sum(_rss_kib(p) for p in pids))
            except (OSError, ValueError):
                pass
            if self._stop.wait(0.1):
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return round(self.peak_kib / 1024, 1)


def flows(att: Attached, path: str, sink: SinkServer, mtu: int, repeat: int, count: int, seconds: float,
          idle: cpu.CpuUsage) -> Sample:
    """``count`` concurrent flows for ``seconds``: aggregate Gbit/s, peak RSS of the middle, bytes lost."""
    argv = [*att.prefix, sys.executable, "-m", "kboxnet_core.bench.flows", att.server, str(sink.port),
            "--flows", str(count), "--time", str(seconds)]
    sink.reset()
    before = cpu.sample()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = RssSampler([proc.pid] if att.prefix_is_middle else list(att.middle)).start()
    try:
        out, err = proc.communicate(timeout=seconds + 60 + count / 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err = f"timed out; {err}"
    rss = sampler.stop()
    use = cpu.usage(before, cpu.sample())
    common = dict(path=path, test="flows", mtu=mtu, repeat=repeat, flows=count, rss_mib=rss or None,
                  cpu_busy_pct=use.busy_pct, cpu_ours_pct=use.ours_pct, cpu_foreign_pct=use.foreign_pct,
                  idle_wait_foreign_pct=idle.foreign_pct)
    try:
        data = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    except (ValueError, IndexError):
        tail = (err or out).strip().splitlines()[-3:]
        return Sample(error=f"flows rc={proc.returncode}: {' | '.join(tail)}"[:300], **common)
    deadline = time.monotonic() + 15
    while sink.closed_flows < count and time.monotonic() < deadline:
        time.sleep(0.05)
    lost = data["bytes"] - sink.received
    if lost and data["errors"] == 0 and not data["undelivered_flows"] and sink.closed_flows == count:
        return Sample(gbps=data["gbps"], lost_bytes=lost,
                      error=f"{lost} bytes written by the guest never reached the sink", **common)
    error = "" if data["errors"] == 0 and not data["undelivered_flows"] and sink.closed_flows == count else (
        f"{data['errors']} client errors ({data.get('first_error') or '-'}), {data['undelivered_flows']} flows "
        f"not acknowledged, {sink.closed_flows}/{count} flows closed at the sink")
    return Sample(gbps=data["gbps"], lost_bytes=lost, error=error, **common)

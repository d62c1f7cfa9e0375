"""``kboxnet bench``: throughput, latency and connection rate of each backend next to references.

It builds its own namespaces (a "host" namespace with a dead-end veth, and a
guest per path), runs iperf3 in both directions at each MTU and a TCP
ping-pong through every available kboxnet backend (via ``kboxnet run``) and
through the references found on the machine (native veth, slirp4netns, bare
passt as pasta), repeats each, and prints medians, ratios against
slirp4netns and retransmits. Before each run it waits for an idle machine
and it records the foreign CPU load seen during the run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from ..testing.netns import HostNetns, netns_supported
from ..testing.nsenter import bound_socket
from ..testing.procs import stop_process, wait_for
from . import cpu, measure, report
from .flows import SinkServer
from .paths import REFERENCES, GuestPath, kboxnet_backends
from .pingpong import EchoServer

IPERF_PORT = 5201
ECHO_PORT = 5300
SINK_PORT = 5301
DEFAULT_BACKENDS = ("passt", "minislirp")
REFERENCE_NAMES = tuple(cls.name for cls in REFERENCES)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kboxnet bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", action="append", metavar="NAME",
                    help=f"kboxnet backend to measure (repeatable; default: {', '.join(DEFAULT_BACKENDS)})")
    ap.add_argument("--reference", action="append", metavar="NAME", choices=REFERENCE_NAMES,
                    help=f"reference path (repeatable; default: all of {', '.join(REFERENCE_NAMES)})")
    ap.add_argument("--no-references", action="store_true", help="measure only kboxnet backends")
    ap.add_argument("--no-backends", action="store_true", help="measure only the references")
    ap.add_argument("--mtu", action="append", type=int, help="guest MTU (repeatable; default 1500 and 65520)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported (>=1)")
    ap.add_argument("-t", "--time", type=float, default=5.0, help="seconds per iperf3 run (default 5)")
    ap.add_argument("--quick", action="store_true", help="2 s iperf3 runs, shorter latency runs")
    ap.add_argument("--no-rr", action="store_true", help="skip request/response and connection rate")
    ap.add_argument("--no-throughput", action="store_true", help="skip iperf3")
    ap.add_argument("--flows", metavar="N,N,..", default="",
                    help="also measure N concurrent flows (scale curve), e.g. 1,10,100,1000")
    ap.add_argument("--json", action="store_true", help="print the JSON document instead of the table")
    ap.add_argument("--output", metavar="FILE", help="also write the JSON document to FILE")
    ap.add_argument("--chart", metavar="PNG", help="draw a throughput chart (needs matplotlib)")
    ap.add_argument("--idle-threshold", type=float, default=25.0,
                    help="foreign CPU %% (of one core) below which the machine counts as idle")
    ap.add_argument("--idle-timeout", type=float, default=30.0, help="longest wait for idle before a run")
    return ap


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in ("passt", "slirp4netns", "iperf3"):
        proc = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
        if proc.returncode == 0:
            out[pkg] = proc.stdout.strip()
    return out


def _code_version() -> dict[str, str]:
    """kboxnet's and its plugins' versions, and the git state of a source checkout (code may change
    between runs of a long benchmark in a shared checkout: the state is taken at the start)."""
    out: dict[str, str] = {}
    proc = subprocess.run([sys.executable, "-m", "kboxnet_core", "--version"], capture_output=True, text=True,
                          timeout=60)
    out["kboxnet"] = " ".join(proc.stdout.split())
    repo = Path(__file__).resolve().parents[2]
    if (repo / ".git").exists():
        git = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"], capture_output=True,
                             text=True)
        out["git"] = git.stdout.strip()
    return out


def select_paths(args: argparse.Namespace) -> tuple[list[GuestPath], dict[str, str]]:
    """The paths to measure and, by name, those skipped with the reason."""
    paths: list[GuestPath] = []
    skipped: dict[str, str] = {}
    if not args.no_references:
        wanted = args.reference or list(REFERENCE_NAMES)
        for cls in REFERENCES:
            if cls.name in wanted:
                p = cls()
                reason = p.unavailable()
                (skipped.__setitem__(p.name, reason) if reason else paths.append(p))
    if not args.no_backends:
        for p in kboxnet_backends(tuple(args.backend or DEFAULT_BACKENDS)):
            reason = p.unavailable()
            (skipped.__setitem__(p.name, reason) if reason else paths.append(p))
    return paths, skipped


def run_benchmark(args: argparse.Namespace) -> dict:
    seconds = 2.0 if args.quick else args.time
    rr_count, rr_conns = (500, 100) if args.quick else (2000, 300)
    mtus = args.mtu or [1500, 65520]
    paths, skipped = select_paths(args)
    samples: list[measure.Sample] = []
    code = _code_version()
    started = datetime.datetime.now(datetime.timezone.utc)
    with HostNetns(area="bench") as host:
        iperf_srv = host.host.popen(["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        echo = EchoServer(bound_socket(host.name, "0.0.0.0", ECHO_PORT)).start()
        sink = SinkServer(bound_socket(host.name, "0.0.0.0", SINK_PORT, listen=4096)).start()
        try:
            wait_for(lambda: _listening(host.name, IPERF_PORT), 10, what="iperf3 server")
            # repeats are interleaved across paths, so that a burst of foreign load hits one run
            # of several paths rather than every run of one path
            for mtu in mtus:
                for rep in range(args.repeats):
                    for path in paths:
                        samples += _measure_path(path, host, mtu, rep, args, seconds, rr_count, rr_conns, sink)
        finally:
            sink.stop()
            echo.stop()
            stop_process(iperf_srv)
    rows = report.summarize(samples)
    return {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "host": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
            "iperf_seconds": seconds, "repeats": args.repeats, "mtus": mtus,
            "rr_count": rr_count, "rr_conns": rr_conns, "versions": _versions(), "code": code,
            "idle_threshold_pct": args.idle_threshold,
        },
        "rows": [r.as_dict() for r in rows],
        "samples": [s.as_dict() for s in samples],
        "skipped": skipped,
    }


def _listening(netns: str, port: int) -> bool:
    out = subprocess.run(["ip", "netns", "exec", netns, "ss", "-Htln"], capture_output=True, text=True).stdout
    return f":{port} " in out


def _flow_counts(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _measure_path(path: GuestPath, host: HostNetns, mtu: int, rep: int, args: argparse.Namespace,
                  seconds: float, rr_count: int, rr_conns: int, sink: SinkServer) -> list[measure.Sample]:
    out: list[measure.Sample] = []
    try:
        with path.attach(host, mtu) as att:
            if not args.no_throughput:
                for reverse in (False, True):
                    idle = cpu.wait_idle(args.idle_threshold, timeout=args.idle_timeout)
                    s = measure.iperf(att, path.name, IPERF_PORT, mtu, reverse, seconds, rep, idle)
                    _log(f"{path.name:<12} mtu {mtu:<6} {s.test:<5} #{rep}: "
                         + (f"{s.gbps:.3f} Gbit/s retr {s.retransmits}" if not s.error else s.error)
                         + f" (foreign cpu {s.cpu_foreign_pct:.0f}%)")
                    out.append(s)
            if not args.no_rr:
                idle = cpu.wait_idle(args.idle_threshold, timeout=args.idle_timeout)
                s = measure.pingpong(att, path.name, ECHO_PORT, mtu, rep, rr_count, rr_conns, idle)
                _log(f"{path.name:<12} mtu {mtu:<6} rr    #{rep}: "
                     + (f"p50 {s.rr_p50_us} us p99 {s.rr_p99_us} us, {s.conn_per_s} conn/s"
                        if not s.error else s.error))
                out.append(s)
            for n in _flow_counts(args.flows):
                idle = cpu.wait_idle(args.idle_threshold, timeout=args.idle_timeout)
                s = measure.flows(att, path.name, sink, mtu, rep, n, seconds, idle)
                _log(f"{path.name:<12} mtu {mtu:<6} flows {n:<5} #{rep}: "
                     + (f"{s.gbps} Gbit/s, peak RSS {s.rss_mib} MiB, lost {s.lost_bytes} B"
                        if not s.error else s.error))
                out.append(s)
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        _log(f"{path.name} mtu {mtu}: setup failed: {exc}")
        out.append(measure.Sample(path=path.name, test="up", mtu=mtu, repeat=rep, error=f"setup: {exc}"))
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``kboxnet bench`` (the CLI passes the remaining arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        _log("kboxnet bench: --repeats must be >= 1")
        return 2
    reason = netns_supported()
    if reason:
        _log(f"kboxnet bench: cannot build namespaces here: {reason}")
        return 2
    missing = [b for b in ("iperf3", "ip", "ss") if not shutil.which(b)]
    if missing:
        _log(f"kboxnet bench: missing {', '.join(missing)} (apt-get install iperf3 iproute2)")
        return 2
    # SIGTERM unwinds like Ctrl-C, so the namespaces and servers are removed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    doc = run_benchmark(args)
    rows = [report.Row(**r) for r in doc["rows"]]
    if args.output:
        Path(args.output).write_text(json.dumps(doc, indent=2) + "\n")
    if args.chart:
        why = report.chart(rows, Path(args.chart))
        if why:
            _log(f"no chart: {why}")
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print(report.table(rows, doc["skipped"]))
    return 0

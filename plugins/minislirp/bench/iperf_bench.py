"""iperf3 through minislirp and through slirp4netns, same run, identical namespaces.

For each MTU (1500, 65520) and direction (up = guest->host, down = host->guest,
``-R``) it runs iperf3 ``--repeats`` times through every path and reports the
median Gbit/s, the ratio against slirp4netns and the CPU used by the
translator. The iperf3 server listens on host 127.0.0.1; the guest reaches it
as 10.0.2.2 (both translators map the gateway to host loopback). Nothing
leaves the machine: minislirp runs with egress allowed to 127.0.0.0/8 only,
and slirp4netns's guest only ever connects to 10.0.2.2.

    python3 iperf_bench.py [-t 5] [--repeats 3] [--mtu 1500 --mtu 65520] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kboxnet_core.testing.netns import Netns  # noqa: E402
from kboxnet_core.testing.ports import free_tcp_port  # noqa: E402
from kboxnet_core.testing.procs import stop_process  # noqa: E402

HERE = Path(__file__).resolve().parent
PATHS = {
    "minislirp-tap-offload": ["--vnet"],
    "minislirp-tap": [],
    "minislirp-stream": ["--stream"],
    "slirp4netns": None,
}


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process and its threads (seconds)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Path_:
    def __init__(self, name: str, mtu: int, profile: str = "") -> None:
        self.profile = profile
        self.name = name
        self.mtu = mtu
        self.ns = Netns(area="mslb")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Path_:
        self.ns.create()
        try:
            if self.name == "slirp4netns":
                self.proc = subprocess.Popen(["slirp4netns", "--configure", "--mtu", str(self.mtu), "--netns-type=path",
                                              self.ns.path, "tap0"], stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
                deadline = time.monotonic() + 10
                while "10.0.2.100" not in self.ns.run(["ip", "-4", "addr"], check=False).stdout:
                    if time.monotonic() > deadline:
                        raise RuntimeError("slirp4netns did not configure the namespace")
                    time.sleep(0.05)
            else:
                self.proc = subprocess.Popen([sys.executable, str(HERE / "serve.py"), "--netns", self.ns.name,
                                              "--mtu", str(self.mtu), *PATHS[self.name],
                                              *(["--profile", self.profile] if self.profile else [])],
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                line = self.proc.stdout.readline()
                if line.strip() != "READY":
                    raise RuntimeError(f"serve.py failed: {line!r}")
                self.ns.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
                self.ns.ip("link", "set", "tap0", "up", "mtu", str(self.mtu))
                self.ns.ip("route", "add", "default", "via", "10.0.2.2")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.ns.delete()

    def iperf(self, port: int, seconds: float, reverse: bool) -> tuple[float, float, int]:
        argv = ["iperf3", "-c", "10.0.2.2", "-p", str(port), "-t", str(seconds), "-J", "--connect-timeout", "3000"]
        if reverse:
            argv.append("-R")
        c0 = cpu_seconds(self.proc.pid)
        t0 = time.monotonic()
        r = self.ns.run(argv, timeout=seconds + 30, check=False)
        wall = time.monotonic() - t0
        cpu = (cpu_seconds(self.proc.pid) - c0) / wall * 100
        try:
            doc = json.loads(r.stdout)
            end = doc["end"]
            gbps = (end["sum_received"]["bits_per_second"]) / 1e9
            retr = end.get("sum_sent", {}).get("retransmits", 0)
        except (ValueError, KeyError):
            return 0.0, cpu, -1
        return gbps, cpu, retr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-t", "--time", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mtu", type=int, action="append")
    ap.add_argument("--path", action="append", choices=sorted(PATHS))
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--profile", metavar="DIR", help="cProfile each minislirp run into DIR/<path>-<mtu>-<dir>.prof")
    args = ap.parse_args()
    mtus = args.mtu or [1500, 65520]
    names = args.path or ["minislirp-tap-offload", "minislirp-tap", "slirp4netns"]
    port = free_tcp_port()
    server = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    results = []
    try:
        for mtu in mtus:
            for reverse in (False, True):
                for rep in range(args.repeats):
                    for name in names:  # interleaved: each path sees the same machine conditions
                        prof = ""
                        if args.profile and name != "slirp4netns":
                            Path(args.profile).mkdir(parents=True, exist_ok=True)
                            prof = f"{args.profile}/{name}-{mtu}-{'down' if reverse else 'up'}.prof"
                        with Path_(name, mtu, prof) as p:
                            gbps, cpu, retr = p.iperf(port, args.time, reverse)
                        row = {"path": name, "mtu": mtu, "dir": "down" if reverse else "up", "rep": rep,
                               "gbps": round(gbps, 3), "cpu_pct": round(cpu, 1), "retr": retr}
                        results.append(row)
                        print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        stop_process(server)
    print(f"{'path':24} {'mtu':>6} {'dir':>5} {'Gbit/s':>8} {'x slirp':>8} {'cpu%':>6}")
    for mtu in mtus:
        for d in ("up", "down"):
            med = {}
            for name in names:
                rows = [r for r in results if r["path"] == name and r["mtu"] == mtu and r["dir"] == d]
                med[name] = (statistics.median(r["gbps"] for r in rows), statistics.median(r["cpu_pct"] for r in rows))
            ref = med.get("slirp4netns", (0, 0))[0]
            for name in names:
                g, c = med[name]
                ratio = f"{g / ref:.2f}" if ref else "-"
                print(f"{name:24} {mtu:>6} {d:>5} {g:>8.2f} {ratio:>8} {c:>6.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""iperf3 through minislirp and through slirp4netns, same run, identical namespaces.

For each MTU (1500, 65520) and direction (up = guest->host, down = host->guest,
``-R``) it runs iperf3 ``--repeats`` times through every path and reports the
median Gbit/s, the ratio against slirp4netns and the CPU used by the
translator. The iperf3 server listens on host 127.0.0.1; the guest reaches it
as 10.0.2.2 (both translators map the gateway to host loopback). Nothing
leaves the machine: minislirp runs with egress allowed to 127.0.0.0/8 only,
and slirp4netns's guest only ever connects to 10.0.2.2.

``--ipv6``: the same over IPv6: the server listens on host ::1, the guest
(SLAAC address from the translator's router advertisement; slirp4netns with
``--enable-ipv6``) connects to fd00::2. ``--inbound``: the iperf3 server runs
in the guest and the client on the host connects to a published port
(minislirp ``[[net.forward]]``; slirp4netns ``add_hostfwd`` over its API
socket), 127.0.0.1 or [::1] with ``--ipv6``.

    python3 iperf_bench.py [-t 5] [--repeats 3] [--mtu 1500 --mtu 65520] [--ipv6] [--inbound] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from kboxnet_core.testing.netns import Netns  # noqa: E402
from kboxnet_core.testing.ports import free_tcp_port  # noqa: E402
from kboxnet_core.testing.procs import stop_process  # noqa: E402

GUEST_PORT = 5201

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
    def __init__(self, name: str, mtu: int, profile: str = "", ipv6: bool = False, publish: int = 0) -> None:
        self.profile = profile
        self.ipv6 = ipv6
        self.publish = publish  # host port forwarded to the guest's GUEST_PORT (0: none)
        self.loopback = "::1" if ipv6 else "127.0.0.1"
        self.api = ""
        self.name = name
        self.mtu = mtu
        self.ns = Netns(area="mslb")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Path_:
        self.ns.create()
        try:
            if self.name == "slirp4netns":
                self.api = f"/tmp/kbn-mslb-{os.getpid()}-{self.ns.name}.sock"
                extra = ["--enable-ipv6"] if self.ipv6 else []
                self.proc = subprocess.Popen(["slirp4netns", "--configure", "--mtu", str(self.mtu), *extra,
                                              "--api-socket", self.api, "--netns-type=path",
                                              self.ns.path, "tap0"], stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
                deadline = time.monotonic() + 10
                while "10.0.2.100" not in self.ns.run(["ip", "-4", "addr"], check=False).stdout:
                    if time.monotonic() > deadline:
                        raise RuntimeError("slirp4netns did not configure the namespace")
                    time.sleep(0.05)
                if self.publish:
                    self._slirp_hostfwd()
            else:
                fwd = []
                if self.publish:
                    host = f"[::1]:{self.publish}" if self.ipv6 else f"127.0.0.1:{self.publish}"
                    fwd = ["--forward", f"{host}={GUEST_PORT}"]
                self.proc = subprocess.Popen([sys.executable, str(HERE / "serve.py"), "--netns", self.ns.name,
                                              "--mtu", str(self.mtu), *PATHS[self.name], "--allow", "::1/128",
                                              *fwd,
                                              *(["--profile", self.profile] if self.profile else [])],
                                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                line = self.proc.stdout.readline()
                if line.strip() != "READY":
                    raise RuntimeError(f"serve.py failed: {line!r}")
                self.ns.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
                self.ns.ip("link", "set", "tap0", "up", "mtu", str(self.mtu))
                self.ns.ip("route", "add", "default", "via", "10.0.2.2")
            if self.ipv6:
                self._wait_slaac()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.ns.delete()
        if self.api:
            Path(self.api).unlink(missing_ok=True)

    def _wait_slaac(self) -> None:
        deadline = time.monotonic() + 15
        while not re.search(r"inet6 fd00::\S+/64 scope global (?!.*tentative)",
                            self.ns.run(["ip", "-6", "addr", "show", "dev", "tap0"], check=False).stdout):
            if time.monotonic() > deadline:
                raise RuntimeError("no SLAAC address in the namespace")
            time.sleep(0.1)

    def _slirp_hostfwd(self) -> None:
        deadline = time.monotonic() + 5
        while not Path(self.api).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        req = {"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": self.loopback,
                                                       "host_port": self.publish, "guest_port": GUEST_PORT}}
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(self.api)
            s.sendall(json.dumps(req).encode())
            s.shutdown(socket.SHUT_WR)
            answer = s.recv(4096).decode()
        if "error" in answer:
            raise RuntimeError(f"slirp4netns add_hostfwd: {answer}")

    def iperf_inbound(self, seconds: float, reverse: bool) -> tuple[float, float, int]:
        """iperf3 server in the guest, client on the host through the published port."""
        srv = subprocess.Popen([*self.ns.prefix(), "iperf3", "-s", "-1", "-p", str(GUEST_PORT)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            argv = ["iperf3", "-c", self.loopback, "-p", str(self.publish), "-t", str(seconds), "-J",
                    "--connect-timeout", "3000", *(["-R"] if reverse else [])]
            c0 = cpu_seconds(self.proc.pid)
            t0 = time.monotonic()
            r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
            wall = time.monotonic() - t0
        finally:
            stop_process(srv)
        return self._parse(r.stdout, (cpu_seconds(self.proc.pid) - c0) / wall * 100)

    @staticmethod
    def _parse(out: str, cpu: float) -> tuple[float, float, int]:
        try:
            end = json.loads(out)["end"]
            return end["sum_received"]["bits_per_second"] / 1e9, cpu, end.get("sum_sent", {}).get("retransmits", 0)
        except (ValueError, KeyError):
            return 0.0, cpu, -1

    def iperf(self, port: int, seconds: float, reverse: bool) -> tuple[float, float, int]:
        argv = ["iperf3", "-c", "fd00::2" if self.ipv6 else "10.0.2.2", "-p", str(port), "-t", str(seconds), "-J",
                "--connect-timeout", "3000"]
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
    ap.add_argument("--ipv6", action="store_true", help="over IPv6 (host ::1, guest reaches it as fd00::2)")
    ap.add_argument("--inbound", action="store_true", help="iperf3 server in the guest, via a published port")
    ap.add_argument("--profile", metavar="DIR", help="cProfile each minislirp run into DIR/<path>-<mtu>-<dir>.prof")
    args = ap.parse_args()
    mtus = args.mtu or [1500, 65520]
    names = args.path or ["minislirp-tap-offload", "minislirp-tap", "slirp4netns"]
    if args.inbound and args.ipv6 and "slirp4netns" in names:
        # slirp4netns 1.2.0: add_hostfwd answers "bad arguments.host_addr" for ::1
        print("slirp4netns has no IPv6 host forwarding: left out", file=sys.stderr)
        names.remove("slirp4netns")
    port = free_tcp_port("::1" if args.ipv6 else "127.0.0.1")
    loopback = "::1" if args.ipv6 else "127.0.0.1"
    server = subprocess.Popen(["iperf3", "-s", "-B", loopback, "-p", str(port)], stdout=subprocess.DEVNULL,
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
                        publish = free_tcp_port(loopback) if args.inbound else 0
                        with Path_(name, mtu, prof, args.ipv6, publish) as p:
                            if args.inbound:
                                gbps, cpu, retr = p.iperf_inbound(args.time, reverse)
                            else:
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

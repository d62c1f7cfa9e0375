#!/usr/bin/env python3
"""Benchmark host-bypass against native host loopback (same run, interleaved, medians).

* iperf3 -c to a host iperf3 server on 127.0.0.1: native vs. from an empty
  namespace through bypass (target: bypass >= 0.95 x native).
* connect() latency p50/p99 (Python client, socket()/close() not timed):
  native; bypassed; the namespace's own stack under the filter (policy miss,
  server inside the namespace), before any bypass (CONTINUE) and after one
  (performed by the supervisor); the same without the filter; and, when
  ``kboxnet run`` is available, through minislirp to the gateway (10.0.2.2,
  mapped to host loopback).

Traffic stays on loopback and in a namespace this script creates and removes.
Usage: python3 plugins/bypass/bench/bench_bypass.py [--runs 5] [--seconds 5] [--connects 3000]
       [--rounds 3] [--no-iperf] [--json FILE]
To compare supervisor versions in one run, start it with PYTHONPATH pointing at another
checkout's plugins/bypass for one of them (the clients are this script's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kboxnet_bypass.config import BypassConfig
from kboxnet_bypass.runner import HostBypassRunner
from kboxnet_bypass.supervisor import SupervisorSettings

from kboxnet_core.backend import NetnsTarget

HERE = Path(__file__).resolve().parent
PYCLIENT = str(HERE.parent / "tests" / "clients" / "pyclient.py")
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bypassed(netns: NetnsTarget, argv: list[str], allow: list[str], timeout: float = 120) -> tuple[str, dict]:
    """Run argv under bypass; returns (stdout, counters)."""
    cfg = BypassConfig(allow=allow, deny=[])
    runner = HostBypassRunner(SupervisorSettings(cfg.policy(), 10.0, True, False))
    with tempfile.NamedTemporaryFile("r", suffix=".out") as out:
        cmd = " ".join(f"'{a}'" for a in argv) + f" > '{out.name}'"
        pid = runner.spawn(["sh", "-c", cmd], netns, dict(os.environ))
        deadline = time.monotonic() + timeout
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        runner.close()
        return Path(out.name).read_text(), dict(runner.counters())


def iperf_bps(text: str) -> float:
    return json.loads(text)["end"]["sum_received"]["bits_per_second"]


def iperf_runs(netns: NetnsTarget, args: argparse.Namespace, procs: list[subprocess.Popen]) -> dict:
    """iperf3 -c to a host server: native and through bypass, interleaved; medians."""
    iport = free_port()
    procs.append(subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iport)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)
    client = ["iperf3", "-c", "127.0.0.1", "-p", str(iport), "-t", str(args.seconds), "-J"]
    native, bypass = [], []
    for i in range(args.runs):
        order = ("native", "bypass") if i % 2 == 0 else ("bypass", "native")
        for which in order:
            if which == "native":
                out = subprocess.run(client, capture_output=True, text=True, timeout=args.seconds + 30).stdout
                native.append(iperf_bps(out))
            else:
                out, counters = bypassed(netns, client, [f"127.0.0.1:{iport}"], args.seconds + 30)
                assert counters.get("bypassed", 0) >= 2, counters
                bypass.append(iperf_bps(out))
            time.sleep(0.5)
    return {
        "native_gbps": [round(x / 1e9, 2) for x in native],
        "bypass_gbps": [round(x / 1e9, 2) for x in bypass],
        "native_median_gbps": round(statistics.median(native) / 1e9, 2),
        "bypass_median_gbps": round(statistics.median(bypass) / 1e9, 2),
        "ratio": round(statistics.median(bypass) / statistics.median(native), 3),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connects", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3, help="connect-latency rounds (medians over them)")
    ap.add_argument("--no-iperf", action="store_true", help="connect latency only")
    ap.add_argument("--json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespace)", file=sys.stderr)
        return 2
    name = f"kbn-bp-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    procs: list[subprocess.Popen] = []
    results: dict = {}
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        netns = NetnsTarget(f"/run/netns/{name}", "lo", 0)
        if not args.no_iperf:
            results["iperf3"] = iperf_runs(netns, args, procs)
            print("iperf3:", json.dumps(results["iperf3"]), flush=True)
        # --- connect latency ---
        cport = free_port()
        server = ("import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                  f"s.bind(('127.0.0.1',{cport}))\ns.listen(4096)\n"
                  "while True:\n    c,_=s.accept()\n    c.close()\n")
        procs.append(subprocess.Popen([PY, "-c", server]))
        time.sleep(0.5)
        n = str(args.connects)
        lat: dict[str, list[dict]] = {"native": [], "bypass": [], "ns_filter": [], "ns_mediated": [],
                                      "ns_nofilter": []}
        for _ in range(args.rounds):
            lat["native"].append(json.loads(subprocess.run(
                [PY, PYCLIENT, "latency", "127.0.0.1", str(cport), n], capture_output=True, text=True).stdout))
            out, _c = bypassed(netns, [PY, PYCLIENT, "latency", "127.0.0.1", str(cport), n], [f"127.0.0.1:{cport}"])
            lat["bypass"].append(json.loads(out))
            out, _c = bypassed(netns, [PY, PYCLIENT, "latency_local", n], [f"127.0.0.1:{cport}"])
            lat["ns_filter"].append(json.loads(out))
            out, _c = bypassed(netns, [PY, PYCLIENT, "latency_local_after_bypass", str(cport), n],
                               [f"127.0.0.1:{cport}"])
            lat["ns_mediated"].append(json.loads(out))
            lat["ns_nofilter"].append(json.loads(subprocess.run(
                ["ip", "netns", "exec", name, PY, PYCLIENT, "latency_local", n],
                capture_output=True, text=True).stdout))
            if shutil.which("kboxnet"):
                kr = subprocess.run(["kboxnet", "run", "-q", "--net", "minislirp", "--", PY, PYCLIENT, "latency",
                                     "10.0.2.2", str(cport), n], capture_output=True, text=True, timeout=300)
                if kr.returncode == 0:
                    lat.setdefault("stack_minislirp", []).append(json.loads(kr.stdout))
        results["connect_latency_us"] = {
            k: {"p50": round(statistics.median(r["p50_us"] for r in v), 1),
                "p99": round(statistics.median(r["p99_us"] for r in v), 1),
                "rounds_p50": [round(r["p50_us"], 1) for r in v]}
            for k, v in lat.items() if v
        }
        cl = results["connect_latency_us"]
        results["bypass_added_p50_us"] = round(cl["bypass"]["p50"] - cl["native"]["p50"], 1)
        print("connect latency (us):", json.dumps(cl), flush=True)
        print("bypass adds p50:", results["bypass_added_p50_us"], "us")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        subprocess.run(["ip", "netns", "del", name], check=False)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

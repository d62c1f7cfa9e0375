#!/usr/bin/env python3
"""Many concurrent uploads through passt on a tap link, each flow checked end to end by sha256.

The shape of ``kboxnet bench``'s scale curve (N flows writing from the guest to a
sink on the host's loopback), but every flow carries seeded random data whose
sha256 the sink sends back, and everything is bounded in time. Each run starts
a fresh session (``kboxnet run``'s relay mode, default repairs) and reports
verified / mismatched / undelivered flows, the relay's counters and, for a
stalled run, what passt was doing (its current system call).

Traffic stays inside namespaces created here (passt in a "host" namespace with a
dead-end route, the sink on that namespace's loopback).

Usage: python3 plugins/passt/bench/flowcheck.py [--runs 3] [--flows 100] [--bytes 2500000]
       [--mtu 1500] [--time 60] [--mode relay|pasta] [--hand] [--pcap PATH] [--tcpdump PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import attrs  # noqa: E402
from kboxnet_passt.plugin import PasstBackend  # noqa: E402
from kboxnet_passt.process import PasstProcess  # noqa: E402
from kboxnet_passt.relay import make_socketpair  # noqa: E402
from topo import PasstTopology  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_passt import RelayThread  # noqa: E402

from kboxnet_core.backend import NetnsTarget, SessionContext  # noqa: E402
from kboxnet_core.testing.udhcpc import write_udhcpc_script  # noqa: E402

PEER = str(Path(__file__).resolve().parent / "flowcheck_peer.py")
PORT = 5301


def passt_syscall(root_pid: int) -> str:
    """The current system call of every passt process under ``root_pid`` (for stalled runs)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            if comm not in ("passt", "passt.avx2"):
                continue
            call = Path(f"/proc/{entry}/syscall").read_text().split()
            wchan = Path(f"/proc/{entry}/wchan").read_text()
        except OSError:
            continue
        names = {"45": "recvfrom", "46": "sendmsg", "232": "epoll_wait", "44": "sendto", "0": "read"}
        if call and call[0] in names:
            detail = f"{names[call[0]]}(fd={int(call[1], 16)}, len={int(call[3], 16)}, flags={int(call[4], 16):#x})"
        else:
            detail = " ".join(call[:1])
        out.append(f"pid {entry}: {detail} wchan={wchan}")
    return "; ".join(out) or f"no passt process found (root {root_pid})"


class HandRelay:
    """passt on a socketpair with the plain relay (no repairs), as in the iperf3 benchmark."""

    def __init__(self, link, argv_for_fd, debug: bool = False) -> None:
        self.ours, theirs = make_socketpair()
        argv = list(argv_for_fd(theirs.fileno()))
        if debug:  # passt's stderr goes to the log (see --passt-debug)
            argv[argv.index("--quiet")] = "--debug"
        self.proc = PasstProcess(argv, pass_fds=(theirs.fileno(),), name="passt-by-hand")
        theirs.close()
        if not self.proc.wait_ready(10):
            raise RuntimeError(self.proc.exit_description())
        self.relay_thread = RelayThread(link, self.ours)

    def counters(self) -> dict:
        return self.relay_thread.relay.counters()

    def close(self) -> None:
        self.relay_thread.close()
        self.proc.terminate()
        self.ours.close()


def one_run(topo: PasstTopology, args: argparse.Namespace, script: Path, run: int) -> dict:
    tap = topo.open_tap(args.mtu)
    extra = ("--pcap", f"{args.pcap}.{run}") if args.pcap else ()
    pasta = args.mode == "pasta"
    cfg = topo.config(mtu=args.mtu, extra_args=extra, **({"mode": "pasta", "fixups": "off"} if pasta else {}))
    ctx = SessionContext(cfg, Path(tempfile.mkdtemp(prefix="kbn-passt-flows-")))
    if pasta:  # configured like kboxnet run's namespace; pasta takes over from the tap
        topo.guest.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
        topo.guest.ip("route", "add", "default", "via", "10.0.2.2", "dev", "tap0")
        ctx = attrs.evolve(ctx, netns=NetnsTarget(topo.guest.path, "tap0", os.getpid()))
    backend = PasstBackend()
    session = backend.open(tap, ctx)
    hand = None
    sink = subprocess.Popen([*topo.hostns.host.prefix(), sys.executable, PEER, "sink", "127.0.0.1", str(PORT),
                             "--flows", str(args.flows), "--time", str(args.time + 5)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "listening":
            raise RuntimeError(f"sink did not start: {sink.stderr.read() if sink.stderr else ''}")
        if args.hand:
            hand = HandRelay(tap, session._argv_for_fd, debug=bool(args.passt_debug))
            pid = hand.proc.pid
        else:
            session.start()
            if not session.ready(10):
                raise RuntimeError(f"session not ready: {session.wait(0)}")
            pid = session.pids()[0]
        if not pasta:
            r = topo.guest_run(["busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "5", "-T", "1",
                                "-s", str(script), "-O", "mtu"], timeout=20)
            if r.returncode != 0:
                raise RuntimeError(r.stdout + r.stderr)
        dump = None
        if args.tcpdump:
            dump = subprocess.Popen([*topo.guest.prefix(), "tcpdump", "-i", "tap0p" if pasta else "tap0", "-s", "128", "-U", "-w",
                                     f"{args.tcpdump}.{run}", "tcp"], stderr=subprocess.PIPE)
            assert dump.stderr is not None
            dump.stderr.readline()  # "listening on tap0 ..."
        t0 = time.monotonic()
        c = topo.guest_run([sys.executable, PEER, "client", "10.0.2.2", str(PORT), "--flows", str(args.flows),
                            "--bytes", str(args.bytes), "--time", str(args.time)], timeout=args.time + 30)
        try:
            result = json.loads(c.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            result = {"error": (c.stderr or c.stdout)[-300:]}
        result["wall_s"] = round(time.monotonic() - t0, 2)
        if result.get("verified") != args.flows:
            result["passt_state"] = passt_syscall(pid)
        counters = hand.counters() if hand is not None else dict(session.counters())
        result["relay"] = counters
        if dump is not None:
            dump.terminate()
            dump.wait(10)
    finally:
        if hand is not None:
            hand.close()
        else:
            session.stop()
            session.wait(10)
        sink.kill()
        out, _ = sink.communicate(timeout=10)
        tap.close()
        topo.link = None
    lines = [ln for ln in (out or "").splitlines() if ln.startswith("{")]
    if lines:
        result.update(json.loads(lines[-1]))
    result["run"] = run
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flows", type=int, default=100)
    ap.add_argument("--bytes", type=int, default=2_500_000, help="bytes per flow")
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--time", type=float, default=60.0, help="bound of one run's transfer (s)")
    ap.add_argument("--mode", choices=("relay", "pasta"), default="relay", help="[net.passt] mode of the session")
    ap.add_argument("--hand", action="store_true", help="plain relay + passt instead of the kboxnet session")
    ap.add_argument("--pcap", default="", help="passt writes a capture to PATH.RUN (its directory must be "
                    "writable for nobody)")
    ap.add_argument("--tcpdump", default="", help="capture the guest's tap0 (TCP headers) to PATH.RUN")
    ap.add_argument("--passt-debug", default="", help="with --hand: run passt with --debug, its log to PATH")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.passt_debug:
        logging.basicConfig(filename=args.passt_debug, level=logging.INFO, format="%(relativeCreated)d %(message)s")
    results = []
    with PasstTopology("pflow") as topo:
        script = write_udhcpc_script(Path(tempfile.mkdtemp(prefix="kbn-passt-flows-")) / "udhcpc.sh")
        for run in range(args.runs):
            res = one_run(topo, args, script, run)
            results.append(res)
            print(json.dumps(res), flush=True)
    if args.json:
        with open(args.json, "a") as fh:
            for res in results:
                fh.write(json.dumps({"mtu": args.mtu, "hand": args.hand, **res}) + "\n")
    bad = sum(1 for r in results if r.get("verified") != args.flows)
    print(f"{len(results) - bad}/{len(results)} runs with all {args.flows} flows verified")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

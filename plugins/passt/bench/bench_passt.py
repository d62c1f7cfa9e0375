#!/usr/bin/env python3
"""iperf3 through passt: kboxnet's passt session vs the same passt started by hand.

Same run, same topology, same kind of link, interleaved (hand, kboxnet, hand,
...) so that drift on this shared 2-core machine hits both alike:

* ``stream``: a qemu stream link (a "VMM" is emulated by relaying the guest's
  tap to a socketpair). kboxnet hands the link's socket to passt (``--fd``,
  direct mode, ``fixups="off"``); by hand: ``passt --fd`` on the same kind of
  socket with the same options.
* ``tap``: a tap link. kboxnet relays it to passt (with the old-passt repairs
  when they apply, and the MTU capped for an old passt); by hand: a naive
  relay (each batch in one ``sendmsg``) + passt at the MTU asked for.
* ``stream-default``: a stream link with the default ``fixups="auto"``: on
  an old passt, kboxnet relays it (to repair the defects) while the passt
  by hand gets the socket directly; this is the price of the repairs.
* ``pasta``: kboxnet's pasta mode vs the same pasta command line by hand.

Both directions (up = guest->host, down = host->guest with ``-R``), MTU 1500
and 65520, ``--runs`` runs each (median reported, with retransmits, since
passt on this kernel has bimodal upload stalls). Traffic stays inside
namespaces created here: passt runs in a "host" namespace whose only route is
a dead end, iperf3's server listens on that namespace's loopback.

Usage: python3 plugins/passt/bench/bench_passt.py [--runs 3] [--time 3] [--json out.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import attrs  # noqa: E402
from kboxnet_passt.plugin import PasstBackend  # noqa: E402
from kboxnet_passt.process import PasstProcess  # noqa: E402
from kboxnet_passt.relay import Relay, make_socketpair  # noqa: E402
from topo import PasstTopology  # noqa: E402

from kboxnet_core.backend import NetnsTarget, SessionContext  # noqa: E402
from kboxnet_core.bench import cpu  # noqa: E402
from kboxnet_core.links.stream import StreamLink, enlarge_socket_buffers  # noqa: E402
from kboxnet_core.testing.udhcpc import write_udhcpc_script  # noqa: E402

PORT = 5201


class NaiveRelay(Relay):
    """The relay as a user would write it (and as kboxnet's was before 2026-11-23): each batch
    of frames in one ``sendmsg``, so passt may read a frame in pieces."""

    max_write = 1 << 30


class RelayThread:
    def __init__(self, link, sock, naive: bool = False) -> None:
        self.relay = (NaiveRelay if naive else Relay)(link, sock)
        self._r, self._w = os.pipe()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.relay.run(self._r)
        except Exception:  # noqa: BLE001 - ends with its peer
            pass

    def close(self) -> None:
        os.write(self._w, b"x")
        self.thread.join(5)
        os.close(self._r)
        os.close(self._w)


def iperf(topo: PasstTopology, seconds: int, reverse: bool) -> dict:
    """One iperf3 run after an idle second; records the CPU other processes used meanwhile."""
    try:
        cpu.wait_idle(max_foreign_pct=30.0, window=1.0, timeout=20.0)
    except Exception:  # noqa: BLE001 - a busy machine is recorded, not fatal
        pass
    before = cpu.sample()
    result = _iperf(topo, seconds, reverse)
    result["foreign_cpu_pct"] = round(cpu.usage(before, cpu.sample()).foreign_pct, 1)
    return result


def _iperf(topo: PasstTopology, seconds: int, reverse: bool) -> dict:
    argv = ["iperf3", "-c", "10.0.2.2", "-p", str(PORT), "-t", str(seconds), "-J"] + (["-R"] if reverse else [])
    r = topo.guest_run(argv, timeout=seconds + 20)
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"gbps": 0.0, "retransmits": -1, "error": (r.stderr or r.stdout)[-200:]}
    if "error" in data:
        return {"gbps": 0.0, "retransmits": -1, "error": data["error"]}
    end = data["end"]
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0)}


class Setup:
    """One way of running passt for a guest; start() leaves the guest configured."""

    def __init__(self, topo: PasstTopology, kind: str, how: str, mtu: int, script: Path) -> None:
        self.topo, self.kind, self.how, self.mtu, self.script = topo, kind, how, mtu, script
        self.parts: list = []

    def start(self) -> None:
        t = self.topo
        kind = self.kind
        fixups = "off" if kind in ("stream", "pasta") else "auto"
        mode = "pasta" if kind == "pasta" else "relay"
        cfg = t.config(mtu=self.mtu, fixups=fixups, mode=mode)
        backend = PasstBackend()
        tap = t.open_tap(self.mtu)
        self.parts.append(tap)
        ctx = SessionContext(cfg, Path(tempfile.mkdtemp(prefix="kbn-passt-bench-")))
        if kind in ("stream", "stream-default"):
            vmm_end, link_end = make_socketpair()
            link = StreamLink(link_end, mtu=self.mtu, name="bench vmm")
            self.parts[:0] = [RelayThread(tap, vmm_end), vmm_end, link]
        else:
            link = tap
        if kind == "pasta":
            t.guest.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
            t.guest.ip("route", "add", "default", "via", "10.0.2.2", "dev", "tap0")
            ctx = attrs.evolve(ctx, netns=NetnsTarget(t.guest.path, "tap0", os.getpid()))
        session = backend.open(link, ctx)
        if self.how == "kboxnet":
            session.start()
            if not session.ready(10):
                raise RuntimeError(f"session not ready: {session.wait(0)}")
            self.parts.insert(0, session)
            self.argv = session.argv
        elif kind == "pasta":
            # the same pasta command line, by hand, with the tap set down as the session does
            session._set_guest_link(False)
            proc = PasstProcess(session.argv, name="pasta-by-hand")
            if not proc.wait_ready(10):
                raise RuntimeError(proc.exit_description())
            self.parts.insert(0, proc)
            self.argv = proc.argv
        else:
            # the same passt options, started by hand: --fd on the link's socket for stream links
            # (what a user would do without kboxnet), a socketpair + plain relay for tap links
            by_hand = backend.open(link, attrs.evolve(ctx, config=t.config(mtu=self.mtu, fixups="off")))
            if kind in ("stream", "stream-default"):
                fd = link.socket.fileno()
                link.socket.setblocking(True)
                proc = PasstProcess(by_hand._argv_for_fd(fd), pass_fds=(fd,), name="passt-by-hand")
            else:
                # a naive relay on a socketpair with 16 MiB buffers, and passt at the MTU asked for
                ours, theirs = make_socketpair()
                enlarge_socket_buffers(ours, 16 << 20)
                argv = list(session._argv_for_fd(theirs.fileno()))
                argv[argv.index("--mtu") + 1] = str(self.mtu)
                proc = PasstProcess(argv, pass_fds=(theirs.fileno(),), name="passt-by-hand")
                theirs.close()
                self.parts.insert(0, ours)
                self.parts.insert(0, RelayThread(tap, ours, naive=True))
            if not proc.wait_ready(10):
                raise RuntimeError(proc.exit_description())
            self.parts.insert(0, proc)
            self.argv = proc.argv
        if kind != "pasta":
            r = t.guest_run(["busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "5", "-T", "1",
                             "-s", str(self.script), "-O", "mtu"], timeout=20)
            if r.returncode != 0:
                raise RuntimeError(r.stdout + r.stderr)

    def stop(self) -> None:
        for part in self.parts:
            if hasattr(part, "stop") and hasattr(part, "wait"):  # a session
                part.stop()
                part.wait(10)
            elif isinstance(part, PasstProcess):
                part.terminate()
            elif hasattr(part, "close"):
                part.close()
        self.parts.clear()
        self.topo.link = None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--time", type=int, default=3)
    ap.add_argument("--kinds", default="stream,tap")
    ap.add_argument("--mtus", default="1500,65520")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = []
    with PasstTopology("pbench") as topo:
        server = subprocess.Popen([*topo.hostns.host.prefix(), "iperf3", "-s", "-B", "127.0.0.1", "-p", str(PORT)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        script = write_udhcpc_script(Path(tempfile.mkdtemp(prefix="kbn-passt-bench-")) / "udhcpc.sh")
        try:
            time.sleep(0.3)
            for kind in args.kinds.split(","):
                for mtu in (int(m) for m in args.mtus.split(",")):
                    for reverse in (False, True):
                        results: dict[str, list[dict]] = {"hand": [], "kboxnet": []}
                        for _ in range(args.runs):
                            for how in ("hand", "kboxnet"):
                                setup = Setup(topo, kind, how, mtu, script)
                                try:
                                    setup.start()
                                    res = iperf(topo, args.time, reverse)
                                finally:
                                    setup.stop()
                                results[how].append(res)
                        row = {"kind": kind, "mtu": mtu, "dir": "down" if reverse else "up"}
                        for how, runs in results.items():
                            row[f"{how}_gbps"] = [round(r["gbps"], 3) for r in runs]
                            row[f"{how}_median"] = round(statistics.median(r["gbps"] for r in runs), 3)
                            row[f"{how}_retrans"] = [r["retransmits"] for r in runs]
                            row[f"{how}_foreign_cpu"] = [r["foreign_cpu_pct"] for r in runs]
                        hand = row["hand_median"]
                        row["ratio"] = round(row["kboxnet_median"] / hand, 3) if hand else None
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            server.kill()
            server.wait()
    if args.json:
        with open(args.json, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    print("\nkind    mtu    dir   hand Gbit/s  kboxnet Gbit/s  ratio  retransmits hand / kboxnet")
    for r in rows:
        print(f"{r['kind']:<7} {r['mtu']:<6} {r['dir']:<5} {r['hand_median']:>10.3f}  {r['kboxnet_median']:>13.3f}"
              f"  {r['ratio'] if r['ratio'] is not None else '-':>5}  {r['hand_retrans']} / {r['kboxnet_retrans']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

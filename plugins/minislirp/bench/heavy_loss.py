"""Reproduce the heavy-loss stall: 1,000 upload flows at MTU 65520 with the guest's tap queue cut short.

Usage (root): ``python3 plugins/minislirp/bench/heavy_loss.py [--runs 3] [--qlen 200] [--flows 1000]``

Per run: a namespace guest behind minislirp (tap + virtio-net header), its tap ``txqueuelen`` cut to
``--qlen`` so that the guest's frames are dropped whenever minislirp falls behind, and the 1,000-flow
upload of the slow test (write flat out for ``--seconds``, half-close, wait for the sink's byte
count + sha256 until ``--limit`` s). Prints one line per run (LATE: not done ``--snap`` s after the
writers stopped; DONE/OK/FAILED/LOST/STUCK: not done at ``--limit``) and the TCP loss counters.
``--sink-process`` runs the sink in its own process (it stalls more often than in a thread).
``-v`` traces every segment and prints, for the late flows, the guest's ``ss -tin`` line,
minislirp's view of the flow and its segment history.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import flow_server  # noqa: E402
import guest_tools  # noqa: E402
from guest import GuestNet  # noqa: E402

from kboxnet_core.testing.ports import free_tcp_port  # noqa: E402

# the upload client, extended: "SNAP <ports>" lists the flows not done ``snap`` s after the writers stopped
# (their state is then read on both sides), and "LATE" counts the flows that took longer than that
UPLOAD = guest_tools.UPLOAD_FLOWS.replace(
    "done = ok = failed = 0\n",
    "done = ok = failed = 0\nsnap = float(sys.argv[7])\nsnapped = False\nlate = 0\nt_first = time.monotonic()\n"
).replace(
    "    writing = time.monotonic() < stop_at\n",
    "    writing = time.monotonic() < stop_at\n"
    "    if not snapped and time.monotonic() > stop_at + snap:\n"
    "        snapped = True\n"
    "        late = len(sel.get_map())\n"
    "        print(\"SNAP\", \" \".join(str(k.fileobj.getsockname()[1]) for k in list(sel.get_map().values())),"
    " flush=True)\n"
).replace('print("DONE"', 'print("LATE", late)\nprint("DONE"')

FIELDS = ("state", "seq_to_tap", "seq_ack_from_tap", "seq_max", "seq_from_tap", "seq_ack_to_tap",
          "wnd_from_tap", "wnd_to_tap", "readable", "eof", "fin_to_tap", "fin_acked", "fin_from_tap",
          "rto_at", "retries", "wnd_wait", "pend_len", "ooo_len", "closing_since")


def flow_dump(flow, now: float) -> str:
    parts = []
    for f in FIELDS:
        v = getattr(flow, f)
        if f in ("rto_at", "closing_since") and v:
            v = round(v - now, 2)
        parts.append(f"{f}={v}")
    if flow.ooo:
        base = flow.seq_from_tap
        parts.append("ooo=" + ",".join(f"+{(s - base) & 0xFFFFFFFF}:{len(d)}{'F' if fin else ''}"
                                       for s, (d, fin) in sorted(flow.ooo.items(),
                                                                 key=lambda kv: (kv[0] - base) & 0xFFFFFFFF)))
    return " ".join(parts)


def one_run(n: int, qlen: int, seconds: float, limit: float, verbose: bool, sink_process: bool, snap: float) -> dict:
    port = free_tcp_port()
    if sink_process:
        sink = subprocess.Popen([sys.executable, str(HERE.parent / "tests" / "flow_server.py"), "sink", str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert sink.stdout.readline().strip() == "READY"
        try:
            return _measure(port, n, qlen, seconds, limit, verbose, snap)
        finally:
            sink.kill()
            sink.wait(10)
    with flow_server.served_in_thread("sink", port):
        return _measure(port, n, qlen, seconds, limit, verbose, snap)


def _trace(eng, history: dict[int, list[str]]) -> None:
    """Keep, per guest port, every guest TCP segment, what minislirp made of it, and the ACKs it sent."""
    import struct

    tcp = eng.tcp
    orig_input = tcp.input
    orig_ctl = tcp._ctl_segment
    orig_flush = tcp._flush
    t0 = time.monotonic()
    base: dict[int, int] = {}

    def rel(port, seq):
        return (seq - base.get(port, seq)) & 0xFFFFFFFF

    def traced_input(fam, frame, p, csum_ok):
        l4 = p.l4_off
        sport, dport, seq, ack, offfl, wnd = struct.unpack_from("!HHIIHH", frame, l4)
        flags = offfl & 0x3F
        if flags & 0x02:
            base[sport] = seq
        plen = p.l4_end - l4 - ((offfl >> 12) << 2)
        orig_input(fam, frame, p, csum_ok)
        flow = tcp.flows.get((p.src, sport, p.dst, dport))
        after = f"exp={rel(sport, flow.seq_from_tap)} pend={flow.pend_len} ooo={flow.ooo_len}" if flow else "no flow"
        history.setdefault(sport, []).append(f"{time.monotonic() - t0:7.3f} IN  seq={rel(sport, seq)} len={plen} "
                                             f"fl={flags:#x} -> {after}")

    def traced_ctl(fam, src, sport, dst, dport, seq, ack, flags, wnd, opts):
        history.setdefault(dport, []).append(f"{time.monotonic() - t0:7.3f} OUT ack={rel(dport, ack)} "
                                             f"fl={flags:#x} wnd={wnd}")
        return orig_ctl(fam, src, sport, dst, dport, seq, ack, flags, wnd, opts)

    def traced_flush(flow):
        if not flow.pend:
            return orig_flush(flow)
        total = flow.pend_len
        before = flow.seq_from_tap
        r = orig_flush(flow)
        history.setdefault(flow.gport, []).append(
            f"{time.monotonic() - t0:7.3f} FLUSH {total} -> took {(flow.seq_from_tap - before) & 0xFFFFFFFF}")
        return r

    orig_reset = tcp._reset

    def traced_reset(flow):
        history.setdefault(flow.gport, []).append(f"{time.monotonic() - t0:7.3f} RESET state={flow.state} "
                                                  f"retries={flow.retries}")
        return orig_reset(flow)

    tcp._reset = traced_reset
    tcp.input = traced_input
    tcp._ctl_segment = traced_ctl
    tcp._flush = traced_flush


def _tcp_mem() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            return int(line.split("mem")[1].split()[0])
    return -1


def _measure(port: int, n: int, qlen: int, seconds: float, limit: float, verbose: bool, snap: float) -> dict:
    trace = verbose
    if True:
        with GuestNet(vnet_hdr=True, mtu=65520, area="mslhl") as g:
            assert "KBN_LEASE" in g.dhcp()
            g.ns.ip("link", "set", "tap0", "txqueuelen", str(qlen))
            history: dict[int, list[str]] = {}
            if trace:
                _trace(g.session.engine, history)
            proc = subprocess.Popen([*g.ns.prefix(), "sh", "-c", f"ulimit -n 8192; exec {sys.executable} -c "
                                     f"'{UPLOAD}' 10.0.2.2 {port} {n} {seconds} {limit} 0 {snap}"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out = ""
            stuck_ports: list[int] = []
            for line in proc.stdout:
                out += line
                if line.startswith("SNAP"):
                    stuck_ports = [int(x) for x in line.split()[1:]]
                    if stuck_ports and verbose:
                        ss = subprocess.run([*g.ns.prefix(), "ss", "-tin"], capture_output=True, text=True).stdout
                        lines = ss.splitlines()
                        eng = g.session.engine
                        now = time.monotonic()
                        for p in stuck_ports[:15]:
                            for i, ln in enumerate(lines):
                                if f":{p} " in ln:
                                    print("  guest:", ln.split(None, 1)[1].strip(), "|",
                                          lines[i + 1].strip() if i + 1 < len(lines) else "")
                            for key, flow in list(eng.tcp.flows.items()):
                                if key[1] == p:
                                    print("  msl:", flow_dump(flow, now))
                            else:
                                pass
                        msl_ports = {k[1] for k in eng.tcp.flows}
                        print(f"  {len(stuck_ports)} flows not done {snap} s after the writers stopped;",
                              "without a minislirp flow:", sum(1 for p in stuck_ports if p not in msl_ports))
            proc.wait(30)
            synack_again = [p for p, h in history.items() if sum("fl=0x12" in ln for ln in h) > 1]
            print(f"  {len(synack_again)} flows got a SYN-ACK more than once")
            resets = [p for p, h in history.items() if any("RESET" in ln for ln in h)]
            print(f"  {len(resets)} flows reset by minislirp")
            for p in resets[:3]:
                print(f"  history of {p} (reset):")
                for ln in history.get(p, [])[:40]:
                    print("    ", ln)
            for p in synack_again[:1]:
                print(f"  history of {p} (SYN-ACK sent again):")
                for ln in history.get(p, [])[:40]:
                    print("    ", ln)
            left = {k[1] for k in g.session.engine.tcp.flows}
            for p in [p for p in stuck_ports if p in left][:3] or stuck_ports[:3]:
                print(f"  history of {p}:")
                for ln in history.get(p, [])[-60:]:
                    print("    ", ln)
            print("  guest tap0:", subprocess.run([*g.ns.prefix(), "ip", "-s", "link", "show", "tap0"],
                                                  capture_output=True, text=True).stdout.replace("\n", " | "))
            done = [ln for ln in out.splitlines() if ln.startswith(("DONE", "LATE"))]
            counters = g.session.counters()
            res = {"line": " ".join(done) if done else out + proc.stderr.read(), "late": len(stuck_ports),
                   "counters": {k: v for k, v in counters.items() if k.startswith("tcp.") and any(
                       s in k for s in ("retrans", "out_of", "short", "rst", "timeout", "sack", "unsent"))}}
            return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--qlen", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--limit", type=float, default=60)
    ap.add_argument("--snap", type=float, default=10, help="flows not done this long after the writers stopped are late")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="trace every segment (slows minislirp down) and print the late flows' state and history")
    ap.add_argument("--sink-process", action="store_true", help="the sink in its own process (default: a thread)")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    late, stuck = [], []
    for i in range(a.runs):
        r = one_run(a.flows, a.qlen, a.seconds, a.limit, a.verbose, a.sink_process, a.snap)
        late.append(r["late"])
        words = r["line"].split()
        stuck.append(int(words[words.index("STUCK") + 1]) if "STUCK" in words else -1)
        print(f"run {i + 1}: {r['line']}\n  {r['counters']}", flush=True)
    print(f"flows not done {a.snap:g} s after the writers stopped, per run: {late}")
    print(f"flows not done after {a.limit:g} s (stuck), per run: {stuck}")


if __name__ == "__main__":
    main()

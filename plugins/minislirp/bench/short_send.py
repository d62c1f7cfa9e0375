"""How often the host socket takes only part of a sendmsg(), and what that costs an upload.

Usage (root): ``python3 plugins/minislirp/bench/short_send.py [--mtu 1500] [--seconds 5] [--repeats 3]``

Two guest -> host uploads through minislirp (tap + virtio-net header, in this process so that its
counters can be read):

* ``iperf``: iperf3 from the guest to an iperf3 server on host loopback (a fast reader);
* ``slow-reader``: the guest writes flat out to a host sink that reads 64 KiB at a time with a pause
  after each read (a reader slower than the link: the host socket's buffer is full most of the time,
  which is when a short sendmsg() happens).

Per run: delivered Mbit/s, minislirp's ``tcp.host_short_send`` and ``tcp.unsent_kept`` and the guest's
retransmitted segments (``nstat`` TcpRetransSegs in the guest namespace). Run it once against the
installed code and once with ``PYTHONPATH`` pointing at another copy of ``kboxnet_minislirp`` to compare.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from guest import GuestNet  # noqa: E402

from kboxnet_core.testing.ports import free_tcp_port  # noqa: E402

WRITER = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
buf = b"x" * 65536
end = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < end:
    n += s.send(buf)
s.close()
print("WROTE", n)
"""


def guest_retrans(g: GuestNet) -> int:
    out = g.ns.run(["nstat", "-az", "TcpRetransSegs"], check=False).stdout
    for line in out.splitlines():
        if line.startswith("TcpRetransSegs"):
            return int(line.split()[1])
    return -1


def slow_sink(port: int, pause: float, got: list[int], ready: threading.Event, stop: threading.Event) -> None:
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(1)
        ready.set()
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(1)
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                got[0] += len(data)
                time.sleep(pause)


def run_once(kind: str, mtu: int, seconds: float, pause: float) -> dict:
    with GuestNet(vnet_hdr=True, mtu=mtu, area="mslss") as g:
        assert "KBN_LEASE" in g.dhcp()
        before = guest_retrans(g)
        port = free_tcp_port()
        if kind == "iperf":
            srv = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.3)
                r = g.ns.run(["iperf3", "-c", "10.0.2.2", "-p", str(port), "-t", str(seconds), "-J"],
                             timeout=seconds + 30, check=False)
                mbps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6
            finally:
                srv.kill()
                srv.wait(5)
        else:
            got = [0]
            ready, stop = threading.Event(), threading.Event()
            t = threading.Thread(target=slow_sink, args=(port, pause, got, ready, stop), daemon=True)
            t.start()
            assert ready.wait(5)
            t0 = time.monotonic()
            g.ns.run([sys.executable, "-c", WRITER, "10.0.2.2", str(port), str(seconds)], timeout=seconds + 60,
                     check=False)
            received = got[0]
            mbps = received * 8 / (time.monotonic() - t0) / 1e6
            stop.set()
            t.join(5)
        c = g.session.counters()
        return {"mbps": mbps, "short": c.get("tcp.host_short_send", 0), "kept": c.get("tcp.unsent_kept", 0),
                "retrans": guest_retrans(g) - before}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pause", type=float, default=0.002, help="slow reader: pause after each 64 KiB read (s)")
    ap.add_argument("--kind", action="append", choices=["iperf", "slow-reader"])
    a = ap.parse_args()
    import kboxnet_minislirp

    print(f"kboxnet_minislirp from {Path(kboxnet_minislirp.__file__).parent}, MTU {a.mtu}")
    for kind in a.kind or ["iperf", "slow-reader"]:
        runs = [run_once(kind, a.mtu, a.seconds, a.pause) for _ in range(a.repeats)]
        for r in runs:
            print(f"  {kind}: {r['mbps']:8.1f} Mbit/s  short sends {r['short']:6d}  kept {r['kept']:10d} B  "
                  f"guest retransmits {r['retrans']}")
        print(f"{kind}: median {statistics.median(r['mbps'] for r in runs):.1f} Mbit/s, "
              f"median short sends {statistics.median(r['short'] for r in runs)}, "
              f"median guest retransmits {statistics.median(r['retrans'] for r in runs)}", flush=True)


if __name__ == "__main__":
    main()

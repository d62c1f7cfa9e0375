"""Serve a namespace's tap (or a stream relay of it) with minislirp until SIGTERM/SIGINT.

Used by ``iperf_bench.py`` so that minislirp runs in its own process (its CPU
time is measured separately and it can be profiled with ``--profile FILE``,
a cProfile dump of the session thread).

    python3 serve.py --netns NAME [--mtu 1500] [--vnet] [--stream] [--dns 127.0.0.1:53]
                     [--allow ::1/128] [--forward [::1]:PORT=GUESTPORT]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from guest import GuestNet  # noqa: E402
from kboxnet_minislirp.settings import MinislirpSettings  # noqa: E402

from kboxnet_core.config.model import Forward  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--netns", required=True, help="existing namespace name (ip netns add)")
    ap.add_argument("--mtu", type=int, default=1500)
    ap.add_argument("--vnet", action="store_true", help="tap with virtio-net header and offloads")
    ap.add_argument("--stream", action="store_true", help="serve a qemu stream socketpair relayed to the tap")
    ap.add_argument("--no-offload", action="store_true", help="vnet header but compute checksums ourselves")
    ap.add_argument("--dns", default="127.0.0.1:53")
    ap.add_argument("--allow", action="append", default=[],
                    help="egress CIDR allowed besides 127.0.0.0/8 (only namespaces you own)")
    ap.add_argument("--forward", action="append", default=[], metavar="HOST=GUESTPORT",
                    help="publish a TCP port: host address:port (IPv6 as [::1]:P) = guest port")
    ap.add_argument("--profile", metavar="FILE", help="write a cProfile dump of the session thread")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = MinislirpSettings(offload=not args.no_offload)
    g = GuestNet(mtu=args.mtu, vnet_hdr=args.vnet, stream=args.stream, dns=(args.dns,), settings=settings,
                 netns=args.netns, relay_process=True, allow=tuple(args.allow),
                 forward=tuple(Forward(guest=int(g), host=h) for h, _, g in (f.rpartition("=") for f in args.forward)))
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        threading.setprofile(lambda *a: None)
        from kboxnet_minislirp.session import MinislirpSession

        orig = MinislirpSession.run

        def run(self, stop_fd):
            profiler.enable()
            try:
                return orig(self, stop_fd)
            finally:
                profiler.disable()

        MinislirpSession.run = run
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    g.start()
    print("READY", flush=True)
    done.wait()
    g.session.stop()
    g.session.wait(5)
    if profiler is not None:
        profiler.dump_stats(args.profile)
    g.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

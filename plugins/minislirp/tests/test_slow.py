"""Long real-stack tests (marked slow): 1 GiB download, 1,000 concurrent flows, RSS per idle flow."""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flow_server
import guest_tools
import pytest
from guest import GuestNet

from kboxnet_core.testing.netns import Netns, netns_supported
from kboxnet_core.testing.ports import free_tcp_port

pytestmark = [pytest.mark.netns, pytest.mark.slow]
HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _root():
    reason = netns_supported()
    if reason:
        pytest.skip(reason)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))


def _start(argv: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(10)


@pytest.mark.parametrize("kind", ["tap-vnet", "stream"])
def test_curl_1gib_sha256(kind):
    size = 1 << 30
    with tempfile.TemporaryDirectory(prefix="kbn-msl-big-") as d:
        path = Path(d) / "big.bin"
        digest = hashlib.sha256()
        block = os.urandom(1 << 20)
        with path.open("wb") as f:
            for i in range(size >> 20):
                chunk = i.to_bytes(8, "big") + block[8:]
                f.write(chunk)
                digest.update(chunk)
        port = free_tcp_port()
        http = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", d,
                                 str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            with GuestNet(vnet_hdr=kind == "tap-vnet", stream=kind == "stream") as g:
                assert "KBN_LEASE" in g.dhcp()
                r = g.ns.run(["sh", "-c", f"curl -sS --max-time 240 http://10.0.2.2:{port}/big.bin | sha256sum"],
                             timeout=300, check=False)
                assert r.stdout.split()[0] == digest.hexdigest(), r.stdout + r.stderr
                assert g.session.counters()["tcp.bytes_to_guest"] > size
        finally:
            _stop(http)


def test_1000_concurrent_flows_verified():
    n, size = 1000, 32 * 1024
    port = free_tcp_port()
    server = _start([sys.executable, str(HERE / "flow_server.py"), "serve", str(port), str(size)])
    try:
        with GuestNet(vnet_hdr=True) as g:
            assert "KBN_LEASE" in g.dhcp()
            r = g.ns.run(["sh", "-c", f"ulimit -n 8192; exec {sys.executable} -c '{guest_tools.MANY_FLOWS}' "
                          f"10.0.2.2 {port} {n} {size}"], timeout=300, check=False)
            assert f"DONE {n} OK {n} FAILED 0" in r.stdout, r.stdout + r.stderr
            c = g.session.counters()
            assert c["tcp.flows"] >= n
    finally:
        _stop(server)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_rss_per_idle_flow_is_small(capsys):
    """minislirp runs in its own process (bench/serve.py) so that only its memory is counted."""
    n = 1000
    port = free_tcp_port()
    server = _start([sys.executable, str(HERE / "flow_server.py"), "hold", str(port)])
    ns = Netns(area="mslr").create()
    serve = None
    procs = []
    try:
        serve = _start([sys.executable, str(HERE.parent / "bench" / "serve.py"), "--netns", ns.name, "--vnet"])
        ns.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
        ns.ip("route", "add", "default", "via", "10.0.2.2")

        def open_flows(count: int) -> subprocess.Popen:
            proc = subprocess.Popen(["sh", "-c", f"ulimit -n 8192; exec {' '.join(ns.prefix())} {sys.executable} "
                                     f"-c '{guest_tools.IDLE_FLOWS}' 10.0.2.2 {port} {count}"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout.readline().strip() == f"OPEN {count}"
            return proc

        open_flows(50)  # warm-up: lazily allocated buffers and dict growth are not per-flow costs
        time.sleep(0.5)
        before = _rss_kib(serve.pid)
        open_flows(n)
        time.sleep(1.0)
        after = _rss_kib(serve.pid)
        per_flow = (after - before) * 1024 / n
        with capsys.disabled():
            print(f"\nRSS per idle TCP flow: {per_flow:.0f} bytes ({n} flows, +{after - before} KiB, "
                  f"total {after} KiB)")
        assert per_flow <= 10 * 1024
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        if serve is not None:
            serve.terminate()
            serve.wait(10)
        ns.delete()
        _stop(server)


def test_1000_concurrent_uploads_mtu_65520_nothing_lost():
    """Guest -> host at MTU 65520 with offload, 1,000 flows writing flat out for 5 s and at least 1 MiB each
    (the bench's scale curve): every flow's bytes arrive, in order (sha256 and byte count per flow), and every
    flow gets its EOF within 60 s. (The gap-filling regression itself is pinned by the frame-level out-of-order tests: this load
    stalls flows only on a busier machine or with a shorter tap queue, see the README.)"""
    n = 1000
    port = free_tcp_port()
    # the sink runs in this process, as the bench's does: it competes with minislirp's thread for the CPU, so
    # minislirp falls behind and the guest's tap queue drops frames (as on a busy machine)
    with flow_server.served_in_thread("sink", port), GuestNet(vnet_hdr=True, mtu=65520) as g:
        assert "KBN_LEASE" in g.dhcp()
        r = g.ns.run(["sh", "-c", f"ulimit -n 8192; exec {sys.executable} -c '{guest_tools.UPLOAD_FLOWS}' "
                      f"10.0.2.2 {port} {n} 5 60 {1 << 20}"], timeout=120, check=False)
        assert f"DONE {n} OK {n} FAILED 0 LOST 0 STUCK 0 SENT " in r.stdout, \
            r.stdout + r.stderr + str(g.session.counters())
        sent = int(r.stdout.split("SENT")[1].split()[0])
        assert sent >= n * (1 << 20)  # at least 1 MiB per flow, or the load proves nothing (a busy machine
        # writes less in 5 s: the flows then go on until they have)
        assert g.session.counters()["tcp.bytes_to_host"] >= sent

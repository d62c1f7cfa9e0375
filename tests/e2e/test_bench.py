"""kboxnet bench: summaries on crafted samples, the ping-pong client, and one real tiny run."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from kboxnet_core.bench import cpu, report
from kboxnet_core.bench.measure import Sample, parse_iperf
from kboxnet_core.bench.pingpong import EchoServer, run_client
from kboxnet_core.testing import bound_socket


def _s(path, test, gbps=None, retr=0, p50=None, mtu=1500, error=""):
    return Sample(path=path, test=test, mtu=mtu, repeat=0, gbps=gbps, retransmits=retr, rr_p50_us=p50,
                  rr_p99_us=None if p50 is None else p50 * 2, conn_per_s=None if p50 is None else 1000.0,
                  error=error)


def test_summarize_medians_ratios_and_failures():
    samples = [_s("slirp4netns", "up", g) for g in (1.0, 2.0, 9.0)]
    samples += [_s("minislirp", "up", g, retr=r) for g, r in ((0.5, 4), (1.0, 6), (3.0, 100))]
    samples += [_s("minislirp", "up", error="timed out")]
    samples += [_s("slirp4netns", "rr", p50=100.0), _s("minislirp", "rr", p50=200.0)]
    rows = {(r.path, r.test): r for r in report.summarize(samples)}
    assert rows[("slirp4netns", "up")].median == 2.0 and rows[("slirp4netns", "up")].ratio == 1.0
    mini = rows[("minislirp", "up")]
    assert (mini.median, mini.minimum, mini.maximum, mini.retransmits) == (1.0, 0.5, 3.0, 6)
    assert (mini.runs, mini.failed, mini.ratio) == (4, 1, 0.5)
    assert rows[("minislirp", "rr")].ratio == 0.5  # twice the latency of slirp4netns
    text = report.table(list(rows.values()), {"passt": "not installed"})
    assert "minislirp" in text and "skipped passt: not installed" in text


def test_parse_iperf():
    doc = {"end": {"sum_sent": {"bits_per_second": 2.2e9, "retransmits": 7},
                   "sum_received": {"bits_per_second": 2.0e9}}}
    assert parse_iperf(json.dumps(doc)) == (2.0, 7)
    with pytest.raises(ValueError):
        parse_iperf(json.dumps({"error": "unable to connect"}))


def test_pingpong_client_against_echo_server():
    server = EchoServer(bound_socket(None, "127.0.0.1", 0)).start()
    try:
        res = run_client("127.0.0.1", server.port, count=200, conns=50, size=64, time_limit=10)
    finally:
        server.stop()
    assert res["rr_count"] == 200 and res["conn_count"] == 50
    assert 0 < res["rr_p50_us"] <= res["rr_p99_us"]
    assert res["conn_per_s"] > 0


def test_cpu_usage_counts_our_children():
    a = cpu.sample()
    subprocess.run([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<0.3: pass"],
                   check=True)
    u = cpu.usage(a, cpu.sample())
    assert u.ours_pct > 30  # the busy child ran ~0.3 s of CPU in a bit more wall time


@pytest.mark.netns
def test_bench_veth_tiny_run():
    proc = subprocess.run([sys.executable, "-c", "import sys; from kboxnet_core.bench import main; "
                           "sys.exit(main(sys.argv[1:]))", "--no-backends", "--reference", "veth",
                           "--mtu", "1500", "--repeats", "1", "-t", "1", "--json", "--idle-timeout", "2",
                           "--flows", "20"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    rows = {(r["path"], r["test"]): r for r in doc["rows"]}
    assert rows[("veth", "up")]["median"] > 0.1 and rows[("veth", "down")]["median"] > 0.1
    assert rows[("veth", "rr")]["conn_per_s"] > 0 and rows[("veth", "rr")]["failed"] == 0
    flows = rows[("veth", "flows")]
    assert flows["flows"] == 20 and flows["failed"] == 0 and flows["lost_bytes"] == 0 and flows["median"] > 0.1


def test_cpu_usage_counts_orphans_as_foreign():
    a = cpu.sample()
    # the busy loop is orphaned at once (its shell exits), so it is not in our process tree
    subprocess.run(["sh", "-c", f"{sys.executable} -c 'import time\nt=time.time()\nwhile time.time()-t<0.6: pass' &"],
                   check=True)
    time.sleep(0.8)
    u = cpu.usage(a, cpu.sample())
    assert u.foreign_pct > 40

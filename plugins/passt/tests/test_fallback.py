"""passt killed with SIGKILL mid-transfer: the supervisor falls back to minislirp on the same tap."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import attrs
import pytest
from test_netns import curl, topo, udhcpc  # noqa: F401 - fixtures

from kboxnet_core import hookimpl
from kboxnet_core.netns import entered_netns
from kboxnet_core.ranking import Ranked
from kboxnet_core.registry import Registry
from kboxnet_core.supervisor import Supervisor
from kboxnet_core.testing.servers import HttpFileServer
from kboxnet_core.testing.udhcpc import write_udhcpc_script

pytestmark = pytest.mark.netns


def test_sigkill_mid_transfer_falls_back_to_minislirp(topo, tmp_path):  # noqa: F811
    registry = Registry.discover()
    minislirp, passt = registry.get("minislirp"), registry.get("passt")
    if minislirp is None or minislirp.backend is None:
        pytest.skip("kboxnet-minislirp is not installed")
    cfg = topo.config()
    cfg = attrs.evolve(cfg, net=attrs.evolve(cfg.net, backends=("passt", "minislirp")))
    av_passt = passt.backend.probe(cfg)
    av_mini = minislirp.backend.probe(cfg)
    assert av_passt.available, av_passt
    if not av_mini.available:
        pytest.skip(f"minislirp unavailable: {av_mini.reason}")
    http = HttpFileServer(netns=topo.hostns.host).start()
    http.add_file("big.bin", data=bytes(200 << 20))
    small = http.add_file("small.bin", size=64 << 10, seed=10)
    calls: list[tuple[str, str, str]] = []

    class Observer:
        @hookimpl
        def kboxnet_fallback(self, failed, candidate, reason):
            calls.append((failed.name, candidate.name, reason))

    registry.pm.register(Observer(), name="passt-test-observer")
    runtime = tmp_path / "run"
    runtime.mkdir()
    sup = Supervisor(registry, cfg, [Ranked(passt, av_passt), Ranked(minislirp, av_mini)], runtime_dir=runtime)
    link = topo.open_tap()
    outcome: list[object] = []

    def serve() -> None:
        # the supervisor thread (and minislirp's host sockets) live in the host namespace
        with entered_netns(topo.hostns.host.path):
            outcome.append(sup.serve_link(link))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not sup.current_session() or not sup.current_session().pids():
            assert time.monotonic() < deadline, "passt did not start"
            time.sleep(0.05)
        passt_pid = sup.current_session().pids()[0]
        script = write_udhcpc_script(tmp_path / "udhcpc.sh")
        udhcpc(topo, script)
        # a slow (rate-limited) transfer through passt, killed in the middle
        big = subprocess.Popen([*topo.guest.prefix(), "curl", "-sS", "--limit-rate", "20M", "--max-time", "20",
                                "-o", str(tmp_path / "big.bin"), http.url("big.bin", host="10.0.2.2")],
                               stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert (tmp_path / "big.bin").stat().st_size > 0
        os.kill(passt_pid, signal.SIGKILL)
        t_kill = time.monotonic()
        # new DHCP and a new TCP connection through minislirp, within 1 s of the kill
        lease = udhcpc(topo, script)
        assert "KBN_LEASE ip=10.0.2.15" in lease
        out = tmp_path / "small.bin"
        r = curl(topo, http.url("small.bin", host="10.0.2.2"), out, timeout=5)
        elapsed = time.monotonic() - t_kill
        assert r.returncode == 0, r.stderr
        import hashlib

        assert hashlib.sha256(out.read_bytes()).hexdigest() == small
        assert elapsed < 1.0, f"service back after {elapsed:.2f} s"
        assert sup.history and sup.history[0][0] == "passt" and not sup.history[0][1].ok
        assert "SIGKILL" in sup.history[0][1].reason
        assert sup.current_session() is not None and sup.current_session().backend_name == "minislirp"
        assert calls and calls[0][:2] == ("passt", "minislirp") and "SIGKILL" in calls[0][2]
        assert not os.path.exists(f"/proc/{passt_pid}")
        assert not any(p.name.startswith("passt") for p in runtime.iterdir())
        big.kill()
        big.wait()
    finally:
        sup.request_stop()
        thread.join(15)
        http.stop()
    assert outcome and outcome[0].backend == "minislirp"

"""End to end: ``kboxnet run --net host-bypass`` with minislirp serving the namespace's own stack."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import sys
import threading

import pytest
from bypass_testlib import netns_skip_reason

pytestmark = pytest.mark.netns


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        body = f"host saw {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_run_bypass_with_dns_and_stack_through_minislirp(tmp_path):
    reason = netns_skip_reason() or (None if shutil.which("curl") else "needs curl")
    if reason:
        pytest.skip(reason)
    try:
        from kboxnet_core.testing.dnsmasq import Dnsmasq
    except ImportError:
        pytest.skip("kboxnet_core.testing.dnsmasq not available")
    if Dnsmasq.available():
        pytest.skip(Dnsmasq.available())
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    dns = Dnsmasq({"example.test": "10.0.2.2"}).start()  # picks a port free for TCP and UDP, retries when taken
    try:
        cfg = tmp_path / "kboxnet.toml"
        cfg.write_text(
            f'[net]\ndns = ["127.0.0.1:{dns.port}"]\n\n'
            f'[net.bypass]\nallow = ["127.0.0.1:{port}"]\ndeny = ["auto"]\nframe_backend = "minislirp"\n'
        )
        script = (
            f"curl -sS --max-time 10 http://127.0.0.1:{port}/ && "
            f"curl -sS --max-time 10 http://example.test:{port}/"
        )
        out = subprocess.run(
            [sys.executable, "-m", "kboxnet_core", "run", "-v", "--config", str(cfg), "--net", "host-bypass",
             "--", "sh", "-c", script],
            capture_output=True, text=True, timeout=120,
        )
        dns_log = dns.log()
    finally:
        dns.stop()
        httpd.shutdown()
        httpd.server_close()
    assert out.returncode == 0, out.stderr
    # both reach the host server: directly (bypass) and through minislirp's gateway mapping
    assert out.stdout.splitlines() == ["host saw 127.0.0.1", "host saw 127.0.0.1"], out.stdout
    assert f"dst=127.0.0.1:{port} decision=bypass" in out.stderr
    assert f"dst=10.0.2.2:{port} decision=namespace (policy" in out.stderr  # stayed on the stack
    assert "query[A] example.test" in dns_log  # the lookup went through the stack to our resolver

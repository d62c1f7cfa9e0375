"""``-p/--publish``: parsing, pre-flight errors, and a real published port through ``kboxnet run``."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from kboxnet_core.config import ConfigError
from kboxnet_core.forwarding import parse_publish

from .helpers import kboxnet


@pytest.mark.parametrize("text,host,guest,proto", [
    ("80", "127.0.0.1:80", 80, "tcp"),
    ("8080:80", "127.0.0.1:8080", 80, "tcp"),
    ("0.0.0.0:8080:80/udp", "0.0.0.0:8080", 80, "udp"),
    ("[::1]:8443:443", "[::1]:8443", 443, "tcp"),
])
def test_parse_publish(text, host, guest, proto):
    fwd = parse_publish(text)
    assert (fwd.host, fwd.guest, fwd.proto) == (host, guest, proto)


@pytest.mark.parametrize("text", ["", "a:b", "1:2:3:4", "8080:80/sctp", "8080:0", "[::1]8080:80", "300.1.1.1:80:80"])
def test_bad_publish_values(text):
    with pytest.raises(ConfigError):
        parse_publish(text)


def test_port_in_use_is_a_clear_config_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = kboxnet("run", "-p", f"{port}:80", "--", "true")
    assert out.returncode == 2
    assert f"host port {port} on 127.0.0.1 is already in use" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.netns
def test_published_port_reaches_a_server_in_the_guest(tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "blob").write_bytes(data)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kboxnet_core", "run", "--net", "minislirp", "-p", f"{port}:8000",
                             "--", sys.executable, "-m", "http.server", "-b", "10.0.2.15", "8000"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    body, last_error = b"", None
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/blob", timeout=10).read()
                break
            except OSError as exc:  # the guest's server may not be listening yet
                last_error = exc
                time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert body, f"no answer through the published port (last error {last_error!r}); kboxnet said:\n{err}"
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.netns
def test_closed_guest_port_resets_the_host_client():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kboxnet_core", "run", "--net", "minislirp", "-p", f"{port}:81",
                             "--", "sleep", "30"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        outcome = None
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.settimeout(5)
                    try:
                        got = s.recv(1)
                        outcome = ("eof", got, time.monotonic() - t0)
                    except ConnectionResetError:
                        outcome = ("reset", b"", time.monotonic() - t0)
                    break
            except ConnectionRefusedError:
                time.sleep(0.2)  # kboxnet not listening yet
            except ConnectionResetError:
                # The reset can arrive before a timed connect() collects its result: same outcome.
                outcome = ("reset", b"", time.monotonic() - t0)
                break
        assert outcome is not None, "never connected to the published port"
        assert outcome[0] in ("reset", "eof") and outcome[1] == b"", outcome
        assert outcome[2] < 3, f"host client waited {outcome[2]:.1f} s: it must not hang"
    finally:
        proc.terminate()
        proc.communicate(timeout=20)

"""Guest disconnect and reconnect on ``kboxnet serve --socket`` (a VMM restarting its NIC).

The guest is the Linux stack in a namespace; its tap is relayed to the stream socket by a small
adapter here (the frames are the real kernel's). After the first connection goes away, a new one
must get a fresh DHCP lease and working TCP from the same kboxnet process.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
import subprocess
import sys
import threading

import pytest

from kboxnet_core.links.tap import TapLink
from kboxnet_core.testing.netns import Netns
from kboxnet_core.testing.servers import HttpFileServer
from kboxnet_core.testing.udhcpc import write_udhcpc_script

pytestmark = pytest.mark.netns
_LEN = struct.Struct(">I")


class Relay:
    """tap <-> qemu stream socket, until stopped (then the socket is closed: the guest 'unplugs')."""

    def __init__(self, tap: TapLink, path: str) -> None:
        self.tap = tap
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self._stop_r, self._stop_w = os.pipe()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        buf = b""
        while True:
            ready, _, _ = select.select([self.tap.fileno(), self.sock, self._stop_r], [], [], 1.0)
            if self._stop_r in ready:
                return
            if self.tap.fileno() in ready:
                for frame in self.tap.recv_frames():
                    self.sock.sendall(_LEN.pack(len(frame)) + bytes(frame))
            if self.sock in ready:
                data = self.sock.recv(1 << 20)
                if not data:
                    return
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + _LEN.unpack_from(buf)[0]:
                    n = _LEN.unpack_from(buf)[0]
                    self.tap.send_frame(buf[4 : 4 + n])
                    buf = buf[4 + n :]

    def unplug(self) -> None:
        os.write(self._stop_w, b"x")
        self.thread.join(5)
        self.sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


def test_guest_reconnects_and_is_served_again(tmp_path):
    cfg = tmp_path / "kboxnet.toml"
    cfg.write_text('[net]\nbackend = "minislirp"\n[net.egress]\nallow = ["127.0.0.0/8"]\n')
    path = str(tmp_path / "vm.sock")
    script = write_udhcpc_script(tmp_path / "udhcpc.script")
    http = HttpFileServer()
    sha = http.add_file("blob", 1 << 20)
    http.start()
    r, w = os.pipe()
    serve = subprocess.Popen([sys.executable, "-m", "kboxnet_core", "serve", "--socket", path, "--config", str(cfg),
                              "--ready-fd", str(w)], pass_fds=(w,), stderr=subprocess.PIPE, text=True)
    os.close(w)
    try:
        assert os.read(r, 100).startswith(b"READY=1")
        with Netns(area="lead-reconnect") as ns:
            tap = TapLink.open_in_netns(ns.path, "tap0")
            try:
                for attempt in range(2):
                    relay = Relay(tap, path)
                    try:
                        ns.ip("addr", "flush", "dev", "tap0")
                        lease = subprocess.run([*ns.prefix(), "busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f",
                                                "-t", "5", "-T", "1", "-s", str(script)], capture_output=True, text=True,
                                               timeout=30, env={**os.environ, "RESOLV_CONF": str(tmp_path / "r")})
                        assert "ip=10.0.2.15" in lease.stdout, (attempt, lease.stdout, lease.stderr)
                        got = subprocess.run([*ns.prefix(), "curl", "-sS", "--max-time", "20", "-o", "-",
                                              f"http://10.0.2.2:{http.port}/blob"], capture_output=True, timeout=30)
                        assert hashlib.sha256(got.stdout).hexdigest() == sha, f"attempt {attempt}"
                    finally:
                        relay.unplug()
            finally:
                tap.close()
        assert serve.poll() is None, "kboxnet serve exited when the guest left"
    finally:
        os.close(r)
        serve.terminate()
        _, err = serve.communicate(timeout=20)
        http.stop()
    assert serve.returncode == 0, err
    assert err.count("guest connected") == 2 and err.count("guest disconnected") == 2, err
    assert not os.path.exists(path)

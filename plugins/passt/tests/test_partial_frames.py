"""Defects of old passt (bookworm's 2023_03_09) behind the upload stalls, and what the relay does.

* passt loses frames that reach its socket in pieces. The first test pins it
  (so a change in a future bookworm update is noticed): passt runs bare on a
  socketpair, and each piece is written only after passt has read everything
  before it (``SIOCOUTQ`` of our end is 0), so what passt sees does not depend
  on timing. The second test runs a ``kboxnet run``-like session at MTU 65520:
  the guest interface gets the capped MTU for the session (and back afterwards)
  and concurrent uploads arrive intact (sha256 per flow).
* After the guest half-closes a connection, passt does not pass on the host's
  FIN if the host sent data first (pasta mode too, so not the relay): pinned
  by the last test, documented in docs/passt.md (not repairable in a relay).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kboxnet_passt.detect import inspect_binary
from kboxnet_passt.plugin import PasstBackend
from kboxnet_passt.process import PasstProcess
from kboxnet_passt.quirks import RELAY_MTU_LIMIT, quirks_for
from topo import PasstTopology

from kboxnet_core.backend import NetnsTarget, SessionContext
from kboxnet_core.testing.netns import HostNetns

pytestmark = pytest.mark.netns

SIOCOUTQ = 0x5411
GUEST_MAC = bytes.fromhex("020000000015")
PEER = str(Path(__file__).resolve().parent.parent / "bench" / "flowcheck_peer.py")


@pytest.fixture
def legacy_passt() -> str:
    path = shutil.which("passt")
    if path is None:
        pytest.skip("passt is not installed")
    if not quirks_for(inspect_binary(path)).partial_frames_dropped:
        pytest.skip("this passt keeps partial frames (not an old build)")
    return path


def arp_request(target: str) -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, socket.inet_aton("10.0.2.15"),
                       bytes(6), socket.inet_aton(target))
    frame = b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + body
    return struct.pack(">I", 60) + frame + bytes(60 - len(frame))


def write_after_passt_read(sock: socket.socket, pieces: list[bytes], timeout: float = 10.0) -> None:
    """Write each piece once passt has read everything written before it."""
    for piece in pieces:
        deadline = time.monotonic() + timeout
        while struct.unpack("i", fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0" * 4))[0]:
            assert time.monotonic() < deadline, "passt stopped reading its socket"
            time.sleep(0.01)
        time.sleep(0.05)  # passt is now waiting in epoll or in its blocking recv()
        sock.sendall(piece)


def arp_replies(sock: socket.socket, want: int, timeout: float = 3.0) -> list[str]:
    """Addresses passt answered ARP requests for, within ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while len(found) < want and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        while len(data) >= 4 and len(data) >= 4 + struct.unpack_from(">I", data)[0]:
            n = struct.unpack_from(">I", data)[0]
            frame, data = data[4 : 4 + n], data[4 + n :]
            if len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[21] == 2:
                found.append(socket.inet_ntoa(frame[28:32]))
    return found


@pytest.mark.parametrize("cut", ["frame in three writes", "length word cut"])
def test_old_passt_loses_frames_that_arrive_in_pieces(legacy_passt, cut):
    a, b, c = arp_request("10.0.2.2"), arp_request("10.0.2.3"), arp_request("10.0.2.4")
    with HostNetns("pfrag") as hostns:
        whole_ok = None
        for pieces in ([a, b, c],
                       [a[:14], a[14:34], a[34:], b, c] if cut == "frame in three writes" else [a + b[:2], b[2:], c]):
            ours, theirs = socket.socketpair()
            argv = [*hostns.host.prefix(), legacy_passt, "-f", "-e", "-q", "--fd", str(theirs.fileno()),
                    "-a", "10.0.2.15", "-n", "24", "-g", "10.0.2.2", "-4", "-t", "none", "-u", "none"]
            proc = PasstProcess(argv, pass_fds=(theirs.fileno(),), name="passt-bare")
            theirs.close()
            try:
                assert proc.wait_ready(10), proc.exit_description()
                write_after_passt_read(ours, pieces)
                answered = arp_replies(ours, 3)
            finally:
                proc.terminate()
                ours.close()
            if whole_ok is None:
                whole_ok = answered
                assert answered == ["10.0.2.2", "10.0.2.3", "10.0.2.4"], answered
            elif cut == "frame in three writes":
                # the cut frame is dropped, and the stream is out of step for the next one too
                assert "10.0.2.2" not in answered and "10.0.2.3" not in answered, answered
            else:
                # the first frame is fine; the two bytes of the next length word are lost
                assert answered[:1] == ["10.0.2.2"] and "10.0.2.3" not in answered, answered


def test_tap_relay_caps_the_mtu_and_uploads_arrive_intact(legacy_passt, tmp_path):
    with PasstTopology("pmtu") as topo:
        cfg = topo.config(mtu=65520)
        link = topo.open_tap(65520)
        topo.guest.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
        topo.guest.ip("route", "add", "default", "via", "10.0.2.2", "dev", "tap0")
        ctx = SessionContext(cfg, tmp_path, NetnsTarget(topo.guest.path, "tap0", os.getpid()))
        session = PasstBackend().open(link, ctx)
        flows, size, port = 8, 8 << 20, 5302
        sink = subprocess.Popen([*topo.hostns.host.prefix(), sys.executable, PEER, "sink", "127.0.0.1", str(port),
                                 "--flows", str(flows), "--time", "120"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        session.start()
        try:
            assert sink.stdout is not None and sink.stdout.readline().strip() == "listening"
            assert session.ready(10), session.wait(0)
            mtu = json.loads(topo.guest_run(["ip", "-j", "link", "show", "tap0"]).stdout)[0]["mtu"]
            assert mtu == RELAY_MTU_LIMIT
            assert ("--mtu", str(RELAY_MTU_LIMIT)) in list(zip(session.argv, session.argv[1:]))
            r = topo.guest_run([sys.executable, PEER, "client", "10.0.2.2", str(port), "--flows", str(flows),
                                "--bytes", str(size), "--time", "90"], timeout=120)
            result = json.loads(r.stdout.strip().splitlines()[-1])
            assert result["verified"] == flows, (result, session.counters())
            assert session.counters()["relay_frames_oversize"] == 0
        finally:
            session.stop()
            session.wait(10)
            sink.kill()
            sink.wait()
        mtu = json.loads(topo.guest_run(["ip", "-j", "link", "show", "tap0"]).stdout)[0]["mtu"]
        assert mtu == 65520  # restored for the next backend


HALF_CLOSE_SERVER = """
import socket, sys
s = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
for reply in sys.argv[2:]:
    c, _ = s.accept()
    while c.recv(65536):
        pass
    if reply != "-":
        c.sendall(reply.encode())
    c.close()
"""

HALF_CLOSE_CLIENT = """
import json, socket, sys
out = []
for _ in range(int(sys.argv[2])):
    c = socket.create_connection(("10.0.2.2", int(sys.argv[1])), timeout=3)
    c.sendall(b"request")
    c.shutdown(socket.SHUT_WR)
    got, eof = b"", False
    try:
        while True:
            d = c.recv(65536)
            if not d:
                eof = True
                break
            got += d
    except TimeoutError:
        pass
    out.append([got.decode(), eof])
    c.close()
print(json.dumps(out))
"""


def test_old_passt_drops_the_hosts_fin_after_the_guests(legacy_passt, tmp_path):
    port = 5303
    with PasstTopology("phalf") as topo:
        link = topo.open_tap()
        topo.guest.ip("addr", "add", "10.0.2.15/24", "dev", "tap0")
        topo.guest.ip("route", "add", "default", "via", "10.0.2.2", "dev", "tap0")
        session = PasstBackend().open(link, SessionContext(topo.config(), tmp_path))
        server = subprocess.Popen([*topo.hostns.host.prefix(), sys.executable, "-c", HALF_CLOSE_SERVER, str(port),
                                   "-", "hello"], stdout=subprocess.PIPE, text=True)
        session.start()
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "listening"
            assert session.ready(10), session.wait(0)
            r = topo.guest_run([sys.executable, "-c", HALF_CLOSE_CLIENT, str(port), "2"], timeout=30)
            results = json.loads(r.stdout)
        finally:
            session.stop()
            session.wait(10)
            server.kill()
            server.wait()
    assert results[0] == ["", True]  # the host closes without data: the FIN arrives
    assert results[1] == ["hello", False]  # data, then close: the data arrives, the FIN never does

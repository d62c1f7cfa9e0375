"""qemu stream framing: bad lengths and mid-frame closes drop that guest only.

The server is the real ``kboxnet serve --socket`` process with the
``arp-responder`` test backend; a client that then sends a valid ARP request
must still get its reply on a new connection.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

GATEWAY = bytes([10, 0, 2, 2])
GUEST_MAC = bytes.fromhex("02aabbccddee")


def arp_request() -> bytes:
    return (b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + GUEST_MAC + bytes([10, 0, 2, 15]) + b"\x00" * 6 + GATEWAY)


def framed(frame: bytes) -> bytes:
    return struct.pack(">I", len(frame)) + frame


def recv_frame(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    buf = b""
    while len(buf) < 4:
        chunk = sock.recv(4 - len(buf))
        if not chunk:
            raise EOFError("closed")
        buf += chunk
    (n,) = struct.unpack(">I", buf)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("closed mid-frame")
        data += chunk
    return data


def wait_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.fixture
def server(tmp_path):
    path = str(tmp_path / "guest.sock")
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "kboxnet_core", "serve", "--socket", path,
                             "--backend", "arp-responder", "--ready-fd", str(w)],
                            pass_fds=(w,), stderr=subprocess.PIPE, text=True)
    os.close(w)
    assert os.read(r, 100).startswith(b"READY=1")
    os.close(r)
    yield path, proc
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # kboxnet dumps every thread's stack (faulthandler) before we kill it
        time.sleep(1)
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"kboxnet serve did not stop within 20 s of SIGTERM; its stacks and log:\n{err}")
    assert proc.returncode == 0, err
    assert not os.path.exists(path), "socket file left behind"


def connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def assert_served(path: str) -> None:
    with connect(path) as s:
        s.sendall(framed(arp_request()))
        reply = recv_frame(s)
        assert reply[12:14] == b"\x08\x06" and reply[20:22] == b"\x00\x02"
        assert reply[28:32] == GATEWAY and reply[0:6] == GUEST_MAC


@pytest.mark.parametrize("length", [0, 13, 65536, 0xFFFFFFFF])
def test_bad_length_disconnects_cleanly_and_server_keeps_serving(server, length):
    path, proc = server
    assert_served(path)
    with connect(path) as s:
        s.sendall(struct.pack(">I", length) + b"\x00" * 64)
        assert wait_closed(s), "server kept a connection with a bad frame length"
    assert proc.poll() is None
    assert_served(path)


def test_close_mid_frame(server):
    path, proc = server
    with connect(path) as s:
        s.sendall(framed(arp_request())[:20])  # header says 42, only 16 bytes follow
        time.sleep(0.2)
    with connect(path) as s:
        s.sendall(struct.pack(">I", 42)[:2])  # close inside the length word
    time.sleep(0.2)
    assert proc.poll() is None
    assert_served(path)


def test_frames_split_across_writes_and_batched(server):
    path, _ = server
    req = framed(arp_request())
    with connect(path) as s:
        for i in range(len(req)):  # one byte per write
            s.send(req[i : i + 1])
        assert recv_frame(s)[20:22] == b"\x00\x02"
        s.sendall(req * 200)  # many frames in one write
        for _ in range(200):
            assert recv_frame(s)[20:22] == b"\x00\x02"


def test_second_guest_waits_for_the_first(server):
    """Guests are served one at a time (as passt does); the next is served after."""
    path, _ = server
    first = connect(path)
    first.sendall(framed(arp_request()))
    assert recv_frame(first)
    second = connect(path)
    second.sendall(framed(arp_request()))
    second.settimeout(0.5)
    with pytest.raises(socket.timeout):
        second.recv(1)
    first.close()
    assert recv_frame(second)[20:22] == b"\x00\x02"
    second.close()


def test_fd_mode_adopts_an_inherited_socket(tmp_path):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen([sys.executable, "-m", "kboxnet_core", "serve", "--fd", str(theirs.fileno()),
                             "--backend", "arp-responder"], pass_fds=(theirs.fileno(),),
                            stderr=subprocess.PIPE, text=True)
    theirs.close()
    ours.sendall(framed(arp_request()))
    assert recv_frame(ours)[20:22] == b"\x00\x02"
    ours.close()  # guest leaves: serve --fd exits 0
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err

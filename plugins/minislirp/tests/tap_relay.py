"""Test adapter: relay a tap fd to a qemu-protocol stream socket (4-byte length + frame).

It plays the part QEMU plays for a VM: a stream link's other end. Run it in a
thread (:class:`TapStreamRelay`) or, for benchmarks, in its own process
(:func:`spawn_relay_process`) so that it does not share the GIL with minislirp.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import threading

_LEN = struct.Struct(">I")


class TapStreamRelay:
    """Relays a tap fd to one end of a socketpair in the qemu stream framing (test adapter)."""

    def __init__(self, tap_fd: int, sock: socket.socket) -> None:
        self.tap_fd = tap_fd
        self.sock = sock
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name="tap-stream-relay", daemon=True)

    def start(self) -> TapStreamRelay:
        self._thread.start()
        return self

    def _loop(self) -> None:
        ep = select.epoll()
        ep.register(self.tap_fd, select.EPOLLIN)
        ep.register(self.sock.fileno(), select.EPOLLIN)
        ep.register(self._stop_r, select.EPOLLIN)
        self.sock.setblocking(True)
        inbuf = bytearray()
        try:
            while True:
                for fd, _ev in ep.poll(1.0):
                    if fd == self._stop_r:
                        return
                    if fd == self.tap_fd:
                        out = []
                        for _ in range(64):
                            try:
                                frame = os.read(self.tap_fd, 65536)
                            except BlockingIOError:
                                break
                            out.append(_LEN.pack(len(frame)) + frame)
                        if out:
                            self.sock.sendall(b"".join(out))
                    else:
                        data = self.sock.recv(1 << 20)
                        if not data:
                            return
                        inbuf += data
                        while len(inbuf) >= 4:
                            (n,) = _LEN.unpack_from(inbuf)
                            if len(inbuf) < 4 + n:
                                break
                            try:
                                os.write(self.tap_fd, inbuf[4:4 + n])
                            except OSError:
                                pass
                            del inbuf[:4 + n]
        except OSError:
            return
        finally:
            ep.close()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        os.close(self._stop_r)
        os.close(self._stop_w)



def spawn_relay_process(tap_fd: int, sock: socket.socket) -> subprocess.Popen:
    """Run the relay in a child process that inherits ``tap_fd`` and ``sock``."""
    return subprocess.Popen([sys.executable, __file__, str(tap_fd), str(sock.fileno())],
                            pass_fds=(tap_fd, sock.fileno()))


if __name__ == "__main__":
    relay = TapStreamRelay(int(sys.argv[1]), socket.socket(fileno=int(sys.argv[2])))
    relay._loop()

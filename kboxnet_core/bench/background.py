"""A listening socket served by one background thread that a pipe wakes to stop."""

from __future__ import annotations

import os
import socket
import threading
from typing import TypeVar

_S = TypeVar("_S", bound="BackgroundServer")


class BackgroundServer:
    """Base of the benchmark servers: owns the listening socket, the serving thread and its stop pipe.

    Subclasses implement :meth:`_serve`, which must return once :attr:`_stop_fd` becomes readable.
    """

    thread_name = "kboxnet-server"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.port = int(sock.getsockname()[1])
        self._stop_fd, self._wake_fd = os.pipe()
        self._thread = threading.Thread(target=self._serve, name=self.thread_name, daemon=True)

    def _serve(self) -> None:
        raise NotImplementedError

    def start(self: _S) -> _S:
        self._thread.start()
        return self

    def stop(self) -> None:
        os.write(self._wake_fd, b"x")
        self._thread.join(5)
        os.close(self._stop_fd)
        os.close(self._wake_fd)
        self.sock.close()

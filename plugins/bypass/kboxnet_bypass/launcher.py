"""Start a command inside a namespace under the host-bypass seccomp filter.

The child joins the target's namespaces (user if different, net, mount if
different), creates two pristine probe sockets (IPv4, IPv6) for the
supervisor's option comparison, sets NO_NEW_PRIVS, installs the filter with
SECCOMP_FILTER_FLAG_NEW_LISTENER, passes the listener and the probes to the
parent with SCM_RIGHTS, closes its own copies, waits for the parent's go,
and execs. Nothing trapped by the filter runs between seccomp() and the
hand-over (recvmsg/sendmsg without MSG_FASTOPEN are not trapped).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Mapping

import attrs

from kboxnet_core.backend import NetnsTarget

from . import abi


class LaunchError(RuntimeError):
    pass


@attrs.frozen
class Launched:
    """The started command: its pid, our listener, the namespace probe sockets."""

    pid: int
    listener: int
    probe4: int
    probe6: int | None


def _ns_fds(netns: NetnsTarget) -> dict[str, int]:
    fds = {"net": os.open(netns.path, os.O_RDONLY | os.O_CLOEXEC)}
    if netns.pid > 0:
        for kind in ("user", "mnt"):
            path = f"/proc/{netns.pid}/ns/{kind}"
            try:
                if os.stat(path).st_ino == os.stat(f"/proc/self/ns/{kind}").st_ino:
                    continue
                fds[kind] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
    return fds


def _child(
    argv: list[str], env: Mapping[str, str], fds: dict[str, int], sock: socket.socket, prog: bytes, cwd: str
) -> None:
    if "user" in fds:
        abi.setns(fds["user"], abi.CLONE_NEWUSER)
    abi.setns(fds["net"], abi.CLONE_NEWNET)
    if "mnt" in fds:
        abi.setns(fds["mnt"], abi.CLONE_NEWNS)
    for fd in fds.values():
        os.close(fd)
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")
    probes = [socket.socket(socket.AF_INET, socket.SOCK_STREAM).detach()]
    try:
        probes.append(socket.socket(socket.AF_INET6, socket.SOCK_STREAM).detach())
    except OSError:
        pass
    abi.no_new_privs()
    flags = abi.SECCOMP_FILTER_FLAG_NEW_LISTENER | abi.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    try:
        listener = abi.seccomp_install(prog, flags)
    except OSError:  # kernels before 5.19 lack WAIT_KILLABLE_RECV
        listener = abi.seccomp_install(prog, abi.SECCOMP_FILTER_FLAG_NEW_LISTENER)
    socket.send_fds(sock, [b"L"], [listener, *probes])
    os.close(listener)  # a target holding it could answer its own notifications
    for fd in probes:
        os.close(fd)
    if sock.recv(1) != b"g":
        raise LaunchError("supervisor did not start")
    sock.close()
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.execvpe(argv[0], argv, dict(env))


def launch(argv: list[str], netns: NetnsTarget, env: Mapping[str, str], prog: bytes) -> Launched:
    """Fork, set up and exec ``argv``; returns once the exec succeeded (raises LaunchError otherwise)."""
    if not argv:
        raise LaunchError("empty command")
    cwd = os.getcwd()
    fds = _ns_fds(netns)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            parent.close()
            os.close(err_r)
            _child(argv, env, fds, child, prog, cwd)
        except BaseException as exc:  # noqa: BLE001 - report to the parent, never return
            try:
                os.write(err_w, f"{argv[0]}: {exc}".encode()[:2000])
            finally:
                os._exit(127)
    child.close()
    os.close(err_w)
    for fd in fds.values():
        os.close(fd)
    received: list[int] = []
    try:
        msg, received, _flags, _addr = socket.recv_fds(parent, 16, 4)
        if msg != b"L" or not received:
            raise LaunchError(_read_all(err_r) or "child died during setup")
        parent.send(b"g")
        message = _read_all(err_r)  # EOF at exec (the pipe is close-on-exec)
        if message:
            raise LaunchError(message)
    except BaseException:
        for fd in received:
            os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        raise
    finally:
        parent.close()
        os.close(err_r)
    probe6 = received[2] if len(received) > 2 else None
    return Launched(pid, received[0], received[1], probe6)


def _read_all(fd: int) -> str:
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    return data.decode(errors="replace")

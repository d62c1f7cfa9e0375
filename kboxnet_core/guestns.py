"""The guest namespace of ``kboxnet run``: a network namespace with one tap link.

A small holder process unshares a network and a mount namespace (plus a user
namespace when not root), creates the tap device inside, configures it with
the guest profile (address, default route, MTU, loopback up), bind-mounts a
``resolv.conf`` that points at the profile's DNS address (so programs never
use the host's resolvers directly), passes the tap fd back over a socketpair
and then just holds the namespaces until it is told to go. The command is
started by a :class:`~kboxnet_core.backend.CommandRunner`, which joins those
namespaces with ``setns`` (the default runner, or host-bypass's).
"""

from __future__ import annotations

import array
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping

import attrs

from .backend import CommandRunner, NetnsTarget
from .config import Config
from .links.tap import open_tap
from .netns import CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWUSER, MS_BIND, MS_PRIVATE, MS_REC, mount, set_link, setns, unshare


class GuestNamespaceError(RuntimeError):
    pass


def _sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as fh:
            fh.write(value)
    except OSError:
        pass


def _send_fd(sock: socket.socket, fd: int, msg: bytes) -> None:
    sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def _recv_fd(sock: socket.socket) -> tuple[bytes, int | None]:
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, (fds[0] if fds else None)


@attrs.define
class GuestNamespace:
    """A running holder process and the tap fd it created."""

    pid: int
    tap_fd: int
    ifname: str
    vnet_hdr: bool
    userns: bool
    resolv_path: str
    _control: socket.socket

    @property
    def target(self) -> NetnsTarget:
        return NetnsTarget(f"/proc/{self.pid}/ns/net", self.ifname, self.pid)

    @classmethod
    def create(cls, config: Config, ifname: str = "tap0", vnet_hdr: bool = False) -> GuestNamespace:
        net = config.net
        rootless = os.geteuid() != 0
        fd, resolv = tempfile.mkstemp(prefix="kboxnet-resolv-", suffix=".conf")
        with os.fdopen(fd, "w") as fh:
            fh.write(f"# written by kboxnet run\nnameserver {net.ipv4.dns}\n")
        os.chmod(resolv, 0o644)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        uid, gid = os.getuid(), os.getgid()
        pid = os.fork()
        if pid == 0:  # holder
            try:
                parent_sock.close()
                os.setsid()
                flags = CLONE_NEWNET | CLONE_NEWNS | (CLONE_NEWUSER if rootless else 0)
                unshare(flags)
                if rootless:
                    child_sock.sendall(b"M")  # parent writes our uid/gid maps
                    if child_sock.recv(1) != b"m":
                        os._exit(3)
                mount("none", "/", flags=MS_REC | MS_PRIVATE)
                mount(resolv, "/etc/resolv.conf", flags=MS_BIND)
                try:  # a sysfs of our own shows this namespace's interfaces
                    mount("sysfs", "/sys", "sysfs")
                except OSError:
                    pass
                tap = open_tap(ifname, vnet_hdr=vnet_hdr, offload=vnet_hdr)
                _sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")  # SLAAC address usable at once
                set_link("lo", up=True)
                set_link(ifname, mtu=net.mtu, up=True)
                v4 = net.ipv4
                cmds = [
                    ["ip", "addr", "add", f"{v4.address}/{v4.prefix_len}", "dev", ifname],
                    ["ip", "route", "add", "default", "via", str(v4.gateway), "dev", ifname],
                ]
                try:
                    set_link(ifname, txqueuelen=10000)
                except PermissionError:  # the ioctl wants CAP_NET_ADMIN in the initial user namespace;
                    # rtnetlink only in the namespace's own (rootless run)
                    cmds.append(["ip", "link", "set", "dev", ifname, "txqueuelen", "10000"])
                for cmd in cmds:
                    subprocess.run(cmd, check=True, capture_output=True)
                _send_fd(child_sock, tap, b"T")
                os.close(tap)
                child_sock.recv(1)  # hold the namespaces until the parent closes this
                os._exit(0)
            except BaseException as exc:  # noqa: BLE001 - report to the parent and die
                try:
                    detail = exc.stderr.decode(errors="replace").strip() if hasattr(exc, "stderr") and exc.stderr else ""
                    child_sock.sendall(f"E{exc} {detail}".encode()[:4000])
                finally:
                    os._exit(1)
        child_sock.close()
        try:
            msg, tap_fd = _recv_fd(parent_sock)
            if rootless and msg == b"M":
                with open(f"/proc/{pid}/setgroups", "w") as fh:
                    fh.write("deny")
                with open(f"/proc/{pid}/uid_map", "w") as fh:
                    fh.write(f"0 {uid} 1")
                with open(f"/proc/{pid}/gid_map", "w") as fh:
                    fh.write(f"0 {gid} 1")
                parent_sock.sendall(b"m")
                msg, tap_fd = _recv_fd(parent_sock)
            if msg != b"T" or tap_fd is None:
                raise GuestNamespaceError(msg[1:].decode(errors="replace") or "holder process died")
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            parent_sock.close()
            os.unlink(resolv)
            raise
        return cls(pid, tap_fd, ifname, vnet_hdr, rootless, resolv, parent_sock)

    def wait_for_ipv6(self, timeout: float) -> bool:
        """Wait until the guest interface has a global IPv6 address (SLAAC from the backend's RA)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{self.pid}/net/if_inet6") as fh:
                    for line in fh:
                        _addr, _idx, _plen, scope, flags, name = line.split()
                        if name == self.ifname and int(scope, 16) == 0 and not int(flags, 16) & 0x40:
                            return True
            except OSError:
                return False
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._control.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        try:
            os.unlink(self.resolv_path)
        except OSError:
            pass


class NamespaceRunner(CommandRunner):
    """The default runner: fork, join the guest's namespaces, exec."""

    def spawn(self, argv: list[str], netns: NetnsTarget, env: Mapping[str, str]) -> int:
        return spawn_in_namespaces(argv, netns, env)


def spawn_in_namespaces(argv: list[str], netns: NetnsTarget, env: Mapping[str, str],
                        before_exec: object = None) -> int:
    """Fork a child that joins the holder's namespaces (user, net, mount) and execs ``argv``."""
    cwd = os.getcwd()
    nsdir = f"/proc/{netns.pid}/ns"
    fds = {}
    for kind in ("user", "net", "mnt"):
        try:
            fds[kind] = os.open(f"{nsdir}/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
    own_user = os.stat("/proc/self/ns/user").st_ino
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(err_r)
            if "user" in fds and os.fstat(fds["user"]).st_ino != own_user:
                setns(fds["user"], CLONE_NEWUSER)
            setns(fds["net"], CLONE_NEWNET)
            if "mnt" in fds:
                setns(fds["mnt"], CLONE_NEWNS)
            try:
                os.chdir(cwd)
            except OSError:
                os.chdir("/")
            if callable(before_exec):
                before_exec()
            os.execvpe(argv[0], argv, dict(env))
        except BaseException as exc:  # noqa: BLE001
            try:
                os.write(err_w, f"{argv[0]}: {exc}".encode()[:2000])
            finally:
                os._exit(127)
    os.close(err_w)
    for fd in fds.values():
        os.close(fd)
    message = b""
    while chunk := os.read(err_r, 4096):
        message += chunk
    os.close(err_r)
    if message:
        os.waitpid(pid, 0)
        raise GuestNamespaceError(message.decode(errors="replace"))
    return pid

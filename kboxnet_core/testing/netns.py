"""Network namespaces created and removed by tests.

:class:`Netns` wraps one ``ip netns`` namespace with ``lo`` up.
:class:`HostNetns` builds the "host" topology used for backends that must not
run in the root namespace (Debian bookworm's passt sends guest pings to the
real gateway): a host namespace whose default route leads over a veth into a
second namespace that is a dead end (it answers nothing it does not own and
forwards nothing). Nothing can leave the machine from there.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from .procs import run


def unique_name(area: str) -> str:
    """``kbn-<area>-<pid>-<rand>``: short enough for interface names derived from it."""
    return f"kbn-{area}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def netns_supported() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun missing"
    try:
        run(["ip", "-V"], timeout=5)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"iproute2 not usable: {exc}"
    return None


class Netns:
    """A uniquely named network namespace; a context manager that deletes it.

    :ivar name: the name under ``/run/netns``.
    """

    def __init__(self, name: str | None = None, area: str = "test") -> None:
        self.name = name or unique_name(area)
        self._created = False

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def create(self) -> Netns:
        run(["ip", "netns", "add", self.name])
        self._created = True
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        return self

    def delete(self) -> None:
        if self._created:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, check=False)
            self._created = False
        etc = Path("/etc/netns") / self.name
        if etc.is_dir():
            for child in etc.iterdir():
                child.unlink()
            etc.rmdir()

    def set_resolv_conf(self, nameservers: Sequence[str]) -> Path:
        """Give commands run through ``ip netns exec`` this namespace's own resolv.conf.

        ``ip netns exec`` bind-mounts ``/etc/netns/NAME/resolv.conf`` over
        ``/etc/resolv.conf``; :meth:`delete` removes the file again.
        """
        etc = Path("/etc/netns") / self.name
        etc.mkdir(parents=True, exist_ok=True)
        path = etc / "resolv.conf"
        path.write_text("".join(f"nameserver {ns}\n" for ns in nameservers))
        return path

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def prefix(self) -> list[str]:
        """argv prefix that runs a command in this namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self, argv: Sequence[str], timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess:
        return run([*self.prefix(), *argv], timeout=timeout, check=check)

    def popen(self, argv: Sequence[str], env: Mapping[str, str] | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen([*self.prefix(), *argv], env=dict(env) if env is not None else None, **kw)

    def ip(self, *args: str) -> subprocess.CompletedProcess:
        return run(["ip", "-n", self.name, *args])

    def sysctl(self, key: str, value: str) -> None:
        """Set a per-namespace sysctl inside this namespace only."""
        self.run(["sysctl", "-q", "-w", f"{key}={value}"])

    def allow_ping_sockets(self) -> None:
        """Widen ``ping_group_range`` here so that unprivileged ICMP echo sockets work."""
        self.sysctl("net.ipv4.ping_group_range", "0 2147483647")


class HostNetns:
    """A "host" namespace with a dead-end veth towards a "gw" namespace.

    host: ``veth-h`` 10.222.0.2/24, default route via 10.222.0.1 (the gw).
    gw:   ``veth-g`` 10.222.0.1/24, no forwarding, no other route.
    With ``ipv6=True`` the same again in IPv6 (``HOST_ADDR6``/``GW_ADDR6`` in a
    ULA /64, default route via the gw): passt enables IPv6 only when the
    namespace it runs in has an IPv6 default route.
    All addresses belong to namespaces this object created, so any stray
    packet (passt's unmapped gateway ping) ends inside them.
    """

    HOST_ADDR = "10.222.0.2"
    GW_ADDR = "10.222.0.1"
    HOST_ADDR6 = "fd6b:626e:e2e::2"
    GW_ADDR6 = "fd6b:626e:e2e::1"

    def __init__(self, area: str = "host", ipv6: bool = False) -> None:
        base = unique_name(area)
        self.host = Netns(f"{base}-h")
        self.gw = Netns(f"{base}-g")
        self.ipv6 = ipv6

    @property
    def name(self) -> str:
        return self.host.name

    def create(self) -> HostNetns:
        self.host.create()
        try:
            self.gw.create()
            self.host.ip("link", "add", "veth-h", "type", "veth", "peer", "name", "veth-g",
                         "netns", self.gw.name)
            self.host.ip("addr", "add", f"{self.HOST_ADDR}/24", "dev", "veth-h")
            self.host.ip("link", "set", "veth-h", "up")
            self.gw.ip("addr", "add", f"{self.GW_ADDR}/24", "dev", "veth-g")
            self.gw.ip("link", "set", "veth-g", "up")
            self.host.ip("route", "add", "default", "via", self.GW_ADDR)
            self.gw.sysctl("net.ipv4.ip_forward", "0")
            if self.ipv6:
                self.host.ip("-6", "addr", "add", f"{self.HOST_ADDR6}/64", "dev", "veth-h", "nodad")
                self.gw.ip("-6", "addr", "add", f"{self.GW_ADDR6}/64", "dev", "veth-g", "nodad")
                self.host.ip("-6", "route", "add", "default", "via", self.GW_ADDR6, "dev", "veth-h")
                self.gw.sysctl("net.ipv6.conf.all.forwarding", "0")
            self.host.allow_ping_sockets()
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        self.host.delete()
        self.gw.delete()

    def __enter__(self) -> HostNetns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()

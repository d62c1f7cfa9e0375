"""Test topology for the passt backend: a guest namespace with a tap link, passt in a "host" namespace.

passt never runs in the root namespace in these tests: Debian bookworm's
passt sends guest pings to the gateway out as real packets, so it runs in a
:class:`~kboxnet_core.testing.netns.HostNetns` whose only route leads into a
dead-end namespace. The host namespace's ``/etc/netns/NAME/resolv.conf``
(bind-mounted by ``ip netns exec``) points at a dnsmasq on its loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from kboxnet_passt.settings import PasstSettings

from kboxnet_core.config import Config
from kboxnet_core.config.model import Forward, IPv6Profile, NetConfig
from kboxnet_core.links.tap import TapLink
from kboxnet_core.testing.netns import HostNetns, Netns


class PasstTopology:
    """host netns (+ dead-end gw), guest netns with tap0 held by a TapLink."""

    def __init__(self, area: str = "passt", ipv6: bool = False) -> None:
        self.hostns = HostNetns(area, ipv6=ipv6)
        self.guest = Netns(area=area)
        self.link: TapLink | None = None
        self.etc = Path()

    def __enter__(self) -> PasstTopology:
        self.hostns.create()
        try:
            self.guest.create()
            self.etc = Path("/etc/netns") / self.hostns.host.name
            self.etc.mkdir(parents=True, exist_ok=True)
            (self.etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        except BaseException:
            self.__exit__()
            raise
        return self

    def open_tap(self, mtu: int = 1500) -> TapLink:
        self.link = TapLink.open_in_netns(self.guest.path, "tap0", mtu=mtu)
        return self.link

    def config(self, mtu: int = 1500, forward: tuple[Forward, ...] = (), ipv6: bool = False,
               **passt: object) -> Config:
        settings = PasstSettings(wrapper=tuple(self.hostns.host.prefix()), **passt)  # type: ignore[arg-type]
        net = NetConfig(mtu=mtu, ipv6=IPv6Profile(enabled=ipv6), forward=forward,
                        plugins={"passt": settings})
        return Config(net=net)

    def guest_run(self, argv: list[str], timeout: float = 30.0, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([*self.guest.prefix(), *argv], capture_output=True, text=True,
                              timeout=timeout, check=check)

    def __exit__(self, *exc: object) -> None:
        if self.link is not None:
            self.link.close()
        self.guest.delete()
        self.hostns.delete()
        if self.etc != Path() and self.etc.exists():
            shutil.rmtree(self.etc, ignore_errors=True)

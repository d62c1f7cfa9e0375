"""Test/bench adapter: a network namespace "guest" served by a minislirp session.

``GuestNet`` creates a namespace, opens a tap link into it (optionally with
the virtio-net header and offloads), starts a :class:`MinislirpSession` on it
in this process, and runs a DHCP client in the namespace. With
``stream=True`` the tap is relayed to a socketpair and the session serves the
other end as a :class:`StreamLink` (the qemu stream protocol), which is what a
VM or kbox would connect.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from kboxnet_minislirp.plugin import MinislirpBackend
from kboxnet_minislirp.settings import MinislirpSettings
from tap_relay import TapStreamRelay, spawn_relay_process

from kboxnet_core.backend import SessionContext
from kboxnet_core.config.model import Config, EgressPolicy, Forward, NetConfig, PolicyRule
from kboxnet_core.links.stream import StreamLink, enlarge_socket_buffers
from kboxnet_core.links.tap import TapLink
from kboxnet_core.testing.netns import Netns
from kboxnet_core.testing.udhcpc import write_udhcpc_script


def guest_config(dns: tuple[str, ...] = (), pcap: str = "", mtu: int = 1500, allow: tuple[str, ...] = (),
                 forward: tuple[Forward, ...] = ()) -> Config:
    """Guest profile with egress limited to loopback (plus ``allow``): nothing can leave the machine."""
    rules = tuple(PolicyRule.parse(r) for r in ("127.0.0.0/8", *allow))
    return Config(net=NetConfig(mtu=mtu, dns=dns or ("127.0.0.1:53",), pcap=pcap, egress=EgressPolicy(allow=rules),
                                forward=forward))


class GuestNet:
    """A namespace guest behind minislirp; a context manager."""

    def __init__(self, *, mtu: int = 1500, vnet_hdr: bool = False, stream: bool = False, dns: tuple[str, ...] = (),
                 pcap: str = "", settings: MinislirpSettings | None = None, area: str = "msl",
                 netns: str | None = None, relay_process: bool = False, allow: tuple[str, ...] = (),
                 forward: tuple[Forward, ...] = ()) -> None:
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.stream = stream
        self.config = guest_config(dns, pcap, mtu, allow, forward)
        self.settings = settings
        self.ns = Netns(name=netns, area=area)
        self.own_ns = netns is None
        self.tmp = Path(tempfile.mkdtemp(prefix="kbn-msl-"))
        self.tap: TapLink | None = None
        self.link = None
        self.relay: TapStreamRelay | None = None
        self.relay_process = relay_process
        self.relay_proc = None
        self.session = None

    def start(self) -> GuestNet:
        if self.own_ns:
            self.ns.create()
        try:
            self.tap = TapLink.open_in_netns(self.ns.path, "tap0", mtu=self.mtu, vnet_hdr=self.vnet_hdr,
                                             offload=self.vnet_hdr)
            if self.stream:
                a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                enlarge_socket_buffers(b)
                if self.relay_process:  # like QEMU: the other end is another process
                    self.relay_proc = spawn_relay_process(self.tap.fd, b)
                    b.close()
                    self.tap.close()
                    self.tap = None
                else:
                    self.relay = TapStreamRelay(self.tap.fd, b).start()
                self.link = StreamLink(a, mtu=self.mtu)
            else:
                self.link = self.tap
            backend = MinislirpBackend()
            cfg = self.config
            if self.settings is not None:
                cfg = Config(net=NetConfig(**{**{f: getattr(cfg.net, f) for f in
                                                 ("mtu", "dns", "pcap", "egress", "forward")},
                                              "plugins": {"minislirp": self.settings}}))
                self.config = cfg
            self.session = backend.open(self.link, SessionContext(config=cfg, runtime_dir=self.tmp))
            self.session.start()
            if not self.session.ready(5):
                raise RuntimeError(f"minislirp session not ready: {self.session.wait(0)}")
        except BaseException:
            self.stop()
            raise
        return self

    def dhcp(self, timeout: float = 20) -> str:
        """Run busybox udhcpc in the namespace; returns its output (contains KBN_LEASE)."""
        script = write_udhcpc_script(self.tmp / "udhcpc.sh")
        resolv = self.tmp / "resolv.conf"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin:/usr/sbin:/sbin"), "RESOLV_CONF": str(resolv)}
        import subprocess

        out = subprocess.run([*self.ns.prefix(), "busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "5",
                              "-T", "1", "-s", str(script), "-O", "mtu"], env=env, capture_output=True,
                             text=True, timeout=timeout)
        return out.stdout + out.stderr

    def stop(self) -> None:
        if self.session is not None:
            self.session.stop()
            self.session.wait(5)
        if self.relay is not None:
            self.relay.stop()
        if self.relay_proc is not None:
            self.relay_proc.kill()
            self.relay_proc.wait(5)
        if self.link is not None and self.link is not self.tap:
            self.link.close()
        if self.tap is not None:
            self.tap.close()
        if self.own_ns:
            self.ns.delete()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> GuestNet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

"""Boot a real Linux guest under QEMU (TCG) and read what its init reports.

The guest is Debian's kernel plus a busybox initramfs (:mod:`.initramfs`)
whose NIC is ``virtio-net-pci`` on ``-netdev stream`` to a UNIX socket
(``kboxnet serve``, passt) or, for checking the kit itself, QEMU's own
``-netdev user``. KVM on this kind of machine is not usable for stock
kernels, so the boot is TCG: about 6-7 s.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from .guestkernel import GuestKernel, cache_dir, fetch_kernel
from .initramfs import build_initramfs
from .netns import Netns

QEMU = "qemu-system-x86_64"


def qemu_available() -> str | None:
    """None if QEMU can be used here, else the reason."""
    if not shutil.which(QEMU):
        return f"{QEMU} not installed (apt-get install qemu-system-x86)"
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return "apt-get/dpkg-deb needed to fetch the guest kernel"
    if not shutil.which("busybox"):
        return "busybox not installed (apt-get install busybox-static)"
    return None


@attrs.frozen
class GuestImage:
    kernel: GuestKernel
    initrd: Path


def prepare_guest(cache: Path | None = None) -> GuestImage:
    """Fetch the kernel (cached) and build the initramfs (cached per kernel)."""
    kernel = fetch_kernel(cache=cache)
    initrd = kernel.vmlinuz.parent / "initrd-e2e.cpio.gz"
    tmp = initrd.with_suffix(f".{os.getpid()}.tmp")
    build_initramfs(kernel, tmp)
    tmp.replace(initrd)
    return GuestImage(kernel, initrd)


def stream_netdev(socket_path: str | Path) -> str:
    return f"stream,id=n0,server=off,addr.type=unix,addr.path={socket_path}"


def user_netdev(extra: str = "") -> str:
    return "user,id=n0" + (f",{extra}" if extra else "")


@attrs.frozen
class GuestReport:
    """What the guest printed, parsed.

    :ivar lease: the udhcpc lease fields (ip, mask, router, dns, mtu, server).
    :ivar ping: "ok"/"fail"/"" for the gateway ping.
    :ivar dns_rc: nslookup's exit status (None: not run).
    :ivar dns_addrs: the addresses nslookup returned.
    :ivar wget_rc, wget_size, sha256: the download's result.
    :ivar addr6, router6, mtu6: the SLAAC address (with prefix length, "" if none came), the
        default router and the IPv6 MTU of eth0 (only with ``kbn.gw6``).
    :ivar ping6, dns6_rc, dns6_addrs, wget6_rc, wget6_size, sha256_6: the same checks over IPv6
        (``dns6_addrs`` from an AAAA query).
    :ivar done: the init reached its end.
    :ivar console: the whole serial output.
    :ivar wall_s: seconds from QEMU start to exit.
    :ivar exit_code: QEMU's exit code (None: killed at the timeout).
    """

    console: str
    wall_s: float
    exit_code: int | None
    lease: dict[str, str] = attrs.field(factory=dict)
    mtu: int = 0
    ping: str = ""
    dns_rc: int | None = None
    dns_addrs: tuple[str, ...] = ()
    wget_rc: int | None = None
    wget_size: int = 0
    sha256: str = ""
    addr6: str = ""
    router6: str = ""
    mtu6: int = 0
    ping6: str = ""
    dns6_rc: int | None = None
    dns6_addrs: tuple[str, ...] = ()
    wget6_rc: int | None = None
    wget6_size: int = 0
    sha256_6: str = ""
    done: bool = False
    errors: tuple[str, ...] = ()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console.splitlines()[-lines:])


def _fields(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))


def parse_console(console: str, wall_s: float = 0.0, exit_code: int | None = 0) -> GuestReport:
    """Turn the ``KBN_*`` lines of a console log into a :class:`GuestReport`."""
    vals: dict[str, object] = {}
    errors: list[str] = []
    for raw in console.replace("\r", "").splitlines():
        line = raw.strip()
        if line.startswith("KBN_LEASE "):
            vals["lease"] = _fields(line)
        elif line.startswith("KBN_ADDR "):
            vals["mtu"] = int(_fields(line).get("mtu") or 0)
        elif line.startswith("KBN_ADDR6 "):
            f = _fields(line)
            vals.update(addr6=f.get("addr", ""), router6=f.get("router", ""), mtu6=int(f.get("mtu6") or 0))
        elif line.startswith(("KBN_PING ", "KBN_PING6 ")):
            vals["ping6" if line.startswith("KBN_PING6") else "ping"] = line.split()[1]
        elif line.startswith(("KBN_DNS ", "KBN_DNS6 ")):
            sfx = "6" if line.startswith("KBN_DNS6") else ""
            f = _fields(line)
            vals[f"dns{sfx}_rc"] = int(f.get("rc", "-1"))
            vals[f"dns{sfx}_addrs"] = tuple(a for a in f.get("addrs", "").split(",") if a)
        elif line.startswith(("KBN_WGET ", "KBN_WGET6 ")):
            sfx = "6" if line.startswith("KBN_WGET6") else ""
            f = _fields(line)
            vals[f"wget{sfx}_rc"] = int(f.get("rc", "-1"))
            vals[f"wget{sfx}_size"] = int(f.get("size") or 0)
            vals["sha256_6" if sfx else "sha256"] = f.get("sha256", "")
        elif line.startswith("KBN_DONE"):
            vals["done"] = True
        elif line.startswith("KBN_ERROR"):
            errors.append(line)
    return GuestReport(console=console, wall_s=wall_s, exit_code=exit_code, errors=tuple(errors),
                       **vals)  # type: ignore[arg-type]


def qemu_argv(image: GuestImage, netdev: str, append: str = "", memory: int = 512) -> list[str]:
    return [
        QEMU, "-accel", "tcg", "-M", "q35", "-cpu", "max", "-m", str(memory), "-smp", "1",
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-kernel", str(image.kernel.vmlinuz), "-initrd", str(image.initrd),
        "-append", f"console=ttyS0 quiet panic=-1 {append}".strip(),
        "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile=",
    ]


def kernel_args(url: str = "", name: str = "", dns: str = "", *, gw6: str = "", name6: str = "",
                dns6: str = "", url6: str = "") -> str:
    """The ``kbn.*`` kernel parameters the init script reads (empty ones are left out).

    ``gw6`` turns on the IPv6 part: wait for a SLAAC address, then ``ping -6 gw6``;
    ``name6``/``dns6`` an AAAA lookup; ``url6`` a download (``http://[addr]:port/...``).
    """
    values = {"url": url, "name": name, "dns": dns, "gw6": gw6, "name6": name6, "dns6": dns6, "url6": url6}
    return " ".join(f"kbn.{key}={value}" for key, value in values.items() if value)


def boot(
    image: GuestImage,
    netdev: str,
    append: str = "",
    timeout: float = 90.0,
    netns: Netns | None = None,
    extra_args: Sequence[str] = (),
) -> GuestReport:
    """Boot the guest once, wait (bounded by ``timeout``) and parse its console."""
    argv = [*(netns.prefix() if netns else []), *qemu_argv(image, netdev, append), *extra_args]
    with tempfile.TemporaryFile() as log:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            code: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            code = None
        wall = time.monotonic() - start
        log.seek(0)
        console = log.read().decode(errors="replace")
    return parse_console(console, wall, code)


__all__ = [
    "GuestImage", "GuestReport", "boot", "cache_dir", "kernel_args", "parse_console", "prepare_guest",
    "qemu_argv", "qemu_available", "stream_netdev", "user_netdev",
]

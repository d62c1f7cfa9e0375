"""Build a busybox initramfs (newc cpio, gzip) for the QEMU end-to-end guest.

The init script brings eth0 up, gets a DHCP lease, pings the gateway,
resolves a name, downloads a file and prints its sha256, each as one
``KBN_*`` line on the serial console; with ``kbn.gw6=`` it then does the same
over IPv6 (waits for a SLAAC address, ``ping -6``, an AAAA lookup, a
download), and powers off. Its parameters come from the kernel command line
(``kbn.url=``, ``kbn.name=``, ``kbn.dns=``, ``kbn.gw6=``, ``kbn.name6=``,
``kbn.dns6=``, ``kbn.url6=``).
"""

from __future__ import annotations

import gzip
import io
import shutil
from pathlib import Path

from .guestkernel import VIRTIO_NET_MODULES, GuestKernel
from .udhcpc import udhcpc_script

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /etc /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "KBN_INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
arg() { for x in $(cat /proc/cmdline); do case "$x" in "$1="*) echo "${x#*=}";; esac; done; }
for m in MODULES; do insmod /lib/modules/$m.ko || echo "KBN_ERROR insmod $m"; done
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
ip link set lo up
ip link set eth0 up
echo "KBN_LINK $(cat /sys/class/net/eth0/address 2>/dev/null)"
udhcpc -i eth0 -n -q -f -t 5 -T 1 -s /etc/udhcpc.script -O mtu 2>&1 | grep -E '^KBN_|lease'
router=$(ip route | awk '/^default/ {print $3; exit}')
echo "KBN_ADDR $(ip -4 -o addr show dev eth0 | awk '{print $4}') mtu=$(cat /sys/class/net/eth0/mtu)"
if [ -n "$router" ]; then
  if ping -c 2 -W 3 "$router" >/tmp/ping 2>&1; then r=ok; else r=fail; fi
  echo "KBN_PING $r target=$router $(grep -o '[0-9]* packets received' /tmp/ping | cut -d' ' -f1)"
fi
name=$(arg kbn.name)
dns=$(arg kbn.dns)
[ -n "$dns" ] || dns=$(awk '/^nameserver/ {print $2; exit}' /etc/resolv.conf)
if [ -n "$name" ] && [ -n "$dns" ]; then
  nslookup -type=a "$name" "$dns" >/tmp/ns 2>&1; rc=$?
  addrs=$(awk '/^Name:/ {f=1} f && /^Address/ {print $2}' /tmp/ns | tr '\n' ',')
  echo "KBN_DNS rc=$rc server=$dns name=$name addrs=$addrs"
fi
url=$(arg kbn.url)
if [ -n "$url" ]; then
  timeout 60 wget -q -O /tmp/file "$url"; rc=$?
  sum=$(sha256sum /tmp/file 2>/dev/null | cut -d' ' -f1)
  echo "KBN_WGET rc=$rc size=$(wc -c </tmp/file 2>/dev/null) sha256=$sum"
fi
gw6=$(arg kbn.gw6)
if [ -n "$gw6" ]; then
  # SLAAC: wait (bounded) for a global address that has finished duplicate address detection
  i=0; addr6=""
  while [ $i -lt 100 ]; do
    addr6=$(ip -6 -o addr show dev eth0 scope global 2>/dev/null | grep -v tentative | awk '{print $4; exit}')
    [ -n "$addr6" ] && break
    sleep 0.1; i=$((i+1))
  done
  router6=$(ip -6 route show default 2>/dev/null | awk '{print $3; exit}')
  echo "KBN_ADDR6 addr=$addr6 router=$router6 mtu6=$(cat /proc/sys/net/ipv6/conf/eth0/mtu) waited=$i"
  ip -6 -o addr show dev eth0 | sed 's/^/KBN_INFO6 /'
  if ping -6 -c 2 -W 3 "$gw6" >/tmp/ping6 2>&1; then r=ok; else r=fail; fi
  echo "KBN_PING6 $r target=$gw6 $(grep -o '[0-9]* packets received' /tmp/ping6 | cut -d' ' -f1)"
fi
name6=$(arg kbn.name6)
dns6=$(arg kbn.dns6)
if [ -n "$name6" ] && [ -n "$dns6" ]; then
  nslookup -type=aaaa "$name6" "$dns6" >/tmp/ns6 2>&1; rc=$?
  addrs=$(awk '/^Name:/ {f=1} f && /^Address/ {print $2}' /tmp/ns6 | tr '\n' ',')
  echo "KBN_DNS6 rc=$rc server=$dns6 name=$name6 addrs=$addrs"
  [ $rc -eq 0 ] || sed 's/^/KBN_INFO6 /' /tmp/ns6
fi
url6=$(arg kbn.url6)
if [ -n "$url6" ]; then
  timeout 60 wget -q -O /tmp/file6 "$url6" 2>/tmp/wget6; rc=$?
  sum=$(sha256sum /tmp/file6 2>/dev/null | cut -d' ' -f1)
  echo "KBN_WGET6 rc=$rc size=$(wc -c </tmp/file6 2>/dev/null) sha256=$sum"
  [ $rc -eq 0 ] || sed 's/^/KBN_INFO6 /' /tmp/wget6
fi
echo "KBN_DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"""


def init_script() -> str:
    return INIT_SCRIPT.replace("MODULES", " ".join(VIRTIO_NET_MODULES))


def find_busybox() -> Path:
    for cand in BUSYBOX_CANDIDATES:
        path = Path(cand)
        if path.exists():
            return path
    found = shutil.which("busybox")
    if not found:
        raise RuntimeError("busybox not found (apt-get install busybox-static)")
    return Path(found)


class CpioWriter:
    """A minimal ``newc`` cpio archive writer (what the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
        self.ino += 1
        header = b"070701" + b"".join(f"{v:08X}".encode() for v in fields)
        self.buf.write(header + namez)
        self.buf.write(b"\0" * (-(len(header) + len(namez)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build_initramfs(kernel: GuestKernel, out: Path, busybox: Path | None = None) -> Path:
    """Write the gzip'd initramfs for ``kernel`` to ``out`` and return it."""
    cpio = CpioWriter()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"):
        cpio.directory(d)
    cpio.chardev("dev/console", 5, 1)
    cpio.file("bin/busybox", (busybox or find_busybox()).read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", init_script().encode(), 0o755)
    cpio.file("etc/udhcpc.script", udhcpc_script().encode(), 0o755)
    for mod in kernel.modules:
        cpio.file(f"lib/modules/{mod.name}", mod.read_bytes())
    out.write_bytes(gzip.compress(cpio.finish(), compresslevel=6))
    return out

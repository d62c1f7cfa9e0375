"""Fetch a Debian kernel for QEMU guests and keep only what the guest needs.

``apt-get download linux-image-<ver>-amd64`` (no install, so initramfs-tools
never runs), then the package's data tarball is streamed through
``dpkg-deb --fsys-tarfile`` and only ``vmlinuz`` and the virtio network
modules are kept (a few MB instead of 400 MB). Cached under
``$KBOXNET_CACHE`` or ``~/.cache/kboxnet``.
"""

from __future__ import annotations

import fcntl
import lzma
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import attrs

#: load order matters (each depends on the previous ones); virtio is =m in Debian's config
VIRTIO_NET_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
)


@attrs.frozen
class GuestKernel:
    """A kernel image and its virtio-net modules (uncompressed, in load order)."""

    version: str
    vmlinuz: Path
    modules: tuple[Path, ...]


def cache_dir() -> Path:
    base = os.environ.get("KBOXNET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kboxnet")
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_package() -> str:
    """The ``linux-image-<ver>-amd64`` package to use.

    ``KBOXNET_GUEST_KERNEL`` overrides; otherwise what ``linux-image-amd64``
    depends on, else the highest ``linux-image-*-amd64`` apt knows.
    """
    override = os.environ.get("KBOXNET_GUEST_KERNEL")
    if override:
        return override
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True,
                         check=False).stdout
    match = re.search(r"Depends:\s*(linux-image-[\d.]+-\d+-amd64)\b", out)
    if match:
        return match.group(1)
    out = subprocess.run(["apt-cache", "search", "--names-only", r"^linux-image-[0-9.]+-[0-9]+-amd64$"],
                         capture_output=True, text=True, check=False).stdout
    names = sorted(re.findall(r"^(linux-image-[\d.]+-(\d+)-amd64)\s", out, re.M), key=lambda t: int(t[1]))
    if not names:
        raise RuntimeError("no linux-image-*-amd64 package known to apt (run apt-get update)")
    return names[-1][0]


def _complete(dest: Path) -> GuestKernel | None:
    stamp = dest / "READY"
    if not stamp.exists():
        return None
    version = stamp.read_text().strip()
    mods = tuple(dest / f"{name}.ko" for name in VIRTIO_NET_MODULES)
    vmlinuz = dest / "vmlinuz"
    if vmlinuz.exists() and all(m.exists() for m in mods):
        return GuestKernel(version, vmlinuz, mods)
    return None


def fetch_kernel(package: str | None = None, cache: Path | None = None) -> GuestKernel:
    """Return the cached kernel for ``package``, downloading and extracting it if needed.

    Concurrent callers (parallel test runs) serialize on a lock file in the cache.
    """
    package = package or kernel_package()
    dest = (cache or cache_dir()) / package
    found = _complete(dest)
    if found:
        return found
    with open(dest.parent / f".{package}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _complete(dest) or _fetch(package, dest)


def _fetch(package: str, dest: Path) -> GuestKernel:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="kbn-kernel-") as tmp:
        subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True, capture_output=True)
        debs = list(Path(tmp).glob("*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {package} produced no .deb")
        version = _extract(debs[0], dest)
    (dest / "READY").write_text(version)
    found = _complete(dest)
    if not found:
        raise RuntimeError(f"{package}: vmlinuz or a virtio module is missing from the package")
    return found


def _extract(deb: Path, dest: Path) -> str:
    """Stream the .deb's data and keep vmlinuz + the virtio modules; returns the kernel version."""
    wanted = {name: None for name in VIRTIO_NET_MODULES}
    version = ""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                if base.startswith("vmlinuz-"):
                    version = base[len("vmlinuz-"):]
                    _save(tar, member, dest / "vmlinuz", xz=False)
                    continue
                mod = re.fullmatch(r"(.+)\.ko(\.xz)?", base)
                if mod and mod.group(1) in wanted and "/kernel/" in member.name:
                    _save(tar, member, dest / f"{mod.group(1)}.ko", xz=bool(mod.group(2)))
    finally:
        proc.stdout.close()
        proc.wait()
    return version


def _save(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, xz: bool) -> None:
    src = tar.extractfile(member)
    assert src is not None
    data = src.read()
    path.write_bytes(lzma.decompress(data) if xz else data)

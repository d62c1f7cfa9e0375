"""Find passt, learn its version and which options it knows (cached).

``passt --version`` is not enough: Debian bookworm's build prints
"unknown version". The release date is taken from ``--version`` when it has
one, else from the package that owns the binary (dpkg, then rpm). Options are
probed directly: ``passt OPTION [VALUE] --version`` exits 0 when getopt knows
the option (it reaches ``--version``) and 1 when it does not.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping

import attrs

#: option name -> argv used to probe it (a harmless value where one is needed)
REQUIRED_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "fd": ("--fd", "3"),
    "foreground": ("--foreground",),
    "stderr": ("--stderr",),
    "quiet": ("--quiet",),
    "address": ("--address", "10.0.2.15"),
    "netmask": ("--netmask", "24"),
    "gateway": ("--gateway", "10.0.2.2"),
    "dns": ("--dns", "10.0.2.3"),
    "mtu": ("--mtu", "1500"),
    "ipv4-only": ("-4",),
    "tcp-ports": ("--tcp-ports", "none"),
    "udp-ports": ("--udp-ports", "none"),
}
OPTIONAL_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "ipv6-only": ("-6",),
    "dns-forward": ("--dns-forward", "10.0.2.3"),
    "no-map-gw": ("--no-map-gw",),
    "no-icmp": ("--no-icmp",),
    "map-host-loopback": ("--map-host-loopback", "none"),
    "map-guest-addr": ("--map-guest-addr", "none"),
    "dns-host": ("--dns-host", "127.0.0.1"),
    "runas": ("--runas", "0"),
    "one-off": ("--one-off",),
}

_DATE = re.compile(r"(20\d\d)[_-]?(\d\d)[_-]?(\d\d)")
_HASH = re.compile(r"[._]g?([0-9a-f]{7,12})\b")
PROBE_TIMEOUT = 3.0


def parse_date(text: str) -> datetime.date | None:
    """The release date inside a version string (``2024_12_11.09478d5``,
    ``0.0~git20230309.7c7625d-1``, ``0^20250121.g4f2c8e7``), or None."""
    for m in _DATE.finditer(text):
        try:
            return datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            continue
    return None


@attrs.frozen
class PasstVersion:
    """What we know about a passt build's version.

    :ivar text: the version string as found (``--version`` or the package).
    :ivar date: the upstream release/snapshot date, when it could be read.
    :ivar source: ``"--version"``, ``"dpkg"``, ``"rpm"`` or ``""`` (unknown).
    """

    text: str
    date: datetime.date | None
    source: str

    def __str__(self) -> str:
        if not self.text:
            return "unknown version"
        return self.text if self.source in ("", "--version") else f"{self.text} ({self.source})"


@attrs.frozen
class BinaryInfo:
    """A resolved passt binary and what it supports.

    :ivar path: absolute path of the program.
    :ivar key: (device, inode, mtime_ns, size): the cache key.
    :ivar version: see :class:`PasstVersion`.
    :ivar options: option names (keys of the probe tables) it accepts.
    :ivar error: set when the binary could not even run ``--version``.
    """

    path: str
    key: tuple[int, int, int, int]
    version: PasstVersion
    options: frozenset[str]
    error: str = ""

    def has(self, option: str) -> bool:
        return option in self.options

    def missing_required(self) -> list[str]:
        return [name for name in REQUIRED_OPTIONS if name not in self.options]


def resolve_binary(binary: str) -> str | None:
    """Absolute path of ``binary`` (a name searched in PATH, or a path), or None."""
    if os.sep in binary:
        return binary if os.path.isfile(binary) and os.access(binary, os.X_OK) else None
    return shutil.which(binary)


def file_key(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _run(argv: list[str], timeout: float = PROBE_TIMEOUT) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    except OSError as exc:
        return -1, str(exc)
    return proc.returncode, proc.stdout.decode(errors="replace")


def package_version(path: str) -> PasstVersion | None:
    """Version of the package owning ``path`` (dpkg, then rpm), or None."""
    real = os.path.realpath(path)
    if shutil.which("dpkg-query"):
        for candidate in dict.fromkeys((path, real)):
            rc, out = _run(["dpkg-query", "-S", candidate])
            if rc == 0 and ":" in out:
                package = out.split(":", 1)[0].strip().split(",")[0].strip()
                rc, ver = _run(["dpkg-query", "-W", "-f", "${Version}", package])
                if rc == 0 and ver.strip():
                    return PasstVersion(ver.strip(), parse_date(ver), "dpkg")
    if shutil.which("rpm"):
        rc, out = _run(["rpm", "-qf", "--qf", "%{VERSION}-%{RELEASE}", real])
        if rc == 0 and out.strip() and "not owned" not in out:
            return PasstVersion(out.strip(), parse_date(out), "rpm")
    return None


def read_version(path: str) -> tuple[PasstVersion, str]:
    """(version, error): from ``--version``, else from the package manager."""
    rc, out = _run([path, "--version"])
    if rc != 0:
        return PasstVersion("", None, ""), f"'{path} --version' failed (status {rc}): {out.strip()[:200]}"
    first = out.strip().splitlines()[0] if out.strip() else ""
    text = first.split(None, 1)[1] if first.startswith(("passt ", "pasta ")) else first
    date = parse_date(text)
    if date is not None:
        return PasstVersion(text, date, "--version"), ""
    pkg = package_version(path)
    if pkg is not None:
        return pkg, ""
    return PasstVersion(text, None, ""), ""


def probe_options(path: str, table: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
    """Names of the options in ``table`` that ``path`` accepts (probes run in parallel)."""
    procs: dict[str, subprocess.Popen] = {}
    known: set[str] = set()
    try:
        for name, args in table.items():
            try:
                procs[name] = subprocess.Popen([path, *args, "--version"], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except OSError:
                continue
        for name, proc in procs.items():
            try:
                if proc.wait(PROBE_TIMEOUT) == 0:
                    known.add(name)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return frozenset(known)


_cache: dict[tuple[str, tuple[int, int, int, int]], BinaryInfo] = {}
_lock = threading.Lock()


def inspect_binary(path: str) -> BinaryInfo:
    """Version and options of the passt at ``path``; cached by path, inode and mtime."""
    key = file_key(path)
    with _lock:
        hit = _cache.get((path, key))
    if hit is not None:
        return hit
    version, error = read_version(path)
    options: frozenset[str] = frozenset()
    if not error:
        options = probe_options(path, {**REQUIRED_OPTIONS, **OPTIONAL_OPTIONS})
    info = BinaryInfo(path, key, version, options, error)
    with _lock:
        _cache[(path, key)] = info
    return info


def clear_cache() -> None:
    with _lock:
        _cache.clear()

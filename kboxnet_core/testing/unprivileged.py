"""Run a command as an unprivileged user who may open a tun device, without changing the machine.

On many machines (this project's CI among them) ``/dev/net/tun`` is mode 0600, so
rootless ``kboxnet run`` cannot be exercised there as it is. This helper is started
*as root inside a private mount namespace* (``unshare --mount --propagation private``,
see :func:`unprivileged_argv`) and then:

1. mounts a tmpfs over ``/dev/net`` and creates a fresh tun node there (char 10:200,
   mode 0666), as a distribution that grants rootless tun access would have it;
2. covers each directory the user cannot traverse on the way to the paths it needs
   (``/root`` is 0700, and pyenv or a CI clone may live below it) with a tmpfs that
   re-exposes only the needed entries through bind mounts (each entry keeps its own
   permissions);
3. drops to ``uid:gid`` with ``setpriv``: no supplementary groups, no capabilities,
   no-new-privs (so no setuid helper can hand privileges back), and execs the command.

All mounts live in the mount namespace and disappear with it; the real tun node and
the real directory permissions are never touched.

Command line (root only): ``python -m kboxnet_core.testing.unprivileged --uid U --gid G
[--expose PATH]... -- CMD...``.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..netns import MS_BIND, MS_REC, mount

TUN_MAJOR, TUN_MINOR = 10, 200
NOBODY = 65534
#: what an unprivileged login's PATH would hold (``ip`` is in /usr/sbin or /sbin)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

def _may(st: os.stat_result, uid: int, gid: int, bit: int) -> bool:
    """Whether ``uid:gid`` (no supplementary groups, no capabilities) has permission ``bit`` (1/2/4)."""
    if st.st_uid == uid:
        return bool((st.st_mode >> 6) & bit)
    if st.st_gid == gid:
        return bool((st.st_mode >> 3) & bit)
    return bool(st.st_mode & bit)


def blocked_directories(paths: Iterable[str | Path], uid: int, gid: int) -> dict[Path, set[str]]:
    """Ancestors of ``paths`` that ``uid:gid`` cannot traverse, each with the child names to re-expose."""
    blocked: dict[Path, set[str]] = {}
    for raw in paths:
        path = Path(os.path.realpath(raw))
        parts = path.parts
        for depth in range(1, len(parts)):
            ancestor = Path(*parts[:depth])
            if not _may(os.stat(ancestor), uid, gid, 1):
                blocked.setdefault(ancestor, set()).add(parts[depth])
    return blocked


def expose(paths: Iterable[str | Path], uid: int, gid: int) -> list[Path]:
    """Make ``paths`` reachable for ``uid:gid`` in this (private!) mount namespace; returns the covered dirs."""
    blocked = blocked_directories(paths, uid, gid)
    for directory in sorted(blocked, key=lambda p: len(p.parts)):  # outermost first
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
        try:
            mount("tmpfs", str(directory), "tmpfs", data="mode=0755,size=64k")
            for name in sorted(blocked[directory]):
                src = f"/proc/self/fd/{fd}/{name}"  # the covered original, still reachable through the fd
                target = directory / name
                if os.path.isdir(src):
                    target.mkdir()
                else:
                    target.touch()
                mount(src, str(target), flags=MS_BIND | MS_REC)
        finally:
            os.close(fd)
    return sorted(blocked)


def private_tun_node(directory: str = "/dev/net") -> Path:
    """A tmpfs over ``directory`` holding a fresh tun node that everybody may open (mode 0666)."""
    mount("tmpfs", directory, "tmpfs", data="mode=0755,size=16k")
    node = Path(directory) / "tun"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(TUN_MAJOR, TUN_MINOR))
    os.chmod(node, 0o666)  # mknod's mode is filtered by the umask
    return node


def setpriv_argv(uid: int, gid: int, command: Sequence[str]) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all",
            "--ambient-caps=-all", "--no-new-privs", "--", *command]


def unprivileged_argv(command: Sequence[str], expose_paths: Iterable[str | Path] = (), uid: int = NOBODY,
                      gid: int = NOBODY, python: str = sys.executable) -> list[str]:
    """argv (to run as root) that runs ``command`` as ``uid:gid`` with a private 0666 tun node."""
    argv = ["unshare", "--mount", "--propagation", "private", python, "-m", __name__,
            "--uid", str(uid), "--gid", str(gid)]
    for path in expose_paths:
        argv += ["--expose", str(path)]
    return [*argv, "--", *command]


def python_paths(python: str = sys.executable) -> list[str]:
    """What running ``python`` needs: the interpreter, its prefixes, and the import path."""
    found = {os.path.dirname(os.path.realpath(python)), sys.prefix, sys.base_prefix, sys.exec_prefix}
    found.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted(found)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__.splitlines()[0])
    parser.add_argument("--uid", type=int, default=NOBODY)
    parser.add_argument("--gid", type=int, default=NOBODY)
    parser.add_argument("--expose", action="append", default=[], help="a path the user must reach")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if os.geteuid() != 0 or not command:
        parser.error("run as root, inside a private mount namespace, with a command after --")
    # refuse to mount anything in the caller's mount namespace (the machine's, most likely)
    if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
        parser.error("not in a private mount namespace (start it through unshare --mount)")
    private_tun_node()
    expose(args.expose, args.uid, args.gid)
    sys.stdout.flush()
    os.execvp("setpriv", setpriv_argv(args.uid, args.gid, command))
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main())

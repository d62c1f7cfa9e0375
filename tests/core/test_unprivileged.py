"""``kboxnet run`` as an unprivileged user, who creates its own user namespace.

What is exercised: ``kboxnet run --net minislirp --no-fallback`` started as uid/gid 65534
(nobody), with no supplementary groups, no capabilities and no-new-privs (so no setuid helper
such as newuidmap can be used). kboxnet itself unshares a user namespace (uid_map "0 65534 1"),
opens the tun device inside it, configures the guest and runs real clients there: curl
downloads a file from a server the test starts on loopback, through 10.0.2.2, and another over
IPv6 from ``::1`` through ``[fd00::2]`` (SLAAC address), both sha256-checked; busybox ping
reaches the gateway. Everything runs in a network namespace the test
creates (its only interface is ``lo``), so nothing can leave the machine.

What is arranged for it, as root and only inside a private mount namespace
(:mod:`kboxnet_core.testing.unprivileged`): ``/dev/net/tun`` is mode 0600 here and on CI, so a
tmpfs over ``/dev/net`` holds a fresh tun node (char 10:200) with mode 0666, which is what a
distribution granting rootless tun access provides. Directories that user cannot traverse on the
way to the interpreter and the source tree (``/root`` is 0700) are covered by a tmpfs that
re-exposes just those paths. The test checks that the real tun node is untouched afterwards.

What is not exercised: a real login session (no systemd user slice, no ``XDG_RUNTIME_DIR``), a
distribution's own tun permissions (udev rule, ``tun`` group) and the rootless path of the other
backends (passt, host-bypass). Skipped (with the reason) only when not root, when a tool is
missing, or when the kernel does not let an unprivileged user create a user namespace.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import kboxnet_core
from kboxnet_core.testing import HttpFileServer, Netns
from kboxnet_core.testing.unprivileged import NOBODY, PATH, blocked_directories, python_paths, unprivileged_argv

REPO = Path(kboxnet_core.__file__).resolve().parents[1]


def _tun_identity() -> tuple:
    st = os.stat("/dev/net/tun")
    return st.st_mode, st.st_uid, st.st_gid, st.st_rdev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def _dev_net_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line for line in fh if line.split()[4].startswith("/dev/net")]


@pytest.fixture
def workdir():
    """A directory owned by nobody (its HOME, TMPDIR and cwd), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="kbn-unpriv-"))
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run_as_nobody(ns: Netns, command: list[str], workdir: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {"PATH": PATH, "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [*ns.prefix(), *unprivileged_argv(command, [*python_paths(), REPO, workdir])]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env)


@pytest.mark.netns
def test_run_as_nobody_in_its_own_user_namespace(workdir):
    if os.geteuid() != 0:
        pytest.skip("needs root to prepare the unprivileged user's environment")
    missing = [tool for tool in ("setpriv", "unshare", "curl", "busybox") if not shutil.which(tool)]
    if missing or not Path("/dev/net/tun").exists():
        pytest.skip(f"missing: {', '.join(missing) or '/dev/net/tun'}")
    tun_before = _tun_identity()
    mounts_before = _dev_net_mounts()
    with Netns(area="unpriv") as ns:
        ns.set_resolv_conf(["127.0.0.1"])  # nothing resolves off the machine (there is no route anyway)
        probe = _run_as_nobody(ns, ["sh", "-c", "echo dropped; exec unshare --user --map-root-user true"],
                               workdir, 30)
        assert "dropped" in probe.stdout, f"the unprivileged environment could not be set up: {probe.stderr}"
        if probe.returncode != 0:
            pytest.skip(f"an unprivileged user cannot create a user namespace here: {probe.stderr.strip()}")
        with HttpFileServer(netns=ns) as http, HttpFileServer("::1", netns=ns) as http6:
            digest = http.add_file("blob.bin", 4 << 20, seed=65534)
            digest6 = http6.add_file("blob6.bin", 1 << 20, seed=65535)
            script = (
                "grep -E '^(Uid|Gid|Groups|CapPrm|CapEff|NoNewPrivs):' /proc/self/status; "
                'exec "$@"'
            )
            guest = (
                "echo uid_map=$(cat /proc/self/uid_map | tr -s ' ' ':'); "
                "ip -4 -o addr show tap0; "
                "echo txqlen=$(cat /sys/class/net/tap0/tx_queue_len); "
                "busybox ping -c 1 -W 5 10.0.2.2 >/dev/null && echo ping=ok; "
                f"curl -sS --max-time 60 -o blob.bin {http.url('blob.bin', '10.0.2.2')}; echo curl=$?; "
                "sha256sum blob.bin; "
                f"curl -sS -6 --max-time 60 -o blob6.bin {http6.url('blob6.bin', '[fd00::2]')}; echo curl6=$?; "
                "sha256sum blob6.bin"
            )
            out = _run_as_nobody(ns, ["sh", "-c", script, "sh", sys.executable, "-m", "kboxnet_core", "run",
                                      "--net", "minislirp", "--no-fallback", "--", "sh", "-c", guest],
                                 workdir, 180)
        why = f"exit {out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr[-3000:]}"
        status = {k: v.strip() for k, v in re.findall(r"^(\w+):[ \t]*(.*)$", out.stdout, re.M)}
        # kboxnet ran as nobody, without any capability
        assert status.get("Uid", "").split() == [str(NOBODY)] * 4, why
        assert status.get("Gid", "").split() == [str(NOBODY)] * 4, why
        assert status.get("Groups", "") == "", why
        assert int(status.get("CapEff", "1"), 16) == 0 and int(status.get("CapPrm", "1"), 16) == 0, why
        assert status.get("NoNewPrivs") == "1", why
        assert out.returncode == 0, why
        # the command ran in a user namespace kboxnet created, as root mapped onto nobody
        assert f"uid_map=:0:{NOBODY}:1" in out.stdout, why
        assert "10.0.2.15/24" in out.stdout, why
        assert "txqlen=10000" in out.stdout, why  # set through rtnetlink: the ioctl needs init-namespace root
        assert "ping=ok" in out.stdout, why
        assert "curl=0" in out.stdout and f"{digest}  blob.bin" in out.stdout, why
        assert any("GET /blob.bin" in r and " 200 " in r for r in http.requests), why
        assert "curl6=0" in out.stdout and f"{digest6}  blob6.bin" in out.stdout, why  # IPv6 (SLAAC) too
        assert any(r.startswith("::1 ") and "GET /blob6.bin" in r for r in http6.requests), why
        assert hashlib.sha256((workdir / "blob.bin").read_bytes()).hexdigest() == digest
        assert (workdir / "blob.bin").stat().st_uid == NOBODY  # written by nobody, not by root
    assert _tun_identity() == tun_before, "the real /dev/net/tun was changed"
    assert _dev_net_mounts() == mounts_before, "a mount over /dev/net leaked out of the private namespace"


def test_blocked_directories_names_what_to_re_expose(tmp_path):
    closed = tmp_path / "closed"
    (closed / "inner" / "pkg").mkdir(parents=True)
    (closed / "other").mkdir()
    closed.chmod(0o700)
    (closed / "inner").chmod(0o711)  # traversable, not listable: needs no cover
    tmp_path.chmod(0o755)
    blocked = blocked_directories([closed / "inner" / "pkg"], NOBODY, NOBODY)
    assert blocked[closed] == {"inner"}  # only the needed entry, not "other"
    assert closed / "inner" not in blocked
    os.chown(closed, NOBODY, NOBODY)  # the owner's own bits count for the owner
    assert closed not in blocked_directories([closed / "inner" / "pkg"], NOBODY, NOBODY)


def test_helper_refuses_the_callers_mount_namespace():
    if os.geteuid() != 0:
        pytest.skip("the helper only runs as root")
    mounts_before = _dev_net_mounts()
    out = subprocess.run([sys.executable, "-m", "kboxnet_core.testing.unprivileged", "--", "true"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "private mount namespace" in out.stderr, out.stderr
    assert _dev_net_mounts() == mounts_before

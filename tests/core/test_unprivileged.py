"""``kboxnet run`` as an unprivileged user (inside a user namespace it creates).

Rootless operation needs a /dev/net/tun that the user may open; on machines where the device is
mode 0600 (this project's CI machine, for one) the test is skipped with that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

NOBODY = 65534


def _can(uid: int, path: str, mode: int) -> bool:
    st = os.stat(path)
    bits = (st.st_mode >> 6) & 7 if st.st_uid == uid else st.st_mode & 7
    return bits & mode == mode


@pytest.mark.netns
def test_run_as_nobody_in_a_user_namespace(tmp_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root to switch to an unprivileged user, and setpriv")
    if not _can(NOBODY, "/dev/net/tun", 6):
        pytest.skip("/dev/net/tun is not read-write for an unprivileged user on this machine "
                    f"(mode {oct(os.stat('/dev/net/tun').st_mode & 0o777)}): rootless tap links cannot work here")
    if not os.access(sys.executable, os.X_OK) or not _can(NOBODY, sys.executable, 5):
        pytest.skip(f"{sys.executable} is not executable by an unprivileged user")
    out = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                          sys.executable, "-m", "kboxnet_core", "run", "--net", "arp-responder", "--",
                          "sh", "-c", "id -u; ip -4 -o addr show tap0"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "10.0.2.15/24" in out.stdout

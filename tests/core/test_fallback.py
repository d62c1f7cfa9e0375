"""A failing session is replaced by the next backend on the same guest link."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .test_stream_framing import arp_request, connect, framed, recv_frame


@pytest.mark.parametrize("mode", ["start", "ready", "frames"])
def test_crashy_first_then_arp_responder_serves_the_same_connection(tmp_path, mode):
    cfg = tmp_path / "kboxnet.toml"
    cfg.write_text(f'[net]\nbackends = ["crashy", "arp-responder"]\n[net.crashy]\nenabled = true\nfail = "{mode}"\n')
    path = str(tmp_path / "g.sock")
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "kboxnet_core", "serve", "--socket", path, "--config", str(cfg),
                             "--ready-fd", str(w), "--once"], pass_fds=(w,), stderr=subprocess.PIPE, text=True)
    os.close(w)
    assert os.read(r, 100).startswith(b"READY=1")
    os.close(r)
    with connect(path) as s:
        s.sendall(framed(arp_request()))  # sent while crashy owns the link
        reply = recv_frame(s, timeout=20)
        assert reply[20:22] == b"\x00\x02", "no ARP reply after fallback"
    _, err = proc.communicate(timeout=20)
    assert "falling back from crashy to arp-responder" in err
    assert proc.returncode == 0, err


@pytest.mark.netns
def test_real_guest_gets_service_after_the_first_backend_dies(tmp_path):
    """A real Linux stack (``kboxnet run``'s namespace) behind crashy, then arp-responder.

    crashy dies on the guest's first frame; the supervisor starts arp-responder on the same tap
    and the guest's ARP resolution of the gateway succeeds.
    """
    from .helpers import kboxnet

    cfg = tmp_path / "kboxnet.toml"
    cfg.write_text('[net]\nbackends = ["crashy", "arp-responder"]\n[net.crashy]\nenabled = true\n')
    out = kboxnet("run", "--config", str(cfg), "-v", "--", "busybox", "arping", "-c", "3", "-w", "8",
                  "-I", "tap0", "10.0.2.2")
    assert "falling back from crashy to arp-responder" in out.stderr
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Received" in out.stdout and "Received 0 " not in out.stdout

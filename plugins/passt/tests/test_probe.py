"""probe(): the reasons passt is reported unavailable, and the detection parts."""

from __future__ import annotations

import datetime
import os
import time

import pytest
from conftest import write_script
from kboxnet_passt import detect
from kboxnet_passt.plugin import PasstBackend
from kboxnet_passt.settings import PasstSettings

from kboxnet_core.config import Config
from kboxnet_core.config.model import NetConfig


def config_for(**settings: object) -> Config:
    return Config(net=NetConfig(plugins={"passt": PasstSettings(**settings)}))  # type: ignore[arg-type]


def test_binary_missing(tmp_path):
    av = PasstBackend().probe(config_for(binary=str(tmp_path / "no-such-passt")))
    assert not av.available
    assert "not found" in av.reason
    assert "install passt" in av.hint


def test_binary_missing_from_path(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    av = PasstBackend().probe(config_for(binary="passt"))
    assert not av.available and "'passt' not found" in av.reason


def test_binary_too_old(tmp_path):
    # a passt from before --fd: accepts every option, reports 2022_10_15
    fake = write_script(tmp_path / "passt", 'echo "passt 2022_10_15.b3f0f72"; echo "Copyright Red Hat"; exit 0\n')
    av = PasstBackend().probe(config_for(binary=fake))
    assert not av.available
    assert "too old" in av.reason and "2022-10-15" in av.reason and "2023-02-16" in av.reason
    assert av.version.startswith("2022_10_15")
    assert "2023_02_16" in av.hint


def test_min_version_is_configurable(tmp_path):
    fake = write_script(tmp_path / "passt", 'echo "passt 2023_03_09.7c7625d"; exit 0\n')
    av = PasstBackend().probe(config_for(binary=fake, min_version="2024-01-01", startup_probe=False))
    assert not av.available and "too old" in av.reason


def test_option_missing(tmp_path):
    # recent enough by its version string, but getopt rejects --fd (as a 2022 build would)
    fake = write_script(tmp_path / "passt", (
        'for a in "$@"; do [ "$a" = "--fd" ] && { echo "passt: unrecognized option \'--fd\'" >&2; exit 1; }; done\n'
        'echo "passt 2023_06_03.429e1a7"; exit 0\n'))
    av = PasstBackend().probe(config_for(binary=fake))
    assert not av.available
    assert "lacks required options: fd" in av.reason
    assert av.version == "2023_06_03.429e1a7"


def test_startup_probe_failing(tmp_path, real_passt):
    # answers --version and option probes like the real passt, but dies at start-up
    # the way passt does when it cannot create its user namespace
    fake = write_script(tmp_path / "passt", (
        'for a in "$@"; do [ "$a" = "--version" ] && exec ' + real_passt + ' "$@"; done\n'
        'echo "Couldn\'t create user namespace: No space left on device" >&2\n'
        'exit 1\n'))
    t0 = time.monotonic()
    av = PasstBackend().probe(config_for(binary=fake))
    assert not av.available
    assert "cannot sandbox itself" in av.reason
    assert "Couldn't create user namespace" in av.reason
    assert "user namespaces" in av.hint
    assert time.monotonic() - t0 < 5


def test_startup_probe_no_interface(tmp_path, real_passt):
    fake = write_script(tmp_path / "passt", (
        'for a in "$@"; do [ "$a" = "--version" ] && exec ' + real_passt + ' "$@"; done\n'
        'echo "External interface not usable" >&2; exit 1\n'))
    av = PasstBackend().probe(config_for(binary=fake))
    assert not av.available and "no usable host interface" in av.reason and "local mode" in av.hint


def test_startup_probe_result_is_cached(tmp_path, real_passt):
    counter = tmp_path / "starts"
    fake = write_script(tmp_path / "passt", (
        'for a in "$@"; do [ "$a" = "--version" ] && exec ' + real_passt + ' "$@"; done\n'
        f'echo x >> {counter}\n'
        'echo "Failed to sandbox process, exiting" >&2; exit 1\n'))
    backend = PasstBackend()
    first = backend.probe(config_for(binary=fake))
    second = backend.probe(config_for(binary=fake))
    assert not first.available and first == second
    assert counter.read_text().count("x") == 1


def test_egress_policy_is_refused(real_passt):
    from kboxnet_core.config.model import EgressPolicy, PolicyRule

    net = NetConfig(egress=EgressPolicy(deny=(PolicyRule.parse("10.0.0.0/8"),)),
                    plugins={"passt": PasstSettings(startup_probe=False)})
    av = PasstBackend().probe(Config(net=net))
    assert not av.available and "cannot enforce [net.egress]" in av.reason


@pytest.mark.parametrize("text, date", [
    ("2024_12_11.09478d5", datetime.date(2024, 12, 11)),
    ("0.0~git20230309.7c7625d-1", datetime.date(2023, 3, 9)),
    ("0^20250121.g4f2c8e7-3.el9.x86_64", datetime.date(2025, 1, 21)),
    ("unknown version", None),
    ("git20231399.abc", None),
])
def test_parse_date(text, date):
    assert detect.parse_date(text) == date


def test_real_passt_version_and_options(real_passt):
    info = detect.inspect_binary(real_passt)
    assert not info.error
    assert info.version.date is not None, info.version
    assert not info.missing_required()
    assert info.has("fd") and info.has("dns-forward")
    # an option this passt does not have is reported, not guessed
    import subprocess

    rc = subprocess.run([real_passt, "--map-host-loopback", "none", "--version"],
                        capture_output=True).returncode
    assert info.has("map-host-loopback") == (rc == 0)


def test_unknown_version_falls_back_to_package(tmp_path, real_passt):
    import subprocess

    out = subprocess.run([real_passt, "--version"], capture_output=True, text=True).stdout
    if "unknown version" not in out:
        pytest.skip("this passt reports its version itself")
    info = detect.inspect_binary(real_passt)
    assert info.version.source in ("dpkg", "rpm")


def test_inspect_cache_keyed_by_inode_and_mtime(tmp_path):
    path = tmp_path / "passt"
    write_script(path, 'echo "passt 2023_03_09.7c7625d"; exit 0\n')
    first = detect.inspect_binary(str(path))
    assert detect.inspect_binary(str(path)) is first
    write_script(path, 'echo "passt 2024_12_11.09478d5"; exit 0\n')
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = detect.inspect_binary(str(path))
    assert second.version.date == datetime.date(2024, 12, 11)

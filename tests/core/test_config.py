"""Bad config files give one clear message naming the key, and exit code 2."""

from __future__ import annotations

import pytest

from kboxnet_core.config import ConfigError, parse_config
from kboxnet_core.config.model import EgressPolicy, PolicyRule

from .helpers import kboxnet

CASES = {
    "syntax": ("[net\nmtu = 1500\n", "not valid TOML"),
    "unknown key": ("[net]\nmtuu = 1500\n", "net.mtuu: unknown key (did you mean 'mtu'?)"),
    "unknown table": ("[nett]\n", "nett: unknown key (did you mean 'net'?)"),
    "wrong type": ("[net]\nmtu = \"big\"\n", "net.mtu: bad value 'big'; expected an integer"),
    "out of range": ("[net]\nmtu = 70000\n", "net.mtu: bad value 70000; expected an integer from 576 to 65520"),
    "bad cidr": ("[net.egress]\nallow = [\"10.0.0.0/33\"]\n", "net.egress.allow[0]: bad value '10.0.0.0/33'"),
    "bad address": ("[net.ipv4]\ngateway = \"10.0.2\"\n", "net.ipv4.gateway: bad value '10.0.2'"),
    "bad forward": ("[[net.forward]]\nguest = 80\nhost = \"nope\"\n", "net.forward[0].host"),
    "plugin table": ("[net.crashy]\nenabeld = true\n", "net.crashy.enabeld: unknown key (did you mean 'enabled'?)"),
    "both backend keys": ("[net]\nbackend = \"minislirp\"\nbackends = [\"passt\"]\n", "either net.backend or net.backends"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_config_exits_2_with_one_clear_message(tmp_path, name):
    text, expected = CASES[name]
    path = tmp_path / "kboxnet.toml"
    path.write_text(text)
    out = kboxnet("backends", "--config", str(path))
    assert out.returncode == 2, out
    assert expected in out.stderr
    assert str(path) in out.stderr
    assert out.stderr.count("\n") == 1  # one line, no traceback


def test_config_found_through_env_and_cwd(tmp_path):
    (tmp_path / "kboxnet.toml").write_text("[net]\nmtu = 1\n")
    out = kboxnet("backends", cwd=tmp_path)
    assert out.returncode == 2 and "net.mtu" in out.stderr
    other = tmp_path / "other.toml"
    other.write_text("[net]\nbogus = 1\n")
    out = kboxnet("backends", env={"KBOXNET_CONFIG": str(other)}, cwd="/")
    assert out.returncode == 2 and "net.bogus" in out.stderr


def test_valid_config_round_trip():
    cfg = parse_config({"net": {"mtu": 65520, "dns": ["127.0.0.1:5353", "::1"],
                                "egress": {"allow": ["127.0.0.0/8", "[::1/128]:80-90"], "deny": ["0.0.0.0/0:25"]},
                                "forward": [{"guest": 80, "host": "[::1]:8080"}]}})
    assert cfg.net.mtu == 65520
    assert cfg.net.forward[0].host_port == 8080 and str(cfg.net.forward[0].host_address) == "::1"
    assert str(cfg.net.egress.allow[1]) == "[::1/128]:80-90"


def test_egress_policy_semantics():
    import ipaddress

    pol = EgressPolicy(allow=(PolicyRule.parse("127.0.0.0/8"),), deny=(PolicyRule.parse("127.0.0.1:22"),))
    assert pol.permits(ipaddress.ip_address("127.0.0.1"), 80)
    assert not pol.permits(ipaddress.ip_address("127.0.0.1"), 22)
    assert not pol.permits(ipaddress.ip_address("192.0.2.1"), 80)
    assert EgressPolicy().permits(ipaddress.ip_address("192.0.2.1"), 80)


def test_config_error_is_value_error():
    with pytest.raises(ConfigError):
        parse_config({"net": {"ipv6": {"prefix": "zz"}}})

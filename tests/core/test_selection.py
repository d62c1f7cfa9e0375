"""Selection order: CLI > KBOXNET_BACKEND > config > priority; explicit unavailable is an error."""

from __future__ import annotations

import attrs
import pytest

from kboxnet_core.config import Config, parse_config
from kboxnet_core.ranking import SelectionError, select
from kboxnet_core.registry import Registry

from .helpers import kboxnet


@pytest.fixture(scope="module")
def reg():
    return Registry.discover()


def crashy_config(**net):
    sections = Registry.discover().config_sections()
    return parse_config({"net": {"crashy": {"enabled": True}, **net}}, sections)


def test_auto_picks_highest_priority(reg):
    sel = select(reg, crashy_config())
    assert sel.first.name == "crashy"  # priority 1000 when enabled
    assert "arp-responder" in [c.name for c in sel.candidates]  # fallbacks follow in rank order


def test_cli_beats_env_beats_config(reg, monkeypatch):
    cfg = crashy_config(backend="crashy")
    assert select(reg, cfg).first.name == "crashy"
    monkeypatch.setenv("KBOXNET_BACKEND", "arp-responder")
    assert select(reg, cfg).first.name == "arp-responder"
    monkeypatch.setenv("KBOXNET_BACKEND", "crashy")
    assert select(reg, cfg, cli_choice="arp-responder").first.name == "arp-responder"


def test_config_backends_list_is_ordered_and_exclusive(reg):
    cfg = crashy_config(backends=["arp-responder", "crashy"])
    assert [c.name for c in select(reg, cfg).candidates] == ["arp-responder", "crashy"]


def test_explicit_unavailable_backend_lists_every_backend(reg):
    with pytest.raises(SelectionError) as err:
        select(reg, Config(), cli_choice="crashy")
    text = str(err.value)
    assert "'crashy'" in text and "disabled" in text
    for name in ("arp-responder", "minislirp", "passt", "host-bypass"):
        assert name in text


def test_unknown_backend_is_an_error(reg):
    with pytest.raises(SelectionError, match="unknown backend 'nope'"):
        select(reg, attrs.evolve(Config()), cli_choice="nope")


def test_cli_unavailable_backend_exit_code():
    out = kboxnet("serve", "--socket", "/tmp/kbn-never.sock", "--backend", "crashy")
    assert out.returncode == 3
    assert "crashy" in out.stderr and "arp-responder" in out.stderr

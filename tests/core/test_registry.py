"""Discovery through entry points, broken plugins, duplicates, strict mode."""

from __future__ import annotations

import json
import types
from importlib import metadata

import pytest

from kboxnet_core import hookimpl
from kboxnet_core import registry as registry_mod
from kboxnet_core.availability import Availability
from kboxnet_core.backend import Backend
from kboxnet_core.config import Config
from kboxnet_core.ranking import rank
from kboxnet_core.registry import Registry, RegistryError

from .helpers import kboxnet


def test_backends_json_lists_every_installed_backend():
    out = kboxnet("backends", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    # the three in-repo plugins and the test-only third-party distribution
    assert {"passt", "minislirp", "host-bypass", "arp-responder", "crashy"} <= set(rows)
    assert rows["arp-responder"]["distribution"] == "kboxnet-testbackends"
    assert rows["crashy"]["available"] is False and "enabled = true" in rows["crashy"]["hint"]
    for row in rows.values():
        assert row["reason"], f"{row['name']} has no reason"


def test_version_lists_plugins():
    out = kboxnet("--version")
    assert out.returncode == 0
    assert "kboxnet-testbackends" in out.stdout and "kboxnet-minislirp" in out.stdout


class _Broken(Backend):
    name = "broken-probe"

    def probe(self, config):
        raise RuntimeError("boom in probe")


def _module(**attrs):
    return types.SimpleNamespace(**attrs)


def test_probe_that_raises_is_unavailable_with_reason():
    mod = _module(kboxnet_register_backends=hookimpl(lambda: [_Broken]))
    reg = Registry.discover(extra=[("broken-probe-plugin", mod)])
    row = {r.name: r for r in rank(reg, Config())}["broken-probe"]
    assert not row.availability.available
    assert "boom in probe" in row.availability.reason


def _fake_eps(monkeypatch, *eps):
    real = registry_mod._entry_points
    monkeypatch.setattr(registry_mod, "_entry_points", lambda: [*real(), *eps])


def test_plugin_that_fails_to_import_is_listed_not_fatal(monkeypatch):
    ep = metadata.EntryPoint(name="ghost", value="kboxnet_no_such_module.plugin", group="kboxnet.backends")
    _fake_eps(monkeypatch, ep)
    reg = Registry.discover(strict=False)
    entry = reg.get("ghost")
    assert entry is not None and entry.backend is None
    assert "ModuleNotFoundError" in entry.error
    assert "arp-responder" in {b.name for b in reg.backends()}  # the rest still works
    row = {r.name: r for r in rank(reg, Config())}["ghost"]
    assert not row.availability.available and "kboxnet_no_such_module" in row.availability.reason


def test_strict_mode_reraises(monkeypatch):
    ep = metadata.EntryPoint(name="ghost", value="kboxnet_no_such_module.plugin", group="kboxnet.backends")
    _fake_eps(monkeypatch, ep)
    monkeypatch.setenv("KBOXNET_STRICT_PLUGINS", "1")
    with pytest.raises(RegistryError, match="ghost"):
        Registry.discover()


class _Dup(Backend):
    name = "arp-responder"

    def probe(self, config):
        return Availability.yes(5)


def test_duplicate_backend_names_name_both_distributions():
    mod = _module(kboxnet_register_backends=hookimpl(lambda: [_Dup]))
    reg = Registry.discover(extra=[("dup-plugin", mod)])
    entry = reg.get("arp-responder")
    assert "duplicate backend name" in entry.error
    assert "kboxnet-testbackends" in entry.error and "(in-process)" in entry.error
    with pytest.raises(RegistryError, match="duplicate"):
        Registry.discover(strict=True, extra=[("dup-plugin", mod)])

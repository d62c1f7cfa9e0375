"""Finding, parsing and validating the TOML configuration file.

Search order: ``--config``, ``KBOXNET_CONFIG``, ``./kboxnet.toml``, then
``$XDG_CONFIG_HOME/kboxnet/kboxnet.toml`` (``~/.config`` by default). Every
error names the key path, the bad value and what is allowed; unknown keys
are errors with a did-you-mean.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from .errors import ConfigError, did_you_mean
from .model import (
    Config,
    Forward,
    NetConfig,
    PolicyRule,
    parse_hostport,
    parse_resolver,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "kboxnet.toml"

#: extra validation for string fields, by (class, field)
_STRING_CHECKS: dict[tuple[type, str], tuple[Any, str]] = {
    (Forward, "host"): (parse_hostport, "PORT, ADDR:PORT or [V6ADDR]:PORT"),
}


def find_config_file(explicit: str | None = None) -> Path | None:
    """The config file to use, or None for built-in defaults."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("KBOXNET_CONFIG")
    if env:
        return Path(env)
    local = Path.cwd() / CONFIG_NAME
    if local.is_file():
        return local
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = Path(xdg) / "kboxnet" / CONFIG_NAME
    if user.is_file():
        return user
    return None


def load_config(explicit: str | None = None, sections: Mapping[str, type] | None = None) -> Config:
    """Find, read and validate the configuration (defaults when there is no file)."""
    path = find_config_file(explicit)
    if path is None:
        return Config()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", source=str(path)) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from exc
    return parse_config(data, sections or {}, source=str(path))


def parse_config(data: Mapping[str, Any], sections: Mapping[str, type] | None = None,
                 source: str = "") -> Config:
    """Validate a parsed TOML document into a :class:`Config`."""
    sections = dict(sections or {})
    _check_keys(data, {"net"}, "", source)
    net_data = dict(data.get("net", {}))
    if not isinstance(data.get("net", {}), dict):
        raise ConfigError("must be a table ([net])", key="net", source=source)
    plugin_tables = {}
    known = {f.name for f in attrs.fields(NetConfig) if not f.metadata.get("internal")}
    for key in list(net_data):
        if key in sections and key not in known:
            plugin_tables[key] = net_data.pop(key)
    net = _structure(NetConfig, net_data, "net", source, extra_known=set(sections))
    if net.backend != "auto" and net.backends:
        raise ConfigError("set either net.backend or net.backends, not both", key="net.backends", source=source)
    plugins = {}
    for name, table in plugin_tables.items():
        plugins[name] = _structure(sections[name], table, f"net.{name}", source)
    return Config(net=attrs.evolve(net, plugins=plugins), source=source)


def _check_keys(data: Mapping[str, Any], allowed: set[str], path: str, source: str) -> None:
    for key in data:
        if key not in allowed:
            full = f"{path}.{key}" if path else key
            choices = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"unknown key{did_you_mean(key, allowed)}; allowed here: {choices}",
                              key=full, source=source)


def _structure(cls: type, data: Any, path: str, source: str, extra_known: set[str] | None = None) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"must be a table, got {_show(data)}", key=path, source=source)
    attrs.resolve_types(cls)
    fields = {f.name: f for f in attrs.fields(cls) if not f.metadata.get("internal")}
    _check_keys(data, set(fields) | (extra_known or set()), path, source)
    kwargs = {}
    for name, value in data.items():
        field = fields[name]
        kwargs[name] = _convert(field.type, value, f"{path}.{name}", source, field.metadata, (cls, name))
    missing = [n for n, f in fields.items() if f.default is attrs.NOTHING and n not in kwargs]
    if missing:
        raise ConfigError(f"required key missing: {missing[0]}", key=f"{path}.{missing[0]}", source=source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), key=path, source=source) from exc


_ADDR_TYPES = {
    ipaddress.IPv4Address: "an IPv4 address such as 10.0.2.15",
    ipaddress.IPv6Address: "an IPv6 address such as fd00::15",
    ipaddress.IPv4Network: "an IPv4 network such as 10.0.0.0/8",
    ipaddress.IPv6Network: "an IPv6 prefix such as fd00::/64",
}


def _convert(tp: Any, value: Any, path: str, source: str, meta: Mapping[str, Any],
             owner: tuple[type, str]) -> Any:
    def bad(allowed: str) -> ConfigError:
        return ConfigError(f"bad value {_show(value)}; expected {allowed}", key=path, source=source)

    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        lo, hi = meta.get("range", (None, None))
        if lo is not None and not lo <= value <= hi:
            raise bad(f"an integer from {lo} to {hi}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        lo, hi = meta.get("range", (None, None))
        if lo is not None and not lo <= value <= hi:
            raise bad(f"a number from {lo} to {hi}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise bad("one of " + ", ".join(repr(c) for c in choices))
        check = _STRING_CHECKS.get(owner)
        if check is not None:
            try:
                check[0](value)
            except ValueError as exc:
                raise bad(check[1] + f" ({exc})") from exc
        return value
    if tp in _ADDR_TYPES:
        if not isinstance(value, str):
            raise bad(_ADDR_TYPES[tp])
        try:
            return tp(value) if tp in (ipaddress.IPv4Address, ipaddress.IPv6Address) else tp(value, strict=False)
        except ValueError as exc:
            raise bad(_ADDR_TYPES[tp]) from exc
    if tp is PolicyRule:
        if not isinstance(value, str):
            raise bad('a rule string such as "10.0.0.0/8", "0.0.0.0/0:443" or "[::/0]:80-90"')
        try:
            return PolicyRule.parse(value)
        except ValueError as exc:
            raise bad(f'a CIDR with optional :PORT or :LOW-HIGH ({exc})') from exc
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad("a list")
        out = tuple(_convert(args[0], v, f"{path}[{i}]", source, meta, owner) for i, v in enumerate(value))
        if owner == (NetConfig, "dns"):
            for i, v in enumerate(out):
                try:
                    parse_resolver(v)
                except ValueError as exc:
                    raise ConfigError(f"bad value {v!r}; expected ADDR, ADDR:PORT or [V6ADDR]:PORT",
                                      key=f"{path}[{i}]", source=source) from exc
        return out
    if attrs.has(tp):
        return _structure(tp, value, path, source)
    raise ConfigError(f"unsupported type {tp!r} for this key", key=path, source=source)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


__all__ = [
    "CONFIG_NAME",
    "find_config_file",
    "load_config",
    "parse_config",
]

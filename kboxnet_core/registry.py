"""Plugin discovery and the backend registry.

Backends arrive through the entry-point group ``kboxnet.backends`` (built-in
and third-party alike: the core never imports a backend by name). A plugin
whose import or registration fails is recorded with the error as its reason
and never breaks the CLI; ``KBOXNET_STRICT_PLUGINS=1`` re-raises instead, for
plugin authors.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from importlib import metadata

import attrs
import pluggy

from . import hookspecs
from .backend import Backend
from .plugin import ENTRY_POINT_GROUP, PROJECT_NAME

log = logging.getLogger(__name__)


class RegistryError(RuntimeError):
    """Plugin loading failed in strict mode, or the registry is inconsistent."""


@attrs.define
class PluginRecord:
    """One entry point of group ``kboxnet.backends``."""

    name: str
    distribution: str
    version: str
    error: str = ""


@attrs.define
class BackendEntry:
    """A registered backend (or a placeholder for a plugin that failed to load).

    ``backend`` is None when ``error`` is set by a load failure.
    """

    name: str
    plugin: PluginRecord
    backend: Backend | None = None
    error: str = ""

    @property
    def distribution(self) -> str:
        return self.plugin.distribution


def strict_plugins() -> bool:
    return os.environ.get("KBOXNET_STRICT_PLUGINS", "") not in ("", "0", "no", "false")


@attrs.define
class Registry:
    """The plugin manager plus every known backend, by name."""

    pm: pluggy.PluginManager
    plugins: list[PluginRecord] = attrs.field(factory=list)
    entries: dict[str, BackendEntry] = attrs.field(factory=dict)

    @classmethod
    def discover(cls, *, strict: bool | None = None, extra: Iterable[tuple[str, object]] = ()) -> Registry:
        """Load every plugin of the entry-point group (plus ``extra`` (name, module) pairs)."""
        strict = strict_plugins() if strict is None else strict
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        reg = cls(pm)
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            record = PluginRecord(
                ep.name,
                dist.metadata["Name"] if dist is not None else "?",
                dist.version if dist is not None else "?",
            )
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the CLI
                if strict:
                    raise RegistryError(f"plugin {ep.name!r} ({record.distribution}) failed to load: {exc}") from exc
                record.error = f"import failed: {type(exc).__name__}: {exc}"
                log.debug("plugin %s failed to load", ep.name, exc_info=True)
            reg.plugins.append(record)
        for name, module in extra:
            pm.register(module, name=name)
            reg.plugins.append(PluginRecord(name, "(in-process)", ""))
        reg._collect(strict)
        return reg

    def _collect(self, strict: bool) -> None:
        by_name = {p.name: p for p in self.plugins}
        for record in self.plugins:
            if record.error:
                self.entries.setdefault(record.name, BackendEntry(record.name, record, error=record.error))
        for impl in self.pm.hook.kboxnet_register_backends.get_hookimpls():
            record = by_name.get(impl.plugin_name) or PluginRecord(impl.plugin_name, "?", "?")
            try:
                classes = impl.function() or []
                backends = [klass() for klass in classes]
            except Exception as exc:  # noqa: BLE001
                if strict:
                    raise RegistryError(f"plugin {record.name!r} ({record.distribution}) failed to register: {exc}") from exc
                record.error = f"registration failed: {type(exc).__name__}: {exc}"
                self.entries.setdefault(record.name, BackendEntry(record.name, record, error=record.error))
                continue
            for backend in backends:
                self._add(BackendEntry(backend.name, record, backend), strict)

    def _add(self, entry: BackendEntry, strict: bool) -> None:
        other = self.entries.get(entry.name)
        if other is not None and other.backend is not None:
            message = (f"duplicate backend name {entry.name!r}: provided by {other.distribution} "
                       f"and by {entry.distribution}; uninstall one of them")
            if strict:
                raise RegistryError(message)
            log.error("%s", message)
            other.error = entry.error = message
            return
        self.entries[entry.name] = entry

    def backends(self) -> list[Backend]:
        return [e.backend for e in self.entries.values() if e.backend is not None and not e.error]

    def get(self, name: str) -> BackendEntry | None:
        return self.entries.get(name)

    def config_sections(self) -> dict[str, type]:
        """``[net.<section>]`` tables owned by backends, section -> attrs model."""
        sections: dict[str, type] = {}
        for backend in self.backends():
            if backend.config_section and backend.config_model is not None:
                sections[backend.config_section] = backend.config_model
        return sections


def _entry_points() -> list[metadata.EntryPoint]:
    eps = metadata.entry_points()
    if hasattr(eps, "select"):
        found = list(eps.select(group=ENTRY_POINT_GROUP))
    else:  # pragma: no cover - Python < 3.10
        found = list(eps.get(ENTRY_POINT_GROUP, []))
    seen: set[tuple[str, str]] = set()
    unique = []
    for ep in found:  # the same dist can be visible twice (editable + path entries)
        key = (ep.name, ep.value)
        if key not in seen:
            seen.add(key)
            unique.append(ep)
    return unique

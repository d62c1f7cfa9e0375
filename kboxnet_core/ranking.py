"""Ranking backends by availability and choosing which one serves a guest.

Selection order: CLI flag > ``KBOXNET_BACKEND`` > config file (``backend`` or
an ordered ``backends`` list) > highest available priority. A backend named
explicitly that is unavailable is an error listing every backend with its
reason; during auto-selection it is a skip with a logged reason.
"""

from __future__ import annotations

import logging
import os

import attrs

from .availability import Availability
from .backend import Backend, BackendKind
from .config import Config
from .registry import BackendEntry, Registry

log = logging.getLogger(__name__)

AUTO = "auto"


class SelectionError(RuntimeError):
    """No usable backend, or an explicitly named backend is unusable."""


@attrs.frozen
class Ranked:
    """A backend with its probe result, in rank order."""

    entry: BackendEntry
    availability: Availability

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def backend(self) -> Backend | None:
        return self.entry.backend

    def as_dict(self) -> dict[str, object]:
        backend = self.backend
        return {
            "name": self.name,
            "available": self.availability.available,
            "priority": self.availability.priority,
            "version": self.availability.version,
            "reason": self.availability.reason,
            "hint": self.availability.hint,
            "distribution": self.entry.distribution,
            "distribution_version": self.entry.plugin.version,
            "kind": backend.kind.value if backend else "",
            "auto_select": backend.auto_select if backend else False,
            "description": backend.description if backend else "",
        }


def probe(entry: BackendEntry, config: Config, registry: Registry | None = None) -> Availability:
    """Probe one backend; errors (load failures, a raising probe) become reasons."""
    if entry.error or entry.backend is None:
        return Availability.no(entry.error or "not loaded",
                               hint=f"reinstall {entry.distribution} or uninstall it")
    try:
        result = entry.backend.probe(config)
        if not isinstance(result, Availability):
            raise TypeError(f"probe() returned {type(result).__name__}, not Availability")
    except Exception as exc:  # noqa: BLE001 - probe must never take the CLI down
        result = Availability.no(f"probe failed: {type(exc).__name__}: {exc}",
                                 hint=f"report this to the maintainers of {entry.distribution}")
    if registry is not None:
        registry.pm.hook.kboxnet_backend_probed(backend=entry.backend, availability=result)
    return result


def rank(registry: Registry, config: Config) -> list[Ranked]:
    """Every backend, available ones first, by priority, then by name."""
    ranked = [Ranked(entry, probe(entry, config, registry)) for entry in registry.entries.values()]
    ranked.sort(key=lambda r: (not r.availability.available, -r.availability.priority, r.name))
    return ranked


def describe_all(ranked: list[Ranked]) -> str:
    lines = []
    for r in ranked:
        state = "available" if r.availability.available else "unavailable"
        hint = f" (hint: {r.availability.hint})" if r.availability.hint and not r.availability.available else ""
        lines.append(f"  {r.name:<12} {state:<11} {r.availability.reason}{hint}")
    return "\n".join(lines)


@attrs.frozen
class Selection:
    """The ordered backends to try on a link; ``origin`` says who chose."""

    candidates: tuple[Ranked, ...]
    origin: str
    ranked: tuple[Ranked, ...]

    @property
    def first(self) -> Ranked:
        return self.candidates[0]


def requested_names(config: Config, cli_choice: str | None) -> tuple[list[str], str]:
    """The explicit backend names, in order, and where they came from."""
    if cli_choice and cli_choice != AUTO:
        return [cli_choice], "command line"
    env = os.environ.get("KBOXNET_BACKEND", "").strip()
    if env and env != AUTO:
        return [n.strip() for n in env.split(",") if n.strip()], "KBOXNET_BACKEND"
    if config.net.backends:
        return list(config.net.backends), f"config key net.backends ({config.source or 'defaults'})"
    if config.net.backend and config.net.backend != AUTO:
        return [config.net.backend], f"config key net.backend ({config.source or 'defaults'})"
    return [], "auto"


def select(registry: Registry, config: Config, cli_choice: str | None = None,
           kind: BackendKind = BackendKind.FRAME, link_kind: str | None = None,
           fallback: bool = True) -> Selection:
    """Choose the backends to try, in order (the first one, then fallbacks)."""
    ranked = rank(registry, config)
    by_name = {r.name: r for r in ranked}
    names, origin = requested_names(config, cli_choice)

    def usable(r: Ranked) -> bool:
        b = r.backend
        return (r.availability.available and b is not None and b.kind is kind
                and (link_kind is None or link_kind in b.link_kinds))

    chosen: list[Ranked] = []
    for name in names:
        r = by_name.get(name)
        if r is None:
            raise SelectionError(f"unknown backend {name!r} (from {origin}); installed backends:\n"
                                 + describe_all(ranked))
        if r.backend is not None and r.backend.kind is not kind:
            continue  # e.g. host-bypass named for `run`: the caller handles command backends
        if not usable(r):
            why = r.availability.reason if not r.availability.available else f"cannot serve a {link_kind} link"
            if len(names) == 1:
                raise SelectionError(f"backend {name!r} (from {origin}) is unavailable: {why}\n"
                                     "all backends:\n" + describe_all(ranked))
            log.info("skipping backend %s: %s", name, why)
            continue
        chosen.append(r)
    if names and not chosen and any(by_name[n].backend is not None and by_name[n].backend.kind is kind
                                    for n in names if n in by_name):
        raise SelectionError(f"none of the backends {names} (from {origin}) is available:\n"
                             + describe_all(ranked))
    explicit_list = bool(names) and origin.startswith("config key net.backends")
    if fallback and not explicit_list:
        for r in ranked:
            if r not in chosen and usable(r) and r.backend is not None and r.backend.auto_select:
                chosen.append(r)
    for r in ranked:
        if not r.availability.available:
            log.debug("backend %s unavailable: %s", r.name, r.availability.reason)
    if not chosen:
        raise SelectionError("no available backend; installed backends:\n" + describe_all(ranked))
    return Selection(tuple(chosen), origin if names else "auto (highest available priority)", tuple(ranked))

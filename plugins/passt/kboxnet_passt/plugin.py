"""Entry point of kboxnet-passt: the ``passt`` backend."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence

from kboxnet_core import hookimpl
from kboxnet_core.availability import Availability
from kboxnet_core.backend import Backend, Session, SessionContext
from kboxnet_core.config import Config
from kboxnet_core.links.base import Link

from .detect import BinaryInfo, inspect_binary, resolve_binary
from .fixups import Fixups
from .plan import Plan, build_plan
from .quirks import Quirks, quirks_for
from .session import PasstSession
from .settings import PasstSettings
from .startup import cached_startup_probe, run_startup_probe

log = logging.getLogger(__name__)

PRIORITY = 100
INSTALL_HINT = "install passt (apt-get install passt / dnf install passt) or set [net.passt] binary"


def base_argv(settings: PasstSettings, path: str, fd: int, plan: Plan) -> list[str]:
    """The full passt command line for a session on ``fd``."""
    return [*settings.wrapper, path, "--foreground", "--stderr", "--quiet", "--fd", str(fd),
            *plan.args, *settings.extra_args]


class PasstBackend(Backend):
    name = "passt"
    description = "passt (external, sandboxed, no Python on the data path for stream links)"
    config_section = "passt"
    config_model = PasstSettings
    link_kinds = frozenset({"stream", "tap"})

    # -- probing ------------------------------------------------------------------
    def probe(self, config: Config) -> Availability:
        try:
            return self._probe(config)
        except Exception as exc:  # noqa: BLE001 - probe() must never raise
            log.exception("passt probe failed")
            return Availability.no(f"passt probe error: {type(exc).__name__}: {exc}")

    def _inspect(self, settings: PasstSettings) -> tuple[BinaryInfo | None, Availability | None]:
        path = resolve_binary(settings.binary)
        if path is None:
            return None, Availability.no(f"passt binary {settings.binary!r} not found", INSTALL_HINT)
        info = inspect_binary(path)
        if info.error:
            return None, Availability.no(f"passt at {path} does not run: {info.error}", INSTALL_HINT)
        version = str(info.version)
        try:
            minimum = datetime.date.fromisoformat(settings.min_version)
        except ValueError:
            return None, Availability.no(f"[net.passt] min_version {settings.min_version!r} is not YYYY-MM-DD")
        if info.version.date is not None and info.version.date < minimum:
            return None, Availability.no(
                f"passt {version} at {path} is too old (released {info.version.date}, need {minimum} or later)",
                f"install a passt released on or after {minimum} (the first with --fd is 2023_02_16)",
                version=version)
        missing = info.missing_required()
        if missing:
            return None, Availability.no(
                f"passt {version} at {path} lacks required options: {', '.join(missing)}",
                "install a newer passt (these options exist since 2023_02_16)", version=version)
        return info, None

    def _probe(self, config: Config) -> Availability:
        settings: PasstSettings = self.section(config)
        info, refusal = self._inspect(settings)
        if refusal is not None:
            return refusal
        assert info is not None
        version = str(info.version)
        quirks = quirks_for(info)
        plan = build_plan(config, info, quirks, relay=True, fixups=settings.fixups)
        if plan.problems:
            return Availability.no("; ".join(plan.problems),
                                   "change the configuration, or use minislirp", version=version)
        if settings.startup_probe:
            argv = self._argv_factory(settings, info.path, plan)
            key = (info.path, info.key, tuple(argv(3)))
            result = cached_startup_probe(key, lambda: run_startup_probe(
                argv, config.net.ipv4.gateway, config.net.ipv4.address))
            if not result.ok:
                return Availability.no(result.reason, result.hint, version=version)
            notes = result.notes if plan.ipv6 else ()
        else:
            notes = ()
        reason = f"passt {version} at {info.path}"
        if plan.quirks.any:
            reason += "; old build, repaired in the relay: " + ", ".join(plan.quirks.describe())
        for note in notes:
            reason += f"; {note}"
        return Availability.yes(PRIORITY, reason, version=version)

    @staticmethod
    def _argv_factory(settings: PasstSettings, path: str, plan: Plan):
        def argv(fd: int) -> Sequence[str]:
            return base_argv(settings, path, fd, plan)

        return argv

    # -- sessions -----------------------------------------------------------------
    def choose_mode(self, link: Link, ctx: SessionContext, settings: PasstSettings, quirks: Quirks) -> str:
        if link.kind == "tap":
            if settings.mode == "pasta":
                if ctx.netns is None:
                    log.warning("passt: mode 'pasta' needs a namespace link (kboxnet run); using the relay")
                elif quirks.any and settings.fixups == "auto":
                    log.warning("passt: this old build needs repairs that pasta mode cannot make "
                                "(%s); using the relay (set fixups = \"off\" to force pasta)",
                                ", ".join(quirks.describe()))
                else:
                    return "pasta"
            return "relay"
        if quirks.any and settings.fixups == "auto":
            return "relay"
        if not hasattr(link, "socket"):
            return "relay"
        pending = link.pending_bytes() > 0
        partial = bool(getattr(link, "has_partial_input", lambda: False)())
        if pending or partial:
            log.info("passt: link has buffered data from the previous backend; relaying it")
            return "relay"
        return "direct"

    def open(self, link: Link, ctx: SessionContext) -> Session:
        if link.vnet_hdr:
            raise ValueError("passt does not take virtio-net headers; open the tap without vnet_hdr")
        settings: PasstSettings = self.section(ctx.config)
        info, refusal = self._inspect(settings)
        if refusal is not None:
            raise RuntimeError(refusal.reason)
        assert info is not None
        quirks = quirks_for(info)
        mode = self.choose_mode(link, ctx, settings, quirks)
        plan = build_plan(ctx.config, info, quirks, relay=mode == "relay", fixups=settings.fixups)
        if plan.problems:
            raise RuntimeError("; ".join(plan.problems))
        for warning in plan.warnings:
            log.warning("passt: %s", warning)
        if mode == "pasta":
            from .pasta import PastaSession

            return PastaSession(link, ctx, settings, info, plan)
        net = ctx.config.net
        fixups = None
        if plan.relay_fixups:
            v6 = net.ipv6 if plan.ipv6 else None
            fixups = Fixups(net.ipv4.gateway, net.ipv4.dns, v6.gateway if v6 else None, v6.dns if v6 else None)
            log.info("passt %s: repairing in the relay: %s", info.version, ", ".join(plan.quirks.describe()))
        guest_mtu = plan.mtu if mode == "relay" and link.kind == "tap" else None
        return PasstSession(link, ctx, self._argv_factory(settings, info.path, plan), mode, fixups,
                            settings.ready_timeout, guest_mtu, ipv6=plan.ipv6)


@hookimpl
def kboxnet_register_backends():
    return [PasstBackend]


@hookimpl
def kboxnet_doctor_checks(config):
    """``kboxnet doctor``: is a usable passt installed (binary, version, options, start-up)?"""
    from kboxnet_core.doctor import Check

    found = PasstBackend().probe(config)
    return [Check("passt", found.available, found.reason,
                  found.hint or ("" if found.available else "apt-get install passt"))]

"""Entry point of kboxnet-bypass: registers the host-bypass backend."""

from __future__ import annotations

from kboxnet_core import hookimpl
from kboxnet_core.availability import Availability
from kboxnet_core.backend import CommandBackend, SessionContext

from .config import BypassConfig
from .probe import safe_probe
from .runner import HostBypassRunner
from .supervisor import SupervisorSettings


def own_networks(config) -> tuple[str, ...]:  # noqa: ANN001 - kboxnet_core Config
    """The namespace's own networks from the guest profile (what ``auto`` denies)."""
    net = config.net
    nets = [str(net.ipv4.network)]
    if net.ipv6.enabled:
        nets.append(f"[{net.ipv6.prefix}]")
    return tuple(nets)


class HostBypassBackend(CommandBackend):
    """Switches eligible TCP connect()s of ``kboxnet run``'s command to host sockets."""

    name = "host-bypass"
    description = "seccomp socket switching: eligible TCP connects use host sockets (opt-in)"
    config_section = "bypass"
    config_model = BypassConfig

    def probe(self, config) -> Availability:  # noqa: ANN001
        return safe_probe()

    def settings(self, config) -> SupervisorSettings:  # noqa: ANN001
        section: BypassConfig = self.section(config)
        return SupervisorSettings(
            policy=section.policy(own_networks(config)),
            connect_timeout=section.connect_timeout,
            epoll_rearm=section.epoll_rearm,
            log_connections=section.log_connections,
        )

    def runner(self, ctx: SessionContext) -> HostBypassRunner:
        return HostBypassRunner(self.settings(ctx.config))


@hookimpl
def kboxnet_register_backends():
    return [HostBypassBackend]

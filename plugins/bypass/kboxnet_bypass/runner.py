"""``HostBypassRunner``: the CommandRunner that starts ``kboxnet run``'s command under bypass."""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Mapping

from kboxnet_core.backend import CommandRunner, NetnsTarget

from . import abi, sockstate
from .bpf import build_filter
from .launcher import launch
from .supervisor import SandboxFacts, Supervisor, SupervisorSettings


def host_netns_cookie() -> int:
    """SO_NETNS_COOKIE of the namespace this process (the supervisor) lives in."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return abi.netns_cookie(s.fileno())


class HostBypassRunner(CommandRunner):
    """Spawns commands under the bypass filter, one supervisor thread per spawned command."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self.settings = settings
        self._prog = build_filter()
        self._supervisors: list[Supervisor] = []

    def spawn(self, argv: list[str], netns: NetnsTarget, env: Mapping[str, str]) -> int:
        launched = launch(argv, netns, env, self._prog)
        try:
            pristine = {socket.AF_INET: sockstate.snapshot(launched.probe4, socket.AF_INET)}
            if launched.probe6 is not None:
                pristine[socket.AF_INET6] = sockstate.snapshot(launched.probe6, socket.AF_INET6)
            facts = SandboxFacts(host_netns_cookie(), abi.netns_cookie(launched.probe4), pristine)
        finally:
            os.close(launched.probe4)
            if launched.probe6 is not None:
                os.close(launched.probe6)
        sup = Supervisor(launched.listener, facts, self.settings)
        sup.start()
        self._supervisors.append(sup)
        return launched.pid

    def close(self) -> None:
        for sup in self._supervisors:
            sup.stop()
        for sup in self._supervisors:
            sup.join(5)

    def counters(self) -> Mapping[str, int]:
        total: Counter[str] = Counter()
        for sup in self._supervisors:
            total.update(sup.counters())
        return dict(total)

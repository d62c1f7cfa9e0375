"""Entry point of kboxnet-bypass: registers the host-bypass backend."""

from __future__ import annotations

from kboxnet_core import hookimpl
from kboxnet_core.availability import Availability
from kboxnet_core.backend import Backend


class HostBypassBackend(Backend):
    name = "host-bypass"
    description = "host-bypass backend"

    def probe(self, config):
        return Availability.no("not implemented yet")


@hookimpl
def kboxnet_register_backends():
    return [HostBypassBackend]

"""Entry point of kboxnet-minislirp: registers the minislirp backend."""

from __future__ import annotations

from kboxnet_core import hookimpl
from kboxnet_core.availability import Availability
from kboxnet_core.backend import Backend


class MinislirpBackend(Backend):
    name = "minislirp"
    description = "minislirp backend"

    def probe(self, config):
        return Availability.no("not implemented yet")


@hookimpl
def kboxnet_register_backends():
    return [MinislirpBackend]

"""The pluggy markers shared by the core and every plugin.

A plugin module implements hooks with ``@kboxnet_core.hookimpl``; the specs
live in :mod:`kboxnet_core.hookspecs`.
"""

import pluggy

PROJECT_NAME = "kboxnet"
ENTRY_POINT_GROUP = "kboxnet.backends"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

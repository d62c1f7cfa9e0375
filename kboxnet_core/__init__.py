"""kboxnet core: pluggable user-mode networking backends for sandboxes and VMs.

The core defines the plugin interface (:mod:`kboxnet_core.hookspecs`,
:mod:`kboxnet_core.backend`), discovers backends through the entry-point group
``kboxnet.backends``, ranks them, reads the TOML configuration, owns the guest
links and supervises sessions. It never imports a backend by name.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kboxnet")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0+unknown"

from .plugin import hookimpl  # noqa: E402

__all__ = ["__version__", "hookimpl"]

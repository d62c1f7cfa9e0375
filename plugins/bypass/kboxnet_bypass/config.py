"""``[net.bypass]``: the host-bypass settings."""

from __future__ import annotations

from typing import Any

import attrs

from .policy import AUTO, DEFAULT_DENY, BypassPolicy, parse_rules


def _rules_valid(_inst: Any, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    for text in value:
        if not isinstance(text, str):
            raise TypeError(f"{attribute.name}: rules are strings, got {text!r}")
        try:
            parse_rules([text], auto=())
        except ValueError as exc:
            raise ValueError(f"{attribute.name}: {exc}") from None


@attrs.frozen
class BypassConfig:
    """``[net.bypass]``.

    :ivar allow: destinations switched to host sockets (empty: all not denied).
    :ivar deny: destinations that stay on the namespace's own stack; wins over
        ``allow``. ``"auto"`` means the namespace's own networks (the guest
        profile). Default: loopback, unspecified, link-local, ``auto``.
    :ivar frame_backend: the frame backend serving the namespace stack ("auto").
    :ivar connect_timeout: limit (s) for a blocking connect without SO_SNDTIMEO.
    :ivar epoll_rearm: move epoll registrations made before connect() to the new socket.
    :ivar log_connections: one INFO log line per decided connect().
    """

    allow: tuple[str, ...] = attrs.field(default=(), converter=tuple, validator=_rules_valid)
    deny: tuple[str, ...] = attrs.field(default=DEFAULT_DENY, converter=tuple, validator=_rules_valid)
    frame_backend: str = "auto"
    connect_timeout: float = attrs.field(default=120.0, metadata={"range": (0.1, 3600.0)})
    epoll_rearm: bool = True
    log_connections: bool = True

    def policy(self, own_networks: tuple[str, ...] = ()) -> BypassPolicy:
        """The compiled policy; ``own_networks`` replaces ``auto``."""
        return BypassPolicy(parse_rules(self.allow, own_networks), parse_rules(self.deny, own_networks))


__all__ = ["AUTO", "BypassConfig"]

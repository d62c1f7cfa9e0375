"""Per-protocol and per-drop-reason counters of a session."""

from __future__ import annotations

from collections import Counter


class Counters(Counter):
    """A :class:`collections.Counter` with naming helpers.

    Keys are ``"<proto>.<what>"`` (``tcp.frames_in``, ``udp.flows``) and
    ``"drop.<reason>"`` for frames that were dropped.
    """

    def drop(self, reason: str) -> None:
        self["drop." + reason] += 1

    def summary(self) -> str:
        """One line, sorted by key, zero counters left out."""
        return " ".join(f"{k}={v}" for k, v in sorted(self.items()) if v)

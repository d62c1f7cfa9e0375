"""Availability: the value a backend's ``probe()`` returns.

Availability is a value, never an exception: the reason a backend cannot run
is kept and shown to the user (``kboxnet backends``), together with a hint
that says how to fix it.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Availability:
    """Whether a backend can run here, and how much it should be preferred.

    :ivar available: the backend can serve a guest on this machine now.
    :ivar priority: higher wins during auto-selection (passt 100, minislirp 50).
    :ivar reason: one line saying why (also filled in when available).
    :ivar hint: what the user can do to make an unavailable backend usable.
    :ivar version: version of the backend or of the program it drives.
    """

    available: bool
    priority: int = 0
    reason: str = ""
    hint: str = ""
    version: str = ""

    @classmethod
    def yes(cls, priority: int, reason: str = "ready", version: str = "") -> Availability:
        return cls(True, priority, reason, "", version)

    @classmethod
    def no(cls, reason: str, hint: str = "", priority: int = 0, version: str = "") -> Availability:
        return cls(False, priority, reason, hint, version)

    def as_dict(self) -> dict[str, object]:
        return attrs.asdict(self)

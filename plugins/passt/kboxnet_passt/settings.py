"""``[net.passt]``: the passt backend's own settings (validated by the core's loader)."""

from __future__ import annotations

import attrs

#: passt 2023_02_16 is the first release with ``--fd``, which the backend needs.
DEFAULT_MIN_VERSION = "2023-02-16"


@attrs.frozen
class PasstSettings:
    """Settings of the passt backend.

    :ivar binary: program name (looked up in ``PATH``) or absolute path.
    :ivar min_version: oldest release accepted, as ``YYYY-MM-DD`` (release date).
    :ivar mode: how a *tap* link is served: ``"relay"`` (passt on a socketpair,
        frames copied by a Python relay; the guest keeps its tap and can fall
        back to another backend without noticing) or ``"pasta"`` (the same
        binary as pasta attaches to the namespace and creates its own
        interface there: no Python on the data path). Stream links are always
        handed to passt directly (``--fd``), unless ``fixups`` asks for a relay.
    :ivar fixups: ``"auto"`` repairs the defects of old passt versions
        (gateway ping, DNS reply source, RST without ACK) in the Python relay,
        which is then also used for stream links of such versions;
        ``"off"`` never relays stream links (defects are logged, and ICMP is
        disabled where it would leak).
    :ivar wrapper: argv prefix passt is started under (``["ip", "netns",
        "exec", "NAME"]`` in the tests, or a site sandboxing tool).
    :ivar extra_args: appended to passt's command line verbatim.
    :ivar startup_probe: run (and cache) a real start-up check in ``probe()``.
    :ivar ready_timeout: seconds to wait for passt to finish its start-up.
    """

    binary: str = "passt"
    min_version: str = DEFAULT_MIN_VERSION
    mode: str = attrs.field(default="relay", metadata={"choices": ("relay", "pasta")})
    fixups: str = attrs.field(default="auto", metadata={"choices": ("auto", "off")})
    wrapper: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    startup_probe: bool = True
    ready_timeout: float = 5.0

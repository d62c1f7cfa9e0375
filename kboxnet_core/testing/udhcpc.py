"""A minimal udhcpc hook script (busybox-static ships none)."""

from __future__ import annotations

from pathlib import Path

UDHCPC_SCRIPT = """#!/bin/sh
# udhcpc hook: configure the interface from the lease and log it.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface" 2>/dev/null
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface" 2>/dev/null
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    if [ -n "$router" ]; then
      for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    fi
    : > ${RESOLV_CONF:-/etc/resolv.conf}
    for d in $dns; do echo "nameserver $d" >> ${RESOLV_CONF:-/etc/resolv.conf}; done
    echo "KBN_LEASE ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu server=$serverid"
    ;;
esac
exit 0
"""


def udhcpc_script() -> str:
    """The text of a udhcpc script that sets address, MTU, route and resolv.conf.

    It prints ``KBN_LEASE ip=.. mask=.. router=.. dns=.. mtu=.. server=..`` on
    ``bound``/``renew``. Set ``RESOLV_CONF`` to write somewhere else than
    ``/etc/resolv.conf`` (inside a network namespace, use a private path).
    """
    return UDHCPC_SCRIPT


def write_udhcpc_script(path: Path) -> Path:
    """Write :func:`udhcpc_script` to ``path`` (mode 0755) and return it."""
    path.write_text(UDHCPC_SCRIPT)
    path.chmod(0o755)
    return path

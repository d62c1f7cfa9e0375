"""The host's resolvers, from /etc/resolv.conf."""

from __future__ import annotations

import ipaddress


def host_resolvers(path: str = "/etc/resolv.conf") -> tuple[str, ...]:
    found: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        ipaddress.ip_address(parts[1].split("%")[0])
                    except ValueError:
                        continue
                    found.append(parts[1])
    except OSError:
        pass
    return tuple(found) or ("127.0.0.1",)

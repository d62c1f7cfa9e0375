"""Reusable test helpers for kboxnet and its plugins (stdlib only; pytest optional).

- :class:`Netns`, :class:`HostNetns`: namespaces a test creates and removes.
- :class:`Dnsmasq`: a loopback resolver that answers only test domains.
- :class:`HttpFileServer`, :class:`UdpEchoServer`: loopback servers (any netns).
- :func:`free_tcp_port`, :func:`free_udp_port`, :func:`free_tcp_udp_port`, :func:`udhcpc_script`.
- :mod:`kboxnet_core.testing.qemu`: the real-VM guest kit (IPv4 and IPv6 checks in one boot).
- :mod:`kboxnet_core.testing.unprivileged`: run a command as nobody with a private 0666 tun
  node (root sets it up inside a private mount namespace; the machine is not changed).
- :mod:`kboxnet_core.testing.pytest_plugin`: fixtures wrapping the above.
"""

from .dns import query_a
from .dnsmasq import Dnsmasq
from .netns import HostNetns, Netns, netns_supported, unique_name
from .nsenter import bound_socket, call_in_netns
from .ports import free_port, free_tcp_port, free_tcp_udp_port, free_udp_port
from .procs import stop_process, unix_socket_ready, wait_for
from .servers import HttpFileServer, UdpEchoServer, generated_bytes
from .udhcpc import udhcpc_script, write_udhcpc_script

__all__ = [
    "Dnsmasq",
    "HostNetns",
    "HttpFileServer",
    "Netns",
    "UdpEchoServer",
    "bound_socket",
    "call_in_netns",
    "free_port",
    "free_tcp_port",
    "free_tcp_udp_port",
    "free_udp_port",
    "generated_bytes",
    "netns_supported",
    "query_a",
    "stop_process",
    "udhcpc_script",
    "unique_name",
    "unix_socket_ready",
    "wait_for",
    "write_udhcpc_script",
]

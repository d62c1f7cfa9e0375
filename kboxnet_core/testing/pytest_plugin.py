"""pytest fixtures wrapping :mod:`kboxnet_core.testing` (load with ``pytest_plugins``).

Fixtures that need namespaces skip with the reason when the machine cannot
make them (not root, no /dev/net/tun).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .dnsmasq import Dnsmasq
from .netns import HostNetns, Netns, netns_supported
from .servers import HttpFileServer, UdpEchoServer


def _need_netns() -> None:
    reason = netns_supported()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def netns() -> Iterator[Netns]:
    """A fresh namespace with ``lo`` up, deleted afterwards."""
    _need_netns()
    with Netns(area="t") as ns:
        yield ns


@pytest.fixture
def host_netns() -> Iterator[HostNetns]:
    """A "host" namespace whose default route is a dead-end veth (see :class:`HostNetns`)."""
    _need_netns()
    with HostNetns(area="t") as topo:
        yield topo


@pytest.fixture
def dnsmasq() -> Iterator[Dnsmasq]:
    """dnsmasq on 127.0.0.1:<free port> resolving ``*.example.test`` to 10.0.2.2."""
    reason = Dnsmasq.available()
    if reason:
        pytest.skip(reason)
    with Dnsmasq() as server:
        yield server


@pytest.fixture
def http_server() -> Iterator[HttpFileServer]:
    """An HTTP file server on 127.0.0.1:<free port>; add files with ``add_file``."""
    with HttpFileServer() as server:
        yield server


@pytest.fixture
def udp_echo() -> Iterator[UdpEchoServer]:
    with UdpEchoServer() as server:
        yield server

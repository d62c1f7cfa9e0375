"""Fixtures for the end-to-end suites (from kboxnet_core.testing)."""

from kboxnet_core.testing.pytest_plugin import dnsmasq, host_netns, http_server, netns, udp_echo  # noqa: F401

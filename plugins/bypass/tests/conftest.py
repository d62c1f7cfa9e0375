"""Fixtures for host-bypass tests (helpers live in bypass_testlib)."""

from bypass_testlib import netns, servers  # noqa: F401 - pytest fixtures

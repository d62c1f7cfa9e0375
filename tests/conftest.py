"""Shared test configuration for the cross-package suites."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    root = os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip")
    skip = pytest.mark.skip(reason="needs root, /dev/net/tun and iproute2 (network namespaces)")
    for item in items:
        if "netns" in item.keywords and not root:
            item.add_marker(skip)


def _register_hypothesis_profiles() -> None:
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # pragma: no cover
        return
    settings.register_profile("ci", max_examples=2000, deadline=None)
    settings.register_profile("fuzz", max_examples=1_000_000, deadline=None,
                              suppress_health_check=list(HealthCheck))
    settings.register_profile("dev", max_examples=200, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


_register_hypothesis_profiles()

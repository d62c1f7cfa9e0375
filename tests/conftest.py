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

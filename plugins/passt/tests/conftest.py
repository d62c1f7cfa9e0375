"""Fixtures of the passt backend's tests."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kboxnet_passt import detect, startup  # noqa: E402


def pytest_collection_modifyitems(config, items):
    root = os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip")
    skip = pytest.mark.skip(reason="needs root, /dev/net/tun and iproute2 (network namespaces)")
    for item in items:
        if "netns" in item.keywords and not root:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_caches():
    detect.clear_cache()
    startup.clear_cache()
    yield
    detect.clear_cache()
    startup.clear_cache()


@pytest.fixture
def real_passt() -> str:
    path = shutil.which("passt")
    if path is None:
        pytest.skip("passt is not installed (apt-get install passt)")
    return path


def write_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)

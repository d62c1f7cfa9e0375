"""Helpers for the core tests: run the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys


def kboxnet(*args: str, env: dict | None = None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("KBOXNET_BACKEND", None)
    full_env.pop("KBOXNET_CONFIG", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "kboxnet_core", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, **kw)

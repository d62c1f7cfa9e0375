"""Test-only third-party backends (installed by the test environment only)."""

"""Integrity harness (issue 11): mutation sweep and SIGKILL trials. The bounded runs are
part of `make test`; the long ones carry the `torture` marker and need NXSTORE_TORTURE=1."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "torture: long integrity runs (NXSTORE_TORTURE=1, make torture)")

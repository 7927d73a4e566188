"""Engine tests. Being a conftest puts this directory on sys.path (pytest's prepend import
mode), so the helpers here (crash_child, native_reference) import from tests/store/integrity too.

The S3 fixtures start a real SeaweedFS (s3server.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from s3server import BUCKET, SeaweedServer


@pytest.fixture(scope="session")
def s3server() -> Iterator[SeaweedServer]:
    """One real S3 server (SeaweedFS `weed mini` on 127.0.0.1) for the session; tests keep
    apart by prefix (`s3_url`). Its absence fails the test, never skips it."""
    server = SeaweedServer().start()
    yield server
    server.stop()


@pytest.fixture
def s3_url(s3server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh s3:// URL (own prefix) on the session's server, its credentials in the
    environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) for this test."""
    for key, value in s3server.env.items():
        monkeypatch.setenv(key, value)
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}"

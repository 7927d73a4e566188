"""Shared fixtures: a temporary cluster factory and a fake clock; the hypothesis profile; a
real S3 server (SeaweedFS, s3server.py)."""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import settings
from s3server import BUCKET, SeaweedServer

from nxstore.store import lockorder

BS = 4096  # block size of the test clusters: small, so tests stay fast

# Every lock made in this process checks the lock hierarchy (nxstore.store.lockorder). Child
# processes only with NXSTORE_DEBUG_LOCKS=1: checked locks are not safe against Ctrl-C.
lockorder.enable()


@pytest.fixture(autouse=True)
def _lock_order_kept() -> Iterator[None]:
    """Fail the test if any thread (a drain thread too) took a lock out of order."""
    lockorder.clear_violations()
    yield
    found = lockorder.violations()
    lockorder.clear_violations()
    assert not found, "lock hierarchy violated:\n" + "\n".join(found)


# No hypothesis deadline anywhere: most property tests here do file or native I/O, whose
# time per example is the machine's load, not the code's (a 200 ms deadline failed a test at
# load 5). Loaded before any test module builds its @settings, which inherit it. On top of
# the active profile, so under CI=true hypothesis's own "ci" profile (derandomized) stays.
settings.register_profile("nxstore", settings.default, deadline=None)
settings.load_profile("nxstore")


class FakeClock:
    """An injectable clock: starts at `start`, moves only when told (thread-safe)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._now += seconds
            return self._now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_cluster(tmp_path) -> Iterator[Callable[..., object]]:
    """Factory: make_cluster(name="c", block_size=4096, background=False, **kw) -> an open
    Cluster in tmp_path/name. Every cluster it made (or reopened through
    make_cluster.reopen) is closed at teardown."""
    import nxstore

    opened: list = []

    def factory(name: str = "c", block_size: int = BS, background: bool = False, **kw):
        c = nxstore.Cluster.create(
            os.path.join(tmp_path, name), block_size=block_size, background=background, **kw
        )
        opened.append(c)
        return c

    def reopen(c, background: bool = False, **kw):
        """Close `c` (if open) and open its directory again."""
        path = c.path
        c.close()
        c2 = nxstore.Cluster.open(path, background=background, **kw)
        opened.append(c2)
        return c2

    def open_path(path: str, background: bool = False, **kw):
        c2 = nxstore.Cluster.open(path, background=background, **kw)
        opened.append(c2)
        return c2

    factory.reopen = reopen  # type: ignore[attr-defined]
    factory.open = open_path  # type: ignore[attr-defined]
    factory.tmp_path = tmp_path  # type: ignore[attr-defined]
    yield factory
    for c in opened:
        with contextlib.suppress(Exception):  # a test may leave a cluster broken on purpose
            c.close()


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


S3_GROUP_BYTES = 64 * 1024  # bytes: the conformance runs' groups seal (and go to S3) this often


@pytest.fixture
def extent_groups_on_s3(s3server, monkeypatch, request):  # noqa: ANN001, ANN201
    """For the S3 conformance modules: every cluster the test creates (Engine.create and
    Cluster.create, so child processes opening it too) keeps its sealed extent groups on
    the session's S3 server under a fresh prefix, with a group size of S3_GROUP_BYTES (or
    the test module's own S3_GROUP_BYTES) recorded in its backend.conf. Fails the test if
    it put no group on S3 (it proved nothing)."""
    from dataclasses import replace

    from nxstore.constants import DEFAULT_BLOCK_SIZE, EXTENT_DIR
    from nxstore.store.engine import Engine
    from nxstore.store.group_backend import load_config, save_config

    for key, value in s3server.env.items():
        monkeypatch.setenv(key, value)
    create = Engine.create.__func__
    prefixes: list[str] = []
    group_bytes = getattr(request.module, "S3_GROUP_BYTES", S3_GROUP_BYTES)

    def create_on_s3(cls, path, block_size=DEFAULT_BLOCK_SIZE, **kw):  # noqa: ANN001, ANN202
        open_kw = {k: kw[k] for k in ("clock", "salvage", "background", "collapse_depth")
                   if k in kw}  # fmt: skip
        prefixes.append(f"conf-{uuid.uuid4().hex[:12]}")
        kw.setdefault("extent_store", f"s3://{BUCKET}/{prefixes[-1]}")
        kw.setdefault("s3_endpoint", s3server.endpoint)
        create(cls, path, block_size, **{**kw, "background": False}).close()
        extents = os.path.join(os.path.abspath(path), EXTENT_DIR)
        save_config(extents, replace(load_config(extents), group_bytes=group_bytes))
        return cls.open(path, **open_kw)

    monkeypatch.setattr(Engine, "create", classmethod(create_on_s3))
    yield
    client = s3server.client()
    objects = sum(client.list_objects_v2(Bucket=BUCKET, Prefix=f"{p}/").get("KeyCount", 0)
                  for p in prefixes)  # fmt: skip
    assert objects, "the test put no extent group on S3: it proves nothing here"


def pattern(seed: int, n: int) -> bytes:
    """Deterministic pseudo-random bytes (incompressible) for tests."""
    import random

    return random.Random(seed).randbytes(n)

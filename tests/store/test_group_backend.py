"""The GroupBackend conformance suite, run against every implementation: the directory and
S3 (a real SeaweedFS on 127.0.0.1). Like litestream's replica-client suite: one contract
(nxstore/store/group_backend.py docstrings), every back end held to it."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nxstore.errors import AlreadyExists, InvalidArgument, NotFound
from nxstore.store.group_backend import DirectoryBackend, open_backend, parse_extent_store


def _make(kind: str, request: pytest.FixtureRequest, tmp_path, name: str = "objs"):  # noqa: ANN001, ANN202
    if kind == "directory":
        path = tmp_path / name
        path.mkdir(exist_ok=True)
        return DirectoryBackend(str(path))
    server = request.getfixturevalue("s3server")
    url = request.getfixturevalue("s3_url")
    return open_backend(parse_extent_store(url, endpoint=server.endpoint), check=True)


@pytest.fixture(params=["directory", "s3"])
def backend(request, tmp_path):  # noqa: ANN001, ANN201
    b = _make(request.param, request, tmp_path)
    yield b
    b.close()


@pytest.fixture
def second_writer(request, tmp_path, backend):  # noqa: ANN001, ANN201
    """Another client of the same objects (for S3: its own connection)."""
    if isinstance(backend, DirectoryBackend):
        b = DirectoryBackend(backend.directory)
    else:
        from nxstore.store.s3_backend import S3Backend

        server = request.getfixturevalue("s3server")
        b = S3Backend(parse_extent_store(backend.location, endpoint=server.endpoint))
    yield b
    b.close()


DATA = bytes(range(256)) * 40  # 10240 bytes


def test_put_once_then_ranged_gets(backend):
    backend.put_once("EG00000001.eg", DATA)
    assert backend.get("EG00000001.eg", 0, len(DATA)) == DATA
    assert backend.get("EG00000001.eg", 100, 50) == DATA[100:150]
    assert backend.get("EG00000001.eg", len(DATA) - 10, 100) == DATA[-10:]  # ends early: short
    assert backend.get("EG00000001.eg", len(DATA), 10) == b""  # at the end
    assert backend.get("EG00000001.eg", len(DATA) + 5000, 10) == b""  # past the end
    assert backend.get("EG00000001.eg", 7, 0) == b""


def test_put_once_refuses_an_existing_name_and_keeps_the_first(backend):
    backend.put_once("EG00000002.eg", b"first")
    with pytest.raises(AlreadyExists):
        backend.put_once("EG00000002.eg", b"second, longer")
    with pytest.raises(AlreadyExists):
        backend.put_once("EG00000002.eg", b"first")  # even the same bytes
    assert backend.get("EG00000002.eg", 0, 100) == b"first"


def test_missing_names_raise_not_found(backend):
    with pytest.raises(NotFound):
        backend.get("EG000000ff.eg", 0, 10)
    with pytest.raises(NotFound):
        backend.get("EG000000ff.eg", 0, 0)


def test_bad_ranges_are_invalid(backend):
    backend.put_once("EG00000003.eg", DATA)
    for offset, length in ((-1, 5), (0, -5)):
        with pytest.raises(InvalidArgument):
            backend.get("EG00000003.eg", offset, length)


def test_list_and_idempotent_delete(backend):
    assert backend.list() == {}
    backend.put_once("EG00000001.eg", DATA)
    backend.put_once("EG00000002.eg", b"")
    backend.put_once("EG00000003.eg", b"x" * 3)
    assert backend.list() == {"EG00000001.eg": len(DATA), "EG00000002.eg": 0,
                              "EG00000003.eg": 3}  # fmt: skip
    backend.delete("EG00000002.eg")
    backend.delete("EG00000002.eg")  # again: no error
    backend.delete("EG000000aa.eg")  # never existed: no error
    assert set(backend.list()) == {"EG00000001.eg", "EG00000003.eg"}
    with pytest.raises(NotFound):
        backend.get("EG00000002.eg", 0, 1)
    backend.put_once("EG00000002.eg", b"new")  # a deleted name may be written again
    assert backend.get("EG00000002.eg", 0, 10) == b"new"


def test_racing_writers_exactly_one_wins(backend, second_writer):
    """Two writers put the same name at once, many times: each time exactly one succeeds,
    the other gets AlreadyExists, and the object holds the winner's bytes whole."""
    for round_ in range(8):
        name = f"EG{round_ + 16:08x}.eg"
        payloads = [bytes([65 + round_]) * 300_000, bytes([97 + round_]) * 200_000]
        results: list[object] = [None, None]
        start = threading.Barrier(2)

        def put(i: int, b, name=name, payloads=payloads, results=results, start=start) -> None:  # noqa: ANN001
            start.wait()
            try:
                b.put_once(name, payloads[i])
                results[i] = "won"
            except AlreadyExists:
                results[i] = "lost"
            except Exception as exc:  # noqa: BLE001 (reported by the assertion below)
                results[i] = exc

        threads = [threading.Thread(target=put, args=(i, b))
                   for i, b in enumerate((backend, second_writer))]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(map(str, results)) == ["lost", "won"], results
        winner = results.index("won")
        assert backend.get(name, 0, 400_000) == payloads[winner]


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=3000), ranges=st.lists(
    st.tuples(st.integers(0, 3500), st.integers(0, 3500)), min_size=1, max_size=5))
def test_ranged_get_matches_slicing(backend, data, ranges):
    name = f"EG{len(backend.list()) + 1:08x}.eg"
    backend.put_once(name, data)
    for offset, length in ranges:
        assert backend.get(name, offset, length) == data[offset : offset + length]


def test_without_boto3_an_s3_store_is_a_clear_error(monkeypatch, tmp_path):
    """boto3 is the optional `s3` extra: without it the wheel imports, local clusters work,
    and creating one on S3 says what to install (nothing is created)."""
    import sys

    import nxstore
    from nxstore.errors import ObjectStoreError

    monkeypatch.setitem(sys.modules, "boto3", None)  # `import boto3` raises ImportError
    with pytest.raises(ObjectStoreError, match=r"nxstore\[s3\]"):
        nxstore.Cluster.create(str(tmp_path / "c"), extent_store="s3://bucket/x",
                               s3_endpoint="http://127.0.0.1:9", background=False)  # fmt: skip
    assert not (tmp_path / "c").exists()
    nxstore.Cluster.create(str(tmp_path / "local"), background=False).close()

"""The extent store with sealed groups on S3 (a real SeaweedFS on 127.0.0.1): round trips
through an empty cache, dedup, gc's delete order, damaged objects, racing writers, the
server killed mid-ingest, and bad creation input."""

from __future__ import annotations

import os
import shutil
import threading

import numpy as np
import pytest
from s3server import BUCKET, SeaweedServer

import nxstore
import nxstore.store.extent_remote as er_mod
import nxstore.store.extent_store as es_mod
from nxstore.constants import EXTENT_CACHE_DIR, EXTENT_DIR, EXTENT_TABLE_FILE
from nxstore.errors import (
    AlreadyExists,
    AuthenticationError,
    Corruption,
    InvalidArgument,
    NotFound,
    ObjectStoreError,
)
from nxstore.store.extent_group import group_file_name
from nxstore.store.extent_store import ExtentStore
from nxstore.store.extent_table import load_checkpoint
from nxstore.store.group_backend import parse_extent_store

BS = 4096
GROUP = 64 * BS  # sealed groups every 256 KiB, so small tests reach S3
CHUNK = 16 * BS  # a cold read fetches this much of a group around what it reads


@pytest.fixture(autouse=True)
def _small_groups(monkeypatch):
    monkeypatch.setattr(es_mod, "EXTENT_GROUP_BYTES", GROUP)
    monkeypatch.setattr(er_mod, "PART_CHUNK_BYTES", CHUNK)  # cold reads fetch parts of groups


def _keys(server: SeaweedServer, url: str) -> dict[str, int]:
    prefix = url.split("/", 3)[3] + "/"
    resp = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"][len(prefix):]: o["Size"] for o in resp.get("Contents", ())}


def _blocks(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n * BS, dtype=np.uint8)


def _read(store: ExtentStore, ids: np.ndarray) -> np.ndarray:
    out = np.empty(len(ids) * BS, np.uint8)
    store.read_blocks(np.asarray(ids, np.uint64), out)
    return out


def _s3_store(tmp_path, url: str, server: SeaweedServer, name: str = "ex", **kw) -> ExtentStore:  # noqa: ANN001
    config = parse_extent_store(url, endpoint=server.endpoint, **kw)
    return ExtentStore.open(str(tmp_path / name), BS, create=True, backend=config)


def test_cluster_round_trip_after_reopen_with_an_empty_cache(make_cluster, s3server, s3_url):
    c = make_cluster(extent_store=s3_url, s3_endpoint=s3server.endpoint)
    vd = c.create_vdisk("v", 64 * GROUP)
    data = _blocks(1, 1024).tobytes()  # 4 MiB: 16 groups
    vd.write(0, data)
    snap = vd.snapshot("s")
    vd.write(0, _blocks(2, 64).tobytes())  # the snapshot keeps the old blocks
    after = _blocks(2, 64).tobytes() + data[64 * BS :]
    c.drain()
    path = c.path
    c.close()
    keys = _keys(s3server, s3_url)
    assert len(keys) >= 16 and all(k.startswith("EG") for k in keys)
    shutil.rmtree(os.path.join(path, EXTENT_DIR, EXTENT_CACHE_DIR))
    c = make_cluster.open(path)
    assert c.vdisk("v").read(0, len(data)) == after
    assert c.vdisk("v").snapshots()[0].read(0, len(data)) == data
    assert c.ctx.store._remote.fetches >= 16  # read from S3, not from a local copy
    assert c.scrub() == []
    for top, dirs, files in os.walk(os.path.join(path, EXTENT_DIR)):  # owner-only, cache too
        assert all(os.stat(os.path.join(top, d)).st_mode & 0o777 == 0o700 for d in dirs)
        assert all(os.stat(os.path.join(top, f)).st_mode & 0o777 == 0o600 for f in files)
    del snap


def _cold_store(tmp_path, url: str, server: SeaweedServer,  # noqa: ANN001
                data: np.ndarray) -> tuple[ExtentStore, np.ndarray, str]:
    """A store on S3 holding `data` (every group uploaded), reopened with an empty read
    cache: (store, the blocks' ids, the cache directory)."""
    s = _s3_store(tmp_path, url, server)
    ids = s.put_blocks(data)
    s.sync()
    s.wait_uploaded()
    s.close()
    cache = os.path.join(str(tmp_path / "ex"), EXTENT_CACHE_DIR)
    shutil.rmtree(cache)
    return ExtentStore.open(str(tmp_path / "ex"), BS), ids, cache


def test_cold_reads_fetch_only_the_chunks_they_touch(tmp_path, s3server, s3_url):
    """A cold read gets the chunks of a group its records lie in, into a sparse `.part`
    cache file; the group's other reads add chunks until the file is whole and renamed;
    reopening drops partial files; every read is right and verified throughout."""
    data = _blocks(7, 4 * 64)  # four groups of incompressible blocks
    s, ids, cache = _cold_store(tmp_path, s3_url, s3server, data)
    rows = data.reshape(-1, BS)
    assert np.array_equal(_read(s, ids[70:71]), rows[70])  # one block of the second group
    got = s._remote.fetched_bytes
    assert 0 < got <= CHUNK + BS  # one chunk (a record can straddle two)
    parts = [n for n in os.listdir(cache) if n.endswith(".part")]
    assert len(parts) == 1 and os.path.getsize(os.path.join(cache, parts[0])) > CHUNK
    assert np.array_equal(_read(s, ids[70:72]), rows[70:72].reshape(-1))  # already there: no GET
    assert s._remote.fetched_bytes == got
    assert np.array_equal(_read(s, ids[64:128]), rows[64:128].reshape(-1))  # the rest of the group
    assert not [n for n in os.listdir(cache) if n.endswith(".part")]  # whole, renamed
    assert np.array_equal(_read(s, ids[200:201]), rows[200])  # another group, partly
    s.close()
    assert [n for n in os.listdir(cache) if n.endswith(".part")]
    s = ExtentStore.open(str(tmp_path / "ex"), BS)
    assert not [n for n in os.listdir(cache) if n.endswith(".part")]  # open drops them
    assert s.scrub() == []
    assert np.array_equal(_read(s, ids), data)
    s.close()


def test_a_group_missed_often_is_fetched_whole(tmp_path, s3server, s3_url, monkeypatch):
    monkeypatch.setattr(er_mod, "WHOLE_AFTER_MISSES", 2)
    monkeypatch.setattr(er_mod, "PART_CHUNK_BYTES", 4 * BS)  # 16 chunks a group
    data = _blocks(8, 64)  # one group
    s, ids, cache = _cold_store(tmp_path, s3_url, s3server, data)
    rows = data.reshape(-1, BS)
    for k, block in enumerate([1, 20]):  # two misses, one chunk each (no read-ahead)
        assert np.array_equal(_read(s, ids[block : block + 1]), rows[block])
        assert s._remote.fetched_bytes <= (k + 1) * 5 * BS
    assert [n for n in os.listdir(cache) if n.endswith(".part")]
    assert np.array_equal(_read(s, ids[40:41]), rows[40])  # the third: the whole group
    assert not [n for n in os.listdir(cache) if n.endswith(".part")]
    assert np.array_equal(_read(s, ids), data)
    s.close()


def test_dedup_across_vdisks_on_s3(make_cluster, s3server, s3_url):
    c = make_cluster(extent_store=s3_url, s3_endpoint=s3server.endpoint)
    data = _blocks(3, 256).tobytes()
    for name in ("a", "b", "c"):
        c.create_vdisk(name, len(data)).write(0, data)
    c.drain()
    assert c.ctx.store.stats()["extents"] == 256
    path = c.path
    c.close()
    shutil.rmtree(os.path.join(path, EXTENT_DIR, EXTENT_CACHE_DIR), ignore_errors=True)
    c = make_cluster.open(path)
    for name in ("a", "b", "c"):
        assert c.vdisk(name).read(0, len(data)) == data


def test_gc_deletes_objects_only_once_unreferenced(tmp_path, s3server, s3_url):
    s = _s3_store(tmp_path, s3_url, s3server)
    keep = s.put_blocks(_blocks(4, 200))  # groups 1-4
    s.put_blocks(_blocks(5, 200))  # groups 4-7: dropped below
    s.wait_uploaded()
    before = set(_keys(s3server, s3_url))
    assert len(before) >= 6
    real_delete = s._remote.backend.delete
    deleted_while_named: list[str] = []

    def checked_delete(name: str) -> None:  # the durable checkpoint must not name it
        ckpt = load_checkpoint(s._path(EXTENT_TABLE_FILE))
        if int(name[2:10], 16) in ckpt.groups:
            deleted_while_named.append(name)
        real_delete(name)

    s._remote.backend.delete = checked_delete
    stats = s.gc(keep)
    assert stats["groups_deleted"] >= 3 and not deleted_while_named
    after = set(_keys(s3server, s3_url))
    assert len(after) < len(before)
    named = {int(g) for g in s._table.group[keep.astype(np.int64)]}
    local = {g for g in named if os.path.exists(s._path(group_file_name(g)))}
    assert {group_file_name(g) for g in named - local} <= after
    assert np.array_equal(_read(s, keep), _blocks(4, 200))
    s.close()
    shutil.rmtree(os.path.join(str(tmp_path / "ex"), EXTENT_CACHE_DIR))
    s = ExtentStore.open(str(tmp_path / "ex"), BS)
    assert np.array_equal(_read(s, keep), _blocks(4, 200))
    assert s.scrub() == []
    s.close()


def test_gc_that_cannot_delete_leaves_an_orphan_the_next_gc_removes(tmp_path, s3server, s3_url):
    s = _s3_store(tmp_path, s3_url, s3server)
    keep = s.put_blocks(_blocks(6, 100))
    s.put_blocks(_blocks(7, 300))
    s.wait_uploaded()
    real_delete = s._remote.backend.delete

    def unreachable(name: str) -> None:
        raise ObjectStoreError("down")

    s._remote.backend.delete = unreachable  # the crash point: checkpoint done, delete not
    s.gc(keep)
    orphans = set(_keys(s3server, s3_url)) - {group_file_name(g) for g in s._glen}
    assert orphans  # nothing names them, and reads never need them
    assert np.array_equal(_read(s, keep), _blocks(6, 100))
    s._remote.backend.delete = real_delete
    assert s.gc(keep)["orphans_deleted"] == len(orphans)
    assert not set(_keys(s3server, s3_url)) - {group_file_name(g) for g in s._glen}
    s.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_object_is_corruption_not_wrong_data(tmp_path, s3server, s3_url, damage):
    s = _s3_store(tmp_path, s3_url, s3server)
    ids = s.put_blocks(_blocks(8, 80))  # group 1 sealed and uploaded at close
    s.close()
    name = group_file_name(1)
    key = f"{s3_url.split('/', 3)[3]}/{name}"
    client = s3server.client()
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    client.delete_object(Bucket=BUCKET, Key=key)
    if damage == "flip":
        body[len(body) // 2] ^= 0x40
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    elif damage == "truncate":
        client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body[: len(body) - 1000]))
    shutil.rmtree(os.path.join(str(tmp_path / "ex"), EXTENT_CACHE_DIR))
    s = ExtentStore.open(str(tmp_path / "ex"), BS)
    in_group1 = s._table.group[ids.astype(np.int64)] == 1
    with pytest.raises(Corruption):
        _read(s, ids[in_group1])
    assert np.array_equal(_read(s, ids[~in_group1]), _blocks(8, 80).reshape(80, BS)[~in_group1].reshape(-1))
    assert s.scrub()
    s.close()


def test_two_writers_racing_for_one_group(tmp_path, s3server, s3_url):
    """Two stores wrongly share one bucket prefix: both seal group 1 and upload it at
    once. Exactly one wins; the other gets AlreadyExists and keeps its group locally."""
    stores = [_s3_store(tmp_path, s3_url, s3server, name=f"ex{i}") for i in range(2)]
    datas = [_blocks(10 + i, 80) for i in range(2)]
    ids = [st.put_blocks(d) for st, d in zip(stores, datas, strict=True)]
    results: list[object] = [None, None]
    start = threading.Barrier(2)

    def sync(i: int) -> None:
        start.wait()
        try:
            stores[i].wait_uploaded()
            results[i] = "won"
        except AlreadyExists as exc:
            results[i] = exc

    threads = [threading.Thread(target=sync, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    winners = [i for i in range(2) if results[i] == "won"]
    assert len(winners) == 1, results
    loser = 1 - winners[0]
    assert "another writer" in str(results[loser])
    for i in range(2):  # nothing lost: the loser still reads its own data (local copy)
        assert np.array_equal(_read(stores[i], ids[i]), datas[i])
    assert os.path.exists(stores[loser]._path(group_file_name(1)))
    with pytest.raises(AlreadyExists):  # and it keeps refusing, never overwriting
        stores[loser].wait_uploaded()
    for st in stores:
        st._remote.sizes.setdefault(1, 0)  # let the loser close without another upload
        st.close(checkpoint=False)


def test_server_killed_mid_ingest_loses_nothing_acknowledged(make_cluster, s3_url):
    server = SeaweedServer().start()  # its own: killed and restarted (same keys as s3_url's)
    try:
        c = make_cluster(extent_store=s3_url, s3_endpoint=server.endpoint)
        vd = c.create_vdisk("v", 256 * GROUP)
        acked: dict[int, bytes] = {}
        failures = 0
        for i in range(24):
            if i == 8:
                server.kill()
            chunk = _blocks(100 + i, 64).tobytes()  # one group's worth
            try:
                vd.write(i * GROUP, chunk)
                vd.flush()
                c.drain()
                acked[i] = chunk
            except ObjectStoreError:
                failures += 1
            if i == 16:
                server.start()
        assert failures, "writes while the server was down must fail clearly"
        path = c.path
        c.close()  # waits for the uploads the outage held back
        local = [n for n in os.listdir(os.path.join(path, EXTENT_DIR)) if n.startswith("EG")]
        assert len(local) <= 1, local  # only the group being filled stays local
        shutil.rmtree(os.path.join(path, EXTENT_DIR, EXTENT_CACHE_DIR), ignore_errors=True)
        c = make_cluster.open(path)
        for i, chunk in acked.items():
            assert c.vdisk("v").read(i * GROUP, GROUP) == chunk, i
        assert c.scrub() == []
    finally:
        server.stop()


def test_create_refuses_bad_input_and_creates_nothing(tmp_path, s3server, s3_url, monkeypatch):
    path = str(tmp_path / "c")
    ep = s3server.endpoint
    cases = [
        (InvalidArgument, {"extent_store": "http://x/y", "s3_endpoint": ep}),
        (InvalidArgument, {"extent_store": "s3://Bad_Bucket/p", "s3_endpoint": ep}),
        (InvalidArgument, {"extent_store": s3_url, "s3_endpoint": "not a url"}),
        (InvalidArgument, {"s3_endpoint": ep}),  # S3 options without an s3:// store
        (NotFound, {"extent_store": "s3://no-such-bucket/p", "s3_endpoint": ep}),
        (ObjectStoreError, {"extent_store": s3_url, "s3_endpoint": "http://127.0.0.1:9"}),
    ]
    for exc, kw in cases:
        with pytest.raises(exc):
            nxstore.Cluster.create(path, block_size=BS, background=False, **kw)
        assert not os.path.exists(path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(AuthenticationError):
        nxstore.Cluster.create(path, block_size=BS, background=False, extent_store=s3_url,
                               s3_endpoint=ep)  # fmt: skip
    assert not os.path.exists(path)


def test_credentials_file_and_prefix_already_used(tmp_path, s3server, s3_url, monkeypatch):
    creds = tmp_path / "creds"
    creds.write_text("[default]\naws_access_key_id = {AWS_ACCESS_KEY_ID}\n"
                     "aws_secret_access_key = {AWS_SECRET_ACCESS_KEY}\n".format(**s3server.env))  # fmt: skip
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with nxstore.Cluster.create(str(tmp_path / "a"), block_size=BS, background=False,
                                extent_store=s3_url, s3_endpoint=s3server.endpoint,
                                s3_credentials_file=str(creds)) as c:  # fmt: skip
        c.create_vdisk("v", 2 * GROUP).write(0, _blocks(20, 128).tobytes())
        c.drain()  # group 1 is full: sealed and uploaded
    assert _keys(s3server, s3_url)
    shutil.rmtree(tmp_path / "a" / EXTENT_DIR / EXTENT_CACHE_DIR)
    with nxstore.Cluster.open(str(tmp_path / "a"), background=False) as c:  # the file is recorded
        assert c.vdisk("v").read(0, 2 * GROUP) == _blocks(20, 128).tobytes()
        assert c.ctx.store._remote.fetches
    with pytest.raises(AlreadyExists):
        nxstore.Cluster.create(str(tmp_path / "b"), block_size=BS, background=False,
                               extent_store=s3_url, s3_endpoint=s3server.endpoint,
                               s3_credentials_file=str(creds))  # fmt: skip
    assert not os.path.exists(tmp_path / "b")


def test_read_cache_stays_within_its_bound(tmp_path, s3server, s3_url):
    """A cache of 3 groups' bytes over 10 groups: reads stay correct, the cache directory
    never holds more than its bound plus the groups one read holds open, and groups
    evicted are fetched again (ranged GETs) when read again."""
    bound = 3 * GROUP
    s = _s3_store(tmp_path, s3_url, s3server, cache_bytes=bound)
    data = _blocks(30, 640).reshape(640, BS)
    ids = s.put_blocks(data)
    s.wait_uploaded()
    s.close()
    cache = os.path.join(str(tmp_path / "ex"), EXTENT_CACHE_DIR)
    shutil.rmtree(cache)
    s = ExtentStore.open(str(tmp_path / "ex"), BS)
    groups = len(set(s._table.group[ids.astype(np.int64)].tolist()))
    assert groups >= 9
    for _ in range(2):
        for i in range(0, 640, 32):
            assert np.array_equal(_read(s, ids[i : i + 32]), data[i : i + 32].reshape(-1))
            held = sum(os.path.getsize(os.path.join(cache, n)) for n in os.listdir(cache))
            assert held <= bound + 2 * (GROUP + 2 * (BS + 64)), held
    assert s._remote.fetches >= 2 * groups - 3  # evicted groups were fetched again
    s.close()


_CRASH_CHILD = """
import os, signal, sys
import numpy as np
import nxstore.store.extent_store as es
import nxstore.store.extent_remote as er
from nxstore.store.extent_store import ExtentStore
from nxstore.store.group_backend import parse_extent_store

path, url, endpoint, point, group = sys.argv[1:6]
es.EXTENT_GROUP_BYTES = int(group)
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
s = ExtentStore.open(path, 4096, create=True,
                     backend=parse_extent_store(url, endpoint=endpoint))
keep = s.put_blocks(np.random.default_rng(40).integers(0, 256, 100 * 4096, dtype=np.uint8))
s.put_blocks(np.random.default_rng(41).integers(0, 256, 300 * 4096, dtype=np.uint8))
np.save(path + ".keep.npy", keep)
if point == "before-move":  # the object is complete, the local file not yet moved
    er.os.replace = die
    s.sync()
    s.wait_uploaded()
s.wait_uploaded()
if point == "gc-before-delete":  # the checkpoint no longer names them, the objects remain
    s._remote.backend.delete = die
    s.gc(keep)
"""


@pytest.mark.parametrize("point", ["before-move", "gc-before-delete"])
def test_killed_between_steps_leaves_nothing_dangling(tmp_path, s3server, s3_url, point):
    """SIGKILL between an upload and the move into the cache, or between gc's checkpoint
    and its deletes: the reopened store reads everything it names, keeps no group both
    local and remote, and deletes the orphan objects."""
    import subprocess
    import sys

    path = str(tmp_path / "ex")
    proc = subprocess.run([sys.executable, "-c", _CRASH_CHILD, path, s3_url, s3server.endpoint,
                           point, str(GROUP)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr[-3000:]
    keep = np.load(path + ".keep.npy")
    local = {n for n in os.listdir(path) if n.startswith("EG")}
    if point == "before-move":
        assert local and set(_keys(s3server, s3_url)) & local  # both local and remote
    else:  # objects the durable checkpoint no longer names
        ckpt = load_checkpoint(os.path.join(path, EXTENT_TABLE_FILE))
        assert set(_keys(s3server, s3_url)) - {group_file_name(g) for g in ckpt.groups}
    s = ExtentStore.open(path, BS)
    named = {group_file_name(g) for g in s._glen}
    assert set(_keys(s3server, s3_url)) <= named  # no orphan left
    s.wait_uploaded()  # open hands the groups the crash left local to the uploader
    local_now = {n for n in os.listdir(path) if n.startswith("EG")}
    assert not local_now & set(_keys(s3server, s3_url))  # none both local and remote
    assert np.array_equal(_read(s, keep), np.random.default_rng(40).integers(
        0, 256, 100 * BS, dtype=np.uint8))
    assert s.scrub() == []
    s.close()

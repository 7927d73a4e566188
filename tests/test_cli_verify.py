"""Checking images without copying them, as real CLI processes: `export ... -` to a pipe,
`nxstore verify`, `nxstore replica verify` between two sites, and incremental `import
--update`; plus the library entry points (VDisk/Snapshot.verify, block_fingerprints)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import nxstore
from nxstore.store.extent_group import HEADER_BYTES, group_file_name
from nxstore.store.verify import damaged_extents, verify_image

sys.path.insert(0, str(Path(__file__).parent / "replication"))
from sites_helper import NXSTORE, Daemon  # noqa: E402
from test_cli import nx  # noqa: E402
from test_cli_leap import error_line as last_error  # noqa: E402

MiB = 1 << 20
BS = 4096
TIMEOUT = 120
SECRET = "correct horse battery staple"


def export_sha256(path: object, ref: str) -> str:
    """sha256 of `nxstore export PATH REF -` read from a pipe."""
    proc = subprocess.Popen([*NXSTORE, "export", str(path), ref, "-"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    h = hashlib.sha256()
    assert proc.stdout is not None and proc.stderr is not None
    while chunk := proc.stdout.read(1 << 20):
        h.update(chunk)
    err = proc.stderr.read().decode()
    assert proc.wait(TIMEOUT) == 0, err
    assert "Traceback" not in err and "exported " in err, err
    return h.hexdigest()


def make_image(path: Path, size: int, seed: int = 3) -> bytes:
    """Random data with a hole in the middle and a compressible stretch."""
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    data[size // 4 : size // 2] = bytes(size // 4)
    text = b"all work and no play makes jack a dull boy " * 2000
    data[size // 2 : size // 2 + len(text)] = text
    path.write_bytes(bytes(data))
    return bytes(data)


def damage(cluster_path: object, vdisk: str, blocks: list[int],
           snap: str | None = None) -> list[int]:
    """Flip one payload byte of the extent each of `blocks` maps to; returns the extent ids."""
    with nxstore.Cluster.open(str(cluster_path), background=False) as c:
        src = c.snapshot(vdisk, snap) if snap else c.vdisk(vdisk)
        ids = np.array([int(src.block_fingerprints(b, 1).ids[0]) for b in blocks], np.uint64)
        groups, offsets, _ = c.ctx.store.locations(ids)
        directory = c.ctx.store.directory
    for g, off in zip(groups.tolist(), offsets.tolist(), strict=True):
        assert g, "block is not allocated"
        with open(os.path.join(directory, group_file_name(g)), "r+b") as f:
            f.seek(off + HEADER_BYTES + 5)
            b = f.read(1)
            f.seek(off + HEADER_BYTES + 5)
            f.write(bytes([b[0] ^ 0x40]))
    return ids.tolist()


@pytest.fixture
def site(tmp_path):
    """Cluster 'paris' with a 4 MiB vDisk 'db' imported from `img`, snapshot db@s1."""
    path = tmp_path / "paris"
    nx("create", path, "--block-size", "4K")
    img = tmp_path / "img"
    data = make_image(img, 4 * MiB)
    nx("import", path, "db", img, "--create")
    nx("snapshot", "create", path, "db@s1")
    return path, img, data


# -- export to a pipe ------------------------------------------------------------------------
def test_export_to_a_pipe_equals_the_content(site, tmp_path):
    path, _, data = site
    want = hashlib.sha256(data).hexdigest()
    assert export_sha256(path, "db") == want
    assert export_sha256(path, "db@s1") == want
    # Zeros of a sparse vDisk are written out (no seeking), the unaligned tail too.
    nx("vdisk", "create", path, "sparse", str(3 * MiB + 1000))
    assert export_sha256(path, "sparse") == hashlib.sha256(bytes(3 * MiB + 1000)).hexdigest()
    # Standard output redirected to a file works as well; stdout holds the image only.
    with open(tmp_path / "out.raw", "wb") as f:
        proc = subprocess.run([*NXSTORE, "export", str(path), "db@s1", "-"], stdout=f,
                              stderr=subprocess.PIPE, text=True, timeout=TIMEOUT, check=True)
    assert (tmp_path / "out.raw").read_bytes() == data
    assert "exported db@s1 to standard output" in proc.stderr
    last_error(nx("export", path, "db", "-", "--format", "qcow2", rc=1), "only raw images")


def test_export_to_stdout_of_a_served_cluster_is_refused_clearly(site, tmp_path):
    path, _, _ = site
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    d = Daemon.start(str(path), str(secret))
    try:
        proc = nx("export", path, "db", "-", rc=1)
        assert proc.stdout == ""
        last_error(proc, "cannot stream", "mkfifo")
        # What the error suggests works: the daemon writes into a named pipe.
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        export = subprocess.Popen([*NXSTORE, "export", str(path), "db@s1", str(fifo)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  stdin=subprocess.DEVNULL)


        def unblock_reader() -> None:  # should the export fail before it opens the pipe
            export.wait()
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

        threading.Thread(target=unblock_reader, daemon=True).start()
        try:
            with open(fifo, "rb") as f:
                got = hashlib.sha256(f.read()).hexdigest()
            out, err = export.communicate(timeout=TIMEOUT)
        finally:
            if export.poll() is None:
                export.kill()
                export.wait()
        assert export.returncode == 0, err
        assert got == hashlib.sha256(site[2]).hexdigest() and "exported db@s1 to" in out
        # A command that prints text is forwarded as usual.
        assert "no damage" in nx("verify", path, "db").stdout
    finally:
        d.cleanup()


# -- verify ----------------------------------------------------------------------------------
def test_verify_clean_then_every_damaged_block_listed(site):
    path, _, _ = site
    out = nx("verify", path, "db").stdout
    assert "verified db: 768 allocated blocks (3.0 MiB)" in out and "no damage" in out, out
    report = json.loads(nx("verify", path, "db@s1", "--json").stdout)
    assert report["clean"] and report["blocks_checked"] == 768 and report["damaged"] == []
    ids = damage(path, "db", [3, 700])
    proc = nx("verify", path, "db", rc=1)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    assert lines[0].startswith(f"db: block at offset {3 * BS}: extent {ids[0]} ")
    assert lines[1].startswith(f"db: block at offset {700 * BS}: extent {ids[1]} ")
    assert all("data does not match its fingerprint" in x for x in lines), lines
    last_error(proc, "verify found 2 damaged blocks of 768 in db")
    report = json.loads(nx("verify", path, "db@s1", "--json", rc=1).stdout)
    assert not report["clean"]
    assert [(d["offset"], d["extent_id"]) for d in report["damaged"]] == [
        (3 * BS, ids[0]), (700 * BS, ids[1])]
    last_error(nx("verify", path, "db@nosuch", rc=1), "nosuch")


def test_library_verify_reports_progress_and_all_damaged_blocks(tmp_path):
    with nxstore.Cluster.create(str(tmp_path / "c"), block_size=BS) as c:
        vd = c.create_vdisk("v", 2 * MiB + 512)
        rng = np.random.default_rng(5)
        block = rng.integers(0, 256, BS, dtype=np.uint8).tobytes()
        vd.write(0, rng.integers(0, 256, MiB, dtype=np.uint8).tobytes())
        for b in (300, 301, 400):  # three blocks sharing one extent (dedup)
            vd.write(b * BS, block)
        vd.write(2 * MiB, b"tail" * 128)  # a partial last block, still in the OpLog
        calls: list[tuple[int, int]] = []
        r = vd.verify(progress=lambda done, total: calls.append((done, total)))
        assert r.clean and r.blocks_checked == 256 + 3 + 1
        assert r.bytes_checked == (256 + 3) * BS + 512
        assert calls and calls[-1] == (vd.size, vd.size)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        fp = vd.block_fingerprints(300, 2)
        assert fp.ids[0] == fp.ids[1] and (fp.fps[0] == fp.fps[1]).all() and not fp.damaged
        eid = int(fp.ids[0])
        g, off, _ = c.ctx.store.locations(np.array([eid, 1], np.uint64))
        snap = vd.snapshot("s")
        directory = c.ctx.store.directory
    for group, at in zip(g.tolist(), off.tolist(), strict=True):
        with open(os.path.join(directory, group_file_name(group)), "r+b") as f:
            f.seek(at + HEADER_BYTES + 100)
            byte = f.read(1)
            f.seek(at + HEADER_BYTES + 100)
            f.write(bytes([byte[0] ^ 1]))
    with nxstore.Cluster.open(str(tmp_path / "c"), background=False) as c:
        snap = c.snapshot("v", "s")
        r = snap.verify()
        assert not r.clean and r.blocks_checked == 260
        assert [d.offset for d in r.damaged] == [0, 300 * BS, 301 * BS, 400 * BS]
        assert [d.extent_id for d in r.damaged[1:]] == [eid] * 3
        # Many small windows and read batches find the same, with progress after each.
        calls.clear()
        small = verify_image(c.ctx, snap.layer_id, "s", snap.size, window_bytes=64 * BS,
                             progress=lambda done, total: calls.append((done, total)))
        assert small.damaged == r.damaged and small.blocks_checked == r.blocks_checked
        assert len(calls) == -(-snap.size // (64 * BS)) and calls[-1] == (snap.size, snap.size)
        ids = snap.block_fingerprints(0, 512).ids
        assert set(damaged_extents(c.ctx.store, ids, read_bytes=3 * BS)) == {
            r.damaged[0].extent_id, eid}
        fp = snap.block_fingerprints(299, 3, reread=True)
        assert sorted(fp.damaged) == [1, 2] and "fingerprint" in fp.damaged[1]
        with pytest.raises(nxstore.errors.OutOfRange):
            snap.block_fingerprints(500, 100)


# -- incremental import ----------------------------------------------------------------------
def test_import_update_writes_only_the_changed_blocks(site, tmp_path):
    path, img, data = site
    size = len(data)
    new = bytearray(data)
    rng = np.random.default_rng(9)
    changed = sorted(rng.choice(size // BS, size // BS // 100, replace=False).tolist())
    for b in changed:  # 1% of the blocks, a few bytes each
        new[b * BS + 17 : b * BS + 23] = rng.integers(0, 256, 6, dtype=np.uint8).tobytes()
    new[100 * BS : 104 * BS] = bytes(4 * BS)  # zeros where data was: trimmed
    zeroed = [b for b in range(100, 104) if b not in changed]
    (tmp_path / "img2").write_bytes(bytes(new))
    out = nx("import", path, "db", tmp_path / "img2", "--update").stdout
    n = len(changed) + len(zeroed)
    assert (f"{size // BS} blocks compared, {n} differed ({len(changed) - (4 - len(zeroed))} "
            f"written, 4 trimmed to zeros)") in out, out
    assert export_sha256(path, "db") == hashlib.sha256(new).hexdigest()
    assert export_sha256(path, "db@s1") == hashlib.sha256(data).hexdigest()  # untouched
    out = nx("import", path, "db", tmp_path / "img2", "--update").stdout
    assert "0 differed (0 written, 0 trimmed to zeros)" in out, out
    with nxstore.Cluster.open(str(path), background=False) as c:
        assert c.vdisk("db").read(0, size) == bytes(new)
        assert c.vdisk("db").verify().clean


def test_import_update_refuses_another_size_or_format(site, tmp_path):
    path, img, data = site
    (tmp_path / "short").write_bytes(data[:-BS])
    last_error(nx("import", path, "db", tmp_path / "short", "--update", rc=1),
               "is not the size of vDisk db", "--update needs the same size")
    last_error(nx("import", path, "nosuch", img, "--update", rc=1), "nosuch")
    nx("import", path, "db", img, "--update", "--create", rc=2)
    qemu_img = __import__("shutil").which("qemu-img")
    assert qemu_img, "qemu-img is needed (Debian: qemu-utils)"
    subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(img),
                    str(tmp_path / "img.qcow2")], check=True, timeout=TIMEOUT)
    last_error(nx("import", path, "db", tmp_path / "img.qcow2", "--update", rc=1),
               "--update reads raw images only", "qcow2")
    # An odd-sized vDisk: the partial last block is compared and written as well.
    odd = bytearray(data[: 3 * BS + 100])
    (tmp_path / "odd").write_bytes(bytes(odd))
    nx("import", path, "odd", tmp_path / "odd", "--create")
    odd[-1] ^= 0xFF
    (tmp_path / "odd").write_bytes(bytes(odd))
    out = nx("import", path, "odd", tmp_path / "odd", "--update").stdout
    assert "4 blocks compared, 1 differed (1 written" in out, out
    assert export_sha256(path, "odd") == hashlib.sha256(odd).hexdigest()


# -- replica verify --------------------------------------------------------------------------
@pytest.fixture
def pair(site, tmp_path):
    """`site` plus cluster 'tokyo' served by a daemon, registered at paris as site 'tokyo',
    holding the replica of db@s1. Yields (paris path, tokyo path, restart) where
    restart() starts tokyo's daemon again and re-registers it."""
    paris = site[0]
    tokyo = tmp_path / "tokyo"
    nx("create", tokyo, "--block-size", "4K")
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    daemons: list[Daemon] = []

    def start() -> Daemon:
        d = Daemon.start(str(tokyo), str(secret))
        daemons.append(d)
        if daemons[:-1]:
            nx("site", "remove", paris, "tokyo")
        nx("site", "add", paris, "tokyo", d.address, "--secret-file", secret)
        return d

    start()
    nx("replicate", paris, "db@s1", "tokyo")
    try:
        yield paris, tokyo, start, daemons
    finally:
        for d in daemons:
            d.cleanup()


def test_replica_verify_clean_then_damage_on_either_side(pair, tmp_path):
    paris, tokyo, start, daemons = pair
    out = nx("replica", "verify", paris, "tokyo", "db@s1").stdout
    assert "verified db@s1 against its replica at tokyo: 1024 blocks (4.0 MiB) match" in out
    report = json.loads(nx("replica", "verify", paris, "tokyo", "db@s1", "--json",
                           "--read-local").stdout)
    assert report["clean"] and report["blocks_compared"] == 1024 and report["differences"] == []
    assert report["bytes_on_wire"] < 1024 * 16 + 64 * 1024  # fingerprints, never block data
    # A snapshot the site does not hold (yet): one clear line.
    nx("snapshot", "create", paris, "db@s2")
    last_error(nx("replica", "verify", paris, "tokyo", "db@s2", rc=1),
               "holds no replica snapshot db@s2")
    last_error(nx("replica", "verify", paris, "nowhere", "db@s1", rc=1), "no remote site")
    last_error(nx("replica", "verify", paris, "tokyo", "db", rc=1), "VDISK@SNAPSHOT")

    # A damaged record here: the table still matches, a verified read here does not.
    damage(paris, "db", [2], snap="s1")
    nx("replica", "verify", paris, "tokyo", "db@s1")
    proc = nx("replica", "verify", paris, "tokyo", "db@s1", "--read-local", rc=1)
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith(f"db@s1: block at offset {2 * BS}: damaged here: extent "), line
    assert line.endswith("data does not match its fingerprint"), line
    last_error(proc, "1 block differs between db@s1 and its replica at tokyo")

    # Damaged replica records at the target: found by the target's verified reads.
    daemons[-1].stop()
    damage(tokyo, "paris:db", [5, 900], snap="s1")
    start()
    proc = nx("replica", "verify", paris, "tokyo", "db@s1", rc=1)
    assert proc.stdout.strip().splitlines() == [
        f"db@s1: block at offset {5 * BS}: damaged at tokyo: its stored record failed "
        "verification",
        f"db@s1: block at offset {900 * BS}: damaged at tokyo: its stored record failed "
        "verification"]
    report = json.loads(nx("replica", "verify", paris, "tokyo", "db@s1", "--json",
                           "--read-local", rc=1).stdout)
    assert [d["offset"] for d in report["differences"]] == [2 * BS, 5 * BS, 900 * BS]


def test_replica_verify_against_a_version_3_peer_fails_clearly(pair, monkeypatch, capsys):
    """This build as the source, an older one (protocol 3) as the target."""
    import functools

    from nxstore.cli import main
    from nxstore.replication import auth
    from nxstore.replication.transport import tcp

    paris, _, _, _ = pair
    monkeypatch.setattr(tcp, "client_handshake", functools.partial(
        auth.client_handshake, versions=(2, 3)))
    assert main(["replica", "verify", str(paris), "tokyo", "db@s1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("nxstore: error: site 'tokyo' speaks replication protocol version 3; "
                   "verifying a replica needs version 4: upgrade nxstore there"), err

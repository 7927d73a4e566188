"""`python -m nxstore.demo --single-site`: the single-site walkthrough of nxstore.

Creates a cluster in ./demo-data (an old one is removed), writes a disk image's
worth of data (~256 MiB: an OS image repeated, compressible logs, incompressible
database pages, zeros, small random writes through the OpLog), shows the space
statistics, snapshots, overwrites, clones, closes, reopens and verifies byte for
byte (sha256 per region) that the vDisk, the snapshot and the clone read exactly
what was written. Exits 1 on any mismatch.

An in-memory model (1 MiB chunk index -> bytes, copy-on-write) holds what each of
the three images must read; unwritten chunks must read as zeros.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from collections.abc import Callable

import numpy as np

from . import Cluster

MiB = 1 << 20
GiB = 1 << 30
CHUNK = MiB  # model granularity and write size
DISK_SIZE = 1 * GiB

Model = dict[int, bytes]  # chunk index -> content (absent: zeros)
_ZERO = bytes(CHUNK)

# The image: (region name, offset, length). Written in 1 MiB chunks.
OS_IMAGE = ("os image", 0, 16 * MiB)
OS_COPIES = [(f"os copy {i}", off * MiB, 16 * MiB) for i, off in ((1, 128), (2, 384), (3, 640))]
LOGS = ("text logs", 192 * MiB, 96 * MiB)
DATABASE = ("database", 448 * MiB, 64 * MiB)
ZEROS = ("zeros", 768 * MiB, 32 * MiB)
CLONE_DATA = ("clone data", 900 * MiB, 8 * MiB)
REGIONS = [OS_IMAGE, *OS_COPIES, LOGS, DATABASE, ZEROS, CLONE_DATA]

_WORDS = (
    b"the of and to in is for on that with as by at from this error warning info debug kernel "
    b"disk write read block cache request response service started stopped user session "
    b"timeout retry connection established closed packet network interface memory page "
    b"allocated freed process thread scheduler queue latency backup snapshot replication "
    b"volume storage node cluster controller heartbeat leader election commit transaction"
).split()


class Text:
    """Log-like text from a word list: compresses ~2-3x with lz4, never repeats a block."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        words = [w + b" " for w in _WORDS] + [b"\n"]
        self.lens = np.array([len(w) for w in words], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.lens)[:-1]])
        self.vocab = np.frombuffer(b"".join(words), dtype=np.uint8)

    def chunk(self, n: int) -> bytes:
        idx = self.rng.integers(0, len(self.lens), n // 2)
        lens = self.lens[idx]
        ends = np.cumsum(lens)
        k = int(np.searchsorted(ends, n)) + 1  # words needed to fill n bytes
        idx, lens, ends = idx[:k], lens[:k], ends[:k]
        begins = np.repeat(ends - lens, lens)
        src = np.repeat(self.starts[idx], lens) + (np.arange(int(ends[-1])) - begins)
        return self.vocab[src[:n]].tobytes()


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / max(seconds, 1e-9) / 1e6:,.0f} MB/s"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def _mib(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


class Report:
    def __init__(self) -> None:
        self.step = 0

    def line(self, what: str, seconds: float | None = None, extra: str = "") -> None:
        self.step += 1
        timing = _ms(seconds) if seconds is not None else ""
        print(f"[{self.step:2d}] {what:<52} {timing:>10}  {extra}".rstrip(), flush=True)

    @staticmethod
    def note(text: str) -> None:
        print(f"     {text}", flush=True)


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def _write_region(vd, model: Model, offset: int, chunks: list[bytes]) -> int:
    for i, data in enumerate(chunks):
        vd.write(offset + i * CHUNK, data)
        model[(offset + i * CHUNK) // CHUNK] = data
    return len(chunks) * CHUNK


def _space(c: Cluster) -> str:
    s = c.stats()
    reduction = s["logical_bytes"] / s["stored_bytes"] if s["stored_bytes"] else 1.0
    return (f"logical {_mib(s['logical_bytes'])}, unique {_mib(s['unique_bytes'])}, "
            f"stored {_mib(s['stored_bytes'])} | dedup {s['dedup_ratio']:.2f}x, "
            f"compression {s['compression_ratio']:.2f}x, total {reduction:.2f}x | "
            f"OpLog {_mib(s['oplog_bytes'])}")


def _verify(read: Callable[[int, int], bytes], model: Model, size: int) -> tuple[list[str], int]:
    """Compare every region (and every byte outside them) with the model, by sha256.
    Returns (mismatch descriptions, bytes read)."""
    bad = []
    covered: set[int] = set()
    for name, off, length in REGIONS:
        got, want = hashlib.sha256(), hashlib.sha256()
        for pos in range(off, off + length, CHUNK):
            covered.add(pos // CHUNK)
            got.update(read(pos, CHUNK))
            want.update(model.get(pos // CHUNK, _ZERO))
        if got.digest() != want.digest():
            bad.append(f"region {name!r} at {off // MiB} MiB: sha256 {got.hexdigest()[:16]} "
                       f"!= expected {want.hexdigest()[:16]}")
    for idx in range(size // CHUNK):
        if idx not in covered:
            data = read(idx * CHUNK, CHUNK)
            if data != model.get(idx, _ZERO):
                bad.append(f"chunk at {idx} MiB (outside the regions) differs")
    return bad, size


def run(path: str, seed: int = 2024) -> int:
    rng = np.random.default_rng(seed)
    text = Text(rng)
    rep = Report()
    t_start = time.perf_counter()
    print(f"nxstore demo: single-site walkthrough in {path}\n")

    # data, generated before the clock runs for the writes
    os_image = [rng.bytes(CHUNK) for _ in range(OS_IMAGE[2] // CHUNK)]
    logs = [text.chunk(CHUNK) for _ in range(LOGS[2] // CHUNK)]
    database = [rng.bytes(CHUNK) for _ in range(DATABASE[2] // CHUNK)]

    if os.path.exists(path):
        shutil.rmtree(path)
    t0 = time.perf_counter()
    c = Cluster.create(path)
    vd = c.create_vdisk("vm-disk", DISK_SIZE)
    rep.line("create cluster + 1 GiB thin vDisk 'vm-disk'", time.perf_counter() - t0,
             f"block size {c.block_size // 1024} KiB")

    head: Model = {}
    t0 = time.perf_counter()
    written = _write_region(vd, head, OS_IMAGE[1], os_image)
    for _, off, _ in OS_COPIES:
        written += _write_region(vd, head, off, os_image)
    written += _write_region(vd, head, LOGS[1], logs)
    written += _write_region(vd, head, DATABASE[1], database)
    written += _write_region(vd, head, ZEROS[1], [_ZERO] * (ZEROS[2] // CHUNK))
    dt = time.perf_counter() - t0
    rep.line(f"write a {_mib(written)} disk image in 1 MiB writes", dt, _rate(written, dt))
    rep.note("os image 16 MiB + 3 identical copies, text logs 96 MiB, "
             "database 64 MiB (random), zeros 32 MiB")

    # small random writes into the database region: these go through the OpLog
    n_small, small = 2048, 4096
    offsets = DATABASE[1] + rng.integers(0, DATABASE[2] // small, n_small) * small
    payload = rng.bytes(n_small * small)
    t0 = time.perf_counter()
    for i, off in enumerate(offsets.tolist()):
        vd.write(off, payload[i * small:(i + 1) * small])
        if i % 32 == 31:
            vd.flush()
    dt = time.perf_counter() - t0
    for i, off in enumerate(offsets.tolist()):
        idx, within = divmod(off, CHUNK)
        chunk = bytearray(head[idx])
        chunk[within:within + small] = payload[i * small:(i + 1) * small]
        head[idx] = bytes(chunk)
    rep.line(f"{n_small:,} random 4 KiB writes, flush every 32", dt,
             f"{n_small / dt:,.0f} IOPS (durable, via the OpLog)")

    _, dt = _timed(vd.flush)
    rep.line("flush", dt)
    rep.note("space: " + _space(c))

    snap, dt = _timed(lambda: vd.snapshot("golden"))
    rep.line("snapshot 'golden' (metadata only)", dt)
    snap_model = dict(head)

    overwrite = [rng.bytes(CHUNK) for _ in range(32)]
    t0 = time.perf_counter()
    n = _write_region(vd, head, LOGS[1], overwrite)
    vd.trim(OS_COPIES[2][1], OS_COPIES[2][2])
    for pos in range(OS_COPIES[2][1], OS_COPIES[2][1] + OS_COPIES[2][2], CHUNK):
        head.pop(pos // CHUNK, None)
    vd.flush()
    dt = time.perf_counter() - t0
    rep.line(f"overwrite {_mib(n)} of logs, trim 'os copy 3', flush", dt, _rate(n, dt))

    clone, dt = _timed(lambda: c.clone(snap, "vm-clone"))
    rep.line("clone 'golden' as 'vm-clone' (metadata only)", dt)
    clone_model = dict(snap_model)
    clone_data = [rng.bytes(CHUNK) for _ in range(CLONE_DATA[2] // CHUNK)]
    _write_region(clone, clone_model, CLONE_DATA[1], clone_data)
    clone.flush()
    rep.note(f"wrote {_mib(CLONE_DATA[2])} into the clone")

    _, dt = _timed(c.drain)
    rep.line("drain the OpLog into the extent store", dt)
    rep.note("space: " + _space(c))

    _, dt = _timed(c.close)
    rep.line("close", dt)
    c, dt = _timed(lambda: Cluster.open(path))
    rep.line("reopen", dt)

    failures = []
    with c:
        sources = [
            ("vDisk 'vm-disk'", c.vdisk("vm-disk").read, head, c.vdisk("vm-disk").size),
            ("snapshot 'vm-disk@golden'", c.snapshot("vm-disk", "golden").read, snap_model,
             c.snapshot("vm-disk", "golden").size),
            ("clone 'vm-clone'", c.vdisk("vm-clone").read, clone_model, c.vdisk("vm-clone").size),
        ]
        for label, read, model, size in sources:
            (bad, nbytes), dt = _timed(lambda r=read, m=model, s=size: _verify(r, m, s))
            status = "OK" if not bad else f"{len(bad)} MISMATCH(ES)"
            rep.line(f"verify {label} (sha256 per region)", dt, f"{_rate(nbytes, dt)}  {status}")
            failures += [f"{label}: {b}" for b in bad]
        problems, dt = _timed(c.scrub)
        rep.line("scrub (verify every stored extent)", dt,
                 "healthy" if not problems else f"{len(problems)} problem(s)")
        failures += [f"scrub: {p}" for p in problems]
        rep.note("space: " + _space(c))

    total = time.perf_counter() - t_start
    print()
    if failures:
        for f in failures:
            print(f"MISMATCH {f}")
        print(f"demo FAILED ({len(failures)} problem(s)) in {total:.1f} s")
        return 1
    print(f"demo OK in {total:.1f} s: the vDisk, its snapshot and the clone read back exactly "
          "what was written, after a reopen.")
    cli = os.path.join(os.path.dirname(sys.executable), "nxstore")
    cli = os.path.relpath(cli) if os.path.exists(cli) else "nxstore"
    print(f"Look around: {cli} info {path}; {cli} vdisk list {path}; "
          f"{cli} snapshot list {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nxstore.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--path", default="demo-data", help="cluster directory (default ./demo-data)")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    try:
        return run(args.path, args.seed)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

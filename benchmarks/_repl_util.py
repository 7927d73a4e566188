"""Helpers of bench_replication.py (not a pytest plugin): target daemons, the
two-process socket ceiling, image data and change sets, borg and restic.

The replication target is always a separate process (`serve_cluster` in a
child Python), as in production; the source cluster is opened in-process.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
from _util import KiB, random_bytes, tree_size

import nxstore

SECRET = "bench-secret-0123456789abcdef"
REGION = 4 * KiB                       # the change unit of the incremental benchmarks

_SERVE = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(name)s %(levelname)s %(message)s")
from nxstore.cli.serve import serve_cluster
serve_cluster(sys.argv[1], "127.0.0.1:0", sys.argv[2])
"""


class TargetDaemon:
    """`serve_cluster(path)` in a child process (or `argv`, another command that logs the
    same "serving site ... on HOST:PORT" line); `address` is its HOST:PORT."""

    def __init__(self, path: str, secret: str = SECRET, timeout: float = 60.0,
                 argv: list[str] | None = None) -> None:
        self.path = path
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            argv or [sys.executable, "-c", _SERVE, path, secret],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        port = None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())
            m = re.search(r"serving site \S+ \(cluster \S+\) on ([\d.]+):(\d+)", line)
            if m:
                port = int(m.group(2))
                break
            if time.monotonic() > deadline:
                break
        if port is None:
            self.stop()
            raise RuntimeError("target daemon did not start:\n" + "\n".join(self.log[-30:]))
        self.address = f"127.0.0.1:{port}"
        # Keep reading stderr so the child never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ReplEnv:
    """A source cluster and a fresh target cluster served by a child process.

    The source is open in this process (`source`), or with `in_process=False` closed
    (only `source_path`: the `nxstore` CLI drives it; registering a target opens it
    briefly)."""

    def __init__(self, root: str, block_size: int, name: str, in_process: bool = True) -> None:
        self.root, self.block_size, self.name = root, block_size, name
        self.source_path = os.path.join(root, f"{name}-src")
        self.source_site = f"{name}src"
        self.source = nxstore.Cluster.create(self.source_path, block_size=block_size,
                                             site_name=self.source_site)
        if not in_process:
            self.source.close()
        self.in_process = in_process
        self.target: TargetDaemon | None = None
        self.site = f"{name}dst"
        self.n = 0

    def fresh_target(self) -> None:
        """Stop and delete the previous target; create, serve and register an empty one."""
        self.stop_target(delete=True)
        self.n += 1
        path = os.path.join(self.root, f"{self.name}-dst{self.n}")
        nxstore.Cluster.create(path, block_size=self.block_size, site_name=self.site).close()
        self.target = TargetDaemon(path)
        source = self.source if self.in_process else nxstore.Cluster.open(self.source_path)
        try:
            if any(s.name == self.site for s in source.remote_sites()):
                source.remove_remote_site(self.site)
            source.add_remote_site(self.site, self.target.address, SECRET)
        finally:
            if not self.in_process:
                source.close()

    def stop_target(self, delete: bool = False) -> None:
        if self.target is not None:
            self.target.stop()
            if delete:
                shutil.rmtree(self.target.path, ignore_errors=True)
            self.target = None

    def replicate(self, snap: nxstore.Snapshot) -> object:
        return self.source.replicate(snap, self.site)

    def close(self) -> None:
        self.stop_target()
        if self.in_process:
            self.source.close()


# --- the ceiling: a plain Python socket sendall between two processes ------------------

_RECV = """
import socket, struct, sys
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
print(srv.getsockname()[1], flush=True)
buf = bytearray(1 << 20)
mv = memoryview(buf)
while True:
    conn, _ = srv.accept()
    hdr = b""
    while len(hdr) < 8:
        part = conn.recv(8 - len(hdr))
        if not part:
            break
        hdr += part
    if len(hdr) < 8:
        conn.close()
        break
    (total,) = struct.unpack("<Q", hdr)
    got = 0
    while got < total:
        n = conn.recv_into(mv)
        if not n:
            break
        got += n
    conn.sendall(b"k")
    conn.close()
"""


class SocketSink:
    """A child process that receives length-prefixed streams and answers one byte each."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _RECV], stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def send(self, data: np.ndarray, chunk: int = 1 << 20) -> None:
        """Connect, sendall `data` in `chunk` calls, wait for the receiver's byte."""
        view = memoryview(data).cast("B")
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(struct.pack("<Q", len(view)))
            for off in range(0, len(view), chunk):
                s.sendall(view[off : off + chunk])
            if s.recv(1) != b"k":
                raise RuntimeError("socket sink did not acknowledge")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with socket.create_connection(("127.0.0.1", self.port)):
                pass  # an empty connection ends the sink's loop
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- data -----------------------------------------------------------------------------


def change_set(nbytes: int, seed: int, fraction: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """`fraction` of the REGION-aligned regions of [0, nbytes): sorted region numbers and
    new incompressible contents (one REGION per region, every one distinct)."""
    regions = nbytes // REGION
    rng = np.random.default_rng(10_000 + seed)
    picked = np.sort(rng.choice(regions, size=max(1, int(regions * fraction)), replace=False))
    data = random_bytes(picked.size * REGION, 20_000 + seed).reshape(-1, REGION)
    return picked, data


def apply_to_vdisk(vd: nxstore.VDisk, picked: np.ndarray, data: np.ndarray) -> None:
    for region, row in zip(picked.tolist(), data, strict=True):
        vd.write(region * REGION, row)


def apply_to_array(image: np.ndarray, picked: np.ndarray, data: np.ndarray) -> None:
    image.reshape(-1, REGION)[picked] = data


def apply_to_file(path: str, picked: np.ndarray, data: np.ndarray) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        for region, row in zip(picked.tolist(), data, strict=True):
            os.pwrite(fd, row, region * REGION)
        os.fsync(fd)
    finally:
        os.close(fd)


def changed_blocks(picked: np.ndarray, block_size: int) -> int:
    """Distinct blocks of `block_size` touched by the REGION numbers `picked`."""
    return int(np.unique(picked // (block_size // REGION)).size)


def text_like(nbytes: int, block_size: int, seed: int, pool: int = 16 << 20) -> np.ndarray:
    """`nbytes` of text-like data, every block distinct: a `pool` of words drawn
    from a 20,000-word vocabulary with Zipf-distributed ranks (exponent 1.4; the
    20 most frequent are English function words, the rest letter-frequency
    weighted gibberish), space separated with a newline after ~1 word in 12;
    lz4 compresses it about 1.8x per block. The pool repeats; each block starts
    with a 16-byte decimal stamp (its number) so no two blocks are equal."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkjqxz", np.uint8)
    freq = 1.0 / np.arange(1, 27)
    vocab = [bytes(rng.choice(letters, size=n, p=freq / freq.sum()))
             for n in np.clip(rng.poisson(5, 20_000), 1, 14).tolist()]
    vocab[:20] = [b"the", b"of", b"and", b"to", b"in", b"is", b"that", b"it", b"for", b"was",
                  b"on", b"are", b"with", b"as", b"be", b"at", b"by", b"this", b"have", b"from"]
    flat = np.frombuffer(b"".join(vocab), np.uint8)
    vlen = np.array([len(v) for v in vocab])
    voff = np.concatenate(([0], np.cumsum(vlen)[:-1]))
    pick = (rng.zipf(1.4, size=pool // 4) - 1) % len(vocab)
    span = vlen[pick] + 1                                  # the word and its separator
    starts = np.concatenate(([0], np.cumsum(span)[:-1]))
    pos = np.arange(int(span.sum())) - np.repeat(starts, span)
    src = flat[np.minimum(np.repeat(voff[pick], span) + pos, flat.size - 1)]
    ends = starts + span - 1
    src[ends] = ord(" ")
    src[ends[rng.random(pick.size) < 1 / 12]] = ord("\n")
    src = src[:pool]
    img = np.empty(nbytes, np.uint8)
    for off in range(0, nbytes, src.size):
        n = min(src.size, nbytes - off)
        img[off : off + n] = src[:n]
    rows = img.reshape(-1, block_size)
    stamps = "".join(f"{i:015d}\n" for i in range(len(rows))).encode()
    rows[:, :16] = np.frombuffer(stamps, np.uint8).reshape(-1, 16)
    return img


# --- borg and restic ------------------------------------------------------------------

# Debian packages of the external tools the benchmarks compare with (peers) or run.
PACKAGES = {"borg": "borgbackup", "restic": "restic", "qemu-img": "qemu-utils",
            "btrfs": "btrfs-progs", "mkfs.btrfs": "btrfs-progs", "mke2fs": "e2fsprogs"}
INSTALL = "apt-get install -y " + " ".join(sorted(set(PACKAGES.values())))


def require(tool: str) -> str:
    """Path of `tool`; raise with the exact install command when it is missing."""
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} not found: install it with `apt-get install -y "
                           f"{PACKAGES[tool]}` (all the benchmarks' tools: `{INSTALL}`); "
                           "the benchmarks compare against it and do not skip it")
    return path


def tool_env(scratch: str) -> dict[str, str]:
    """Non-interactive environment for borg and restic, caches under `scratch`."""
    env = dict(os.environ)
    env.update(
        BORG_PASSPHRASE="", BORG_BASE_DIR=os.path.join(scratch, "borg-base"),
        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes",
        RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=os.path.join(scratch, "restic-cache"))
    return env


def run(cmd: list[str], env: dict[str, str]) -> str:
    res = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    ok = (0, 1) if os.path.basename(cmd[0]) == "borg" else (0,)  # borg: 1 is a warning
    if res.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return res.stdout + res.stderr


class BackupTool:
    """One borg or restic repository; `backup(file)` returns (seconds, bytes added).
    `options` are added to every `borg create` / `restic backup` command."""

    def __init__(self, kind: str, repo: str, env: dict[str, str],
                 options: tuple[str, ...] = ()) -> None:
        self.kind, self.repo, self.env, self.n = kind, repo, env, 0
        self.options = list(options)
        exe = require("borg" if kind == "borg" else "restic")
        self.exe = exe
        if kind == "borg":
            run([exe, "init", "--encryption=none", repo], env)
        else:
            run([exe, "init", "--repo", repo], env)

    def command(self, path: str) -> list[str]:
        self.n += 1
        if self.kind == "borg":
            return [self.exe, "create", *self.options, f"{self.repo}::a{self.n}", path]
        return [self.exe, "backup", "--repo", self.repo, "--quiet", *self.options, path]

    def backup(self, path: str) -> tuple[float, int]:
        before = tree_size(self.repo)
        cmd = self.command(path)
        t0 = time.perf_counter()
        run(cmd, self.env)
        secs = time.perf_counter() - t0
        return secs, tree_size(self.repo) - before


def timed_call(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out

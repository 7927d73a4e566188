"""Peers of issue 17's benchmarks and the nxstore CLI as a user runs it (not a pytest plugin).

- `nx(*args)`: one `nxstore` CLI command (the console script of this Python), timed
  with its start-up; `cli_missing(template)` names a command or flag this tree lacks.
- borg 1.2 `borg create` with BORG_FIXED (fixed 4 MiB chunks, lz4; `--sparse` so borg
  skips the image's holes as nxstore does) through _repl_util.BackupTool.
- qemu-img: an image stored as base + delta, made from the full raw new version:
  `qemu-img rebase` of an empty overlay on the new version onto the base compares
  both and copies the 64 KiB clusters that differ. (`qemu-img convert -B base` does
  not do this job: it writes every allocated cluster of a raw input, 219 MB of a
  256 MiB image with 1% changed, as it skips only what the input's own backing
  chain holds.)
- btrfs send/receive between two loop-mounted btrfs file systems (`BtrfsPair`).

Debian packages: borgbackup, qemu-utils, btrfs-progs, e2fsprogs (_repl_util.INSTALL);
a missing tool fails the benchmark with that install command. Only btrfs may be absent
as a peer, and only where the kernel or the sandbox cannot mount one (BtrfsUnavailable
carries the exact reason); root is needed for the mounts.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

from _repl_util import require
from _util import MiB
from _vmimage import file_digests

BORG_FIXED = ("--chunker-params", "fixed,4194304", "--compression", "lz4", "--sparse")
NXSTORE = os.path.join(os.path.dirname(sys.executable), "nxstore")


def nx(*args: str) -> tuple[float, str]:
    """Run `nxstore ARGS`; returns (wall seconds including start-up, stdout).
    Raises RuntimeError with its stderr when it fails."""
    t0 = time.perf_counter()
    res = subprocess.run([NXSTORE, *args], stdin=subprocess.DEVNULL, capture_output=True,
                         text=True)
    secs = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"nxstore {' '.join(args)} failed ({res.returncode}):\n"
                           f"{res.stderr[-3000:]}")
    return secs, res.stdout


def fill(template: tuple[str, ...], **values: str) -> list[str]:
    """The command line `template` with its {name} fields filled in."""
    return [word.format(**values) for word in template]


def cli_missing(template: tuple[str, ...], feature: str) -> str | None:
    """None when `nxstore` has the command of `template` (its leading words) and every
    --flag in it; else the message naming what is missing."""
    words = []
    for word in template:
        if word.startswith("-") or "{" in word:
            break
        words.append(word)
    flags = [w.split("=")[0] for w in template if w.startswith("--")]
    res = subprocess.run([NXSTORE, *words, "--help"], stdin=subprocess.DEVNULL,
                         capture_output=True, text=True)
    absent = [f for f in flags if f not in res.stdout]
    if res.returncode == 0 and not absent:
        return None
    what = " ".join(["nxstore", *words, *absent])
    return (f"`{what}` is missing from this tree ({feature}, issue 17): merge it, or fix the "
            f"command line {' '.join(template)} in benchmarks/bench_*.py")


# --- qemu-img ---------------------------------------------------------------------------


def qemu_base(raw: str, qcow2: str) -> None:
    """The base image as qcow2 (untimed preparation of the qemu peer)."""
    subprocess.run([require("qemu-img"), "convert", "-f", "raw", "-O", "qcow2", raw, qcow2],
                   check=True, capture_output=True)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def qemu_rebase(base_qcow2: str, new_raw: str, out: str) -> float:
    """Seconds to store `new_raw` as `out` = base_qcow2 + the clusters that differ, with
    `qemu-img rebase`: an empty overlay on the new version, rebased (safe mode: compares
    both backings, copies what differs into the overlay) onto the base; then fsync."""
    qemu = require("qemu-img")
    t0 = time.perf_counter()
    subprocess.run([qemu, "create", "-q", "-f", "qcow2", "-b", new_raw, "-F", "raw", out],
                   check=True, capture_output=True)
    subprocess.run([qemu, "rebase", "-q", "-f", "qcow2", "-b", base_qcow2, "-F", "qcow2", out],
                   check=True, capture_output=True)
    _fsync(out)
    return time.perf_counter() - t0


def qemu_same(image: str, raw: str) -> None:
    """Raise unless `image` (its backing chain included) reads exactly as `raw`."""
    res = subprocess.run([require("qemu-img"), "compare", "-q", "-F", "raw", image, raw],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise AssertionError(f"qemu-img compare {image} {raw}: {res.stdout}{res.stderr}")


# --- btrfs ------------------------------------------------------------------------------


class BtrfsUnavailable(Exception):
    """This kernel or sandbox cannot mount a loop btrfs; the message says why."""


def _run(cmd: list[str]) -> str:
    res = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


class BtrfsPair:
    """Two btrfs file systems on loop devices (direct I/O when the backing file system
    allows it, so a sync reaches the disk as nxstore's fsyncs do) under `root`: the
    source holds `image` as vol/disk.raw in a read-only snapshot SNAP; `send_receive()`
    ships it to the other. Close with `close()`."""

    SNAP = "snap"

    def __init__(self, root: str, image: str) -> None:
        self.btrfs = require("btrfs")
        require("mkfs.btrfs")
        with open("/proc/filesystems") as f:
            if not re.search(r"\bbtrfs\b", f.read()):
                raise BtrfsUnavailable("the kernel has no btrfs (not in /proc/filesystems)")
        self.root = root
        self.loops: list[str] = []
        self.mounts: list[str] = []
        self.direct_io = True
        size = os.path.getsize(image) * 2 + 512 * MiB
        try:
            self.src, self.dst = (self._mount(side, size) for side in ("src", "dst"))
            vol = os.path.join(self.src, "vol")
            _run([self.btrfs, "-q", "subvolume", "create", vol])
            _run(["cp", "--sparse=always", image, os.path.join(vol, "disk.raw")])
            _run([self.btrfs, "-q", "subvolume", "snapshot", "-r", vol,
                  os.path.join(self.src, self.SNAP)])
            _run([self.btrfs, "filesystem", "sync", self.src])
        except BaseException:
            self.close()
            raise
        self.received = os.path.join(self.dst, self.SNAP, "disk.raw")

    def _mount(self, side: str, size: int) -> str:
        backing = os.path.join(self.root, f"btrfs-{side}.img")
        with open(backing, "wb") as f:
            f.truncate(size)
        _run([require("mkfs.btrfs"), "-q", "-f", backing])
        res = subprocess.run(["losetup", "--find", "--show", "--direct-io=on", backing],
                             capture_output=True, text=True)
        if res.returncode != 0:
            self.direct_io = False
            res = subprocess.run(["losetup", "--find", "--show", backing],
                                 capture_output=True, text=True)
        if res.returncode != 0:
            raise BtrfsUnavailable(f"losetup of a loop device failed: {res.stderr.strip()}")
        loop = res.stdout.strip()
        self.loops.append(loop)
        dio = f"/sys/block/{os.path.basename(loop)}/loop/dio"
        if os.path.exists(dio):  # losetup may fall back to buffered I/O without an error
            with open(dio) as f:
                self.direct_io = self.direct_io and f.read().strip() == "1"
        mnt = os.path.join(self.root, f"btrfs-{side}")
        os.makedirs(mnt, exist_ok=True)
        res = subprocess.run(["mount", "-t", "btrfs", loop, mnt], capture_output=True, text=True)
        if res.returncode != 0:
            raise BtrfsUnavailable(f"mount -t btrfs {loop} failed: {res.stderr.strip()}")
        self.mounts.append(mnt)
        return mnt

    def send_receive(self) -> float:
        """Seconds of `btrfs send SNAP | btrfs receive` and a sync of the target file
        system; the received snapshot is deleted (untimed) first if present."""
        if os.path.exists(os.path.join(self.dst, self.SNAP)):
            _run([self.btrfs, "-q", "subvolume", "delete", "-c", os.path.join(self.dst, self.SNAP)])
            _run([self.btrfs, "filesystem", "sync", self.dst])
        t0 = time.perf_counter()
        send = subprocess.Popen([self.btrfs, "-q", "send", os.path.join(self.src, self.SNAP)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        recv = subprocess.run([self.btrfs, "-q", "receive", self.dst], stdin=send.stdout,
                              capture_output=True, text=True)
        assert send.stdout is not None and send.stderr is not None
        send.stdout.close()
        send_err = send.stderr.read().decode()
        if send.wait() != 0 or recv.returncode != 0:
            raise RuntimeError(f"btrfs send | receive failed: {send_err}{recv.stderr}")
        _run([self.btrfs, "filesystem", "sync", self.dst])
        return time.perf_counter() - t0

    def verify_received(self, expected: list[bytes]) -> float:
        """Seconds to hash the received image file (XXH3-128 per 8 MiB, as
        _vmimage.file_digests) and compare with `expected`; raises if it differs."""
        t0 = time.perf_counter()
        got = file_digests(self.received)
        secs = time.perf_counter() - t0
        if got != expected:
            raise AssertionError("the btrfs replica differs from the image")
        return secs

    def close(self) -> None:
        for mnt in reversed(self.mounts):
            subprocess.run(["umount", mnt], capture_output=True)
        for loop in reversed(self.loops):
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        self.mounts, self.loops = [], []
        for side in ("src", "dst"):
            with_suffix = os.path.join(self.root, f"btrfs-{side}")
            shutil.rmtree(with_suffix, ignore_errors=True)
            if os.path.exists(with_suffix + ".img"):
                os.unlink(with_suffix + ".img")

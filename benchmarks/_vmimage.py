"""The VM-like ext4 image of issue 17's benchmarks (not a pytest plugin).

`vm_image()` returns a raw ext4 image of VM_BYTES (2 GiB at NXSTORE_BENCH_SCALE=1)
made by `mke2fs -d` from a directory of generated files, and two new versions of it
with 1% and 5% of its 4 KiB regions rewritten (scattered, incompressible; each made
from the base, `change_set` of _repl_util). The files fill about FILL of the file
system: text-like (lz4 about 1.8x per block), incompressible, and byte-identical
copies of earlier files, by the shares in KINDS, with log-normal sizes (median
256 KiB, up to 64 MiB). Free space stays a hole in the image files, as in a sparse
VM disk. Everything is deterministic (fixed seeds), so the images are built once and
cached under bench_root()/nxbench-cache/ (about 3 x VM_BYTES; delete the directory
to rebuild). Needs mke2fs (Debian e2fsprogs) with -d.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import xxhash
from _repl_util import apply_to_file, change_set, require, text_like
from _util import GiB, KiB, MiB, bench_root, scaled

VM_BYTES = scaled(2 * GiB)
FILL = 0.78                        # file bytes / image bytes (ext4 metadata takes ~5%)
KINDS = {"text": 0.45, "random": 0.35, "copy": 0.20}
VERSION = 1                        # bump when the generator changes (new cache entry)
_MAX_FILE = 64 * MiB


@dataclass(frozen=True)
class VmImage:
    """Paths of the base image and its new versions (all VM_BYTES, raw)."""

    size: int
    base: str
    inc1: str                      # base with 1% of the 4 KiB regions rewritten
    inc5: str                      # base with 5% rewritten

    def version(self, fraction: float) -> str:
        return {0.01: self.inc1, 0.05: self.inc5}[fraction]


def vm_image(size: int = VM_BYTES) -> VmImage:
    """The cached images of `size` bytes, built first if missing."""
    cache = os.path.join(bench_root(), "nxbench-cache", f"vm-ext4-{size}-v{VERSION}")
    img = VmImage(size, *(os.path.join(cache, f"{n}.raw") for n in ("base", "inc1", "inc5")))
    if not os.path.isdir(cache):
        tmp = f"{cache}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            _build(tmp, size)
            os.rename(tmp, cache)  # complete or absent: a crashed build is not reused
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return img


def _build(out: str, size: int) -> None:
    files = os.path.join(out, "files")
    _generate_files(files, int(size * FILL), seed=17)
    base = os.path.join(out, "base.raw")
    with open(base, "wb") as f:
        f.truncate(size)
    subprocess.run([require("mke2fs"), "-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0",
                    "-d", files, base], check=True, capture_output=True)
    shutil.rmtree(files)
    for name, seed, fraction in (("inc1", 1, 0.01), ("inc5", 5, 0.05)):
        path = os.path.join(out, f"{name}.raw")
        subprocess.run(["cp", "--sparse=always", base, path], check=True)
        apply_to_file(path, *change_set(size, seed, fraction))


def _generate_files(root: str, budget: int, seed: int) -> None:
    """Files of `budget` bytes in all under `root`, in 32 directories."""
    rng = np.random.default_rng(seed)
    text_bytes = -(-int(budget * KINDS["text"] * 1.1) // (4 * KiB)) * 4 * KiB
    text = text_like(text_bytes, 4 * KiB, seed=seed)   # cut into the text files in order
    text_pos = 0
    written: list[tuple[str, int]] = []
    total = 0
    kinds, shares = list(KINDS), list(KINDS.values())
    while total < budget:
        n = int(min(_MAX_FILE, budget - total, max(KiB, rng.lognormal(np.log(256 * KiB), 2.0))))
        kind = str(rng.choice(kinds, p=shares))
        if kind == "text" and text_pos + n > text.size:
            kind = "random"
        i = len(written)
        sub = os.path.join(root, f"d{i % 32:02d}")
        os.makedirs(sub, exist_ok=True)
        path = os.path.join(sub, f"f{i:05d}.{kind}")
        if kind == "copy":
            fits = [p for p, m in written if m <= budget - total]
            if not fits:
                continue
            src = fits[int(rng.integers(len(fits)))]
            shutil.copyfile(src, path)
            n = os.path.getsize(path)
        else:
            if kind == "text":
                data = text[text_pos : text_pos + n]
                text_pos += -(-n // (4 * KiB)) * 4 * KiB
            else:
                data = rng.bytes(n)
            with open(path, "wb") as f:
                f.write(data)
        written.append((path, n))
        total += n


def file_digests(path: str, chunk: int = 8 * MiB) -> list[bytes]:
    """XXH3-128 of every `chunk` of the file (to check restores and replicas)."""
    out = []
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        while n := f.readinto(buf):
            out.append(xxhash.xxh3_128_digest(memoryview(buf)[:n]))
    return out


def load(path: str) -> np.ndarray:
    """The image file as a read-only memory map (page cache, not process memory)."""
    return np.memmap(path, np.uint8, mode="r")


def assert_reads_as(disk: object, path: str, chunk: int = 8 * MiB) -> None:
    """Raise unless `disk` (a vDisk or snapshot: read(offset, n)) reads as the image file."""
    expected = file_digests(path, chunk)
    size = os.path.getsize(path)
    for i, off in enumerate(range(0, size, chunk)):
        data = disk.read(off, min(chunk, size - off))  # type: ignore[attr-defined]
        if xxhash.xxh3_128_digest(data) != expected[i]:
            raise AssertionError(f"{disk} differs from {path} in [{off}, {off + chunk})")

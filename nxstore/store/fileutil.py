"""Crash-safe, owner-only file primitives shared by every durable structure.

The rule everywhere: write to a temporary name, fsync it, rename it over the
target, fsync the directory. A reader therefore sees the old or the new file,
never a mix.

Every file of a cluster is created FILE_MODE and every directory DIR_MODE: vDisk data
and the catalogue (which holds the sites' secrets) are the owner's only. These modes
are passed to open/mkdir, so the process umask can only take bits away, never add any.

Checksummed files (`write_checksummed` / `read_checksummed`) carry this header:

    offset size  field
    0      8     magic (ASCII, identifies the kind of file)
    8      4     format version (u32 little-endian)
    12     4     reserved (0)
    16     8     payload length in bytes (u64 LE)
    24     8     XXH3-64 of the payload (u64 LE)
    32     8     XXH3-64 of bytes 0..31 (u64 LE)
    40     ...   payload
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
from collections.abc import Iterable

import xxhash

from ..errors import Corruption, FormatError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<8sII QQ")
HEADER_BYTES = _HEADER.size + 8  # 40
FILE_MODE = 0o600
DIR_MODE = 0o700


def open_private(path: str | os.PathLike, flags: int) -> int:
    """os.open(path, flags | O_CREAT) creating the file FILE_MODE (owner only)."""
    return os.open(path, flags | os.O_CREAT, FILE_MODE)


def make_private_dirs(path: str | os.PathLike) -> None:
    """Create directory `path` and its missing parents, each DIR_MODE (owner only);
    nothing if it exists."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    make_private_dirs(os.path.dirname(path))
    with contextlib.suppress(FileExistsError):  # made meanwhile by another thread
        os.mkdir(path, DIR_MODE)


def tighten_dir(path: str | os.PathLike) -> None:
    """Take group and other access away from directory `path`, so that nothing below it
    is reachable by other users whatever the modes of the files in it (opening a path
    needs search permission on every directory in it). Logged; a process that does not
    own the directory cannot change it and only logs that."""
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & 0o700)
    except PermissionError:
        log.warning("%s is mode %o (other users can reach its files) and this process "
                    "cannot change that: chmod 700 it", path, mode)
        return
    log.warning("%s was mode %o: group and other access removed (now %o)",
                path, mode, mode & 0o700)


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory so that renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> None:
    """Replace `path` with the concatenated chunks, crash-safely.

    Durable when it returns: data fsynced, renamed over `path`, directory fsynced.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                n = os.write(fd, view)
                view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def checksummed_header(magic: bytes, version: int, payload_len: int, payload_hash: int) -> bytes:
    """The 40-byte header of a checksummed file (see module docstring)."""
    head = _HEADER.pack(magic, version, 0, payload_len, payload_hash)
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))


def write_checksummed(
    path: str | os.PathLike, magic: bytes, version: int, payload: list[bytes | memoryview]
) -> None:
    """Atomically write `payload` chunks under a checksummed header."""
    h = xxhash.xxh3_64()
    total = 0
    for chunk in payload:
        h.update(chunk)
        total += memoryview(chunk).nbytes
    atomic_write(path, [checksummed_header(magic, version, total, h.intdigest()), *payload])


def read_checksummed(path: str | os.PathLike, magic: bytes, max_version: int) -> tuple[int, bytes]:
    """Read a file written by `write_checksummed`; return (version, payload).

    Raises FormatError for a foreign magic or a version newer than `max_version`,
    Corruption when a checksum or the length does not match.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < HEADER_BYTES:
        raise Corruption(f"{path}: truncated header ({len(data)} bytes)")
    head = data[: _HEADER.size]
    (head_hash,) = struct.unpack_from("<Q", data, _HEADER.size)
    if xxhash.xxh3_64_intdigest(head) != head_hash:
        raise Corruption(f"{path}: header checksum mismatch")
    got_magic, version, _, length, payload_hash = _HEADER.unpack(head)
    if got_magic != magic:
        raise FormatError(f"{path}: not a {magic!r} file (magic {got_magic!r})")
    if version > max_version:
        raise FormatError(f"{path}: format version {version} is newer than supported {max_version}")
    payload = data[HEADER_BYTES:]
    if len(payload) != length:
        raise Corruption(f"{path}: payload is {len(payload)} bytes, header says {length}")
    if xxhash.xxh3_64_intdigest(payload) != payload_hash:
        raise Corruption(f"{path}: payload checksum mismatch")
    return version, payload

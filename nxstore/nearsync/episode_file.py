"""Episode files at the target: one received LWS episode, durable and self-checking.

`<cluster>/nearsync/<replica vdisk id>/E<seq, 20 digits>.lws`, written with
`fileutil.write_checksummed` (temporary file, fsync, rename, directory fsync) under the
40-byte checksummed-file header (magic NEARSYNC_EPISODE_MAGIC, version
NEARSYNC_EPISODE_VERSION). Payload, little-endian (docs/format.md "NearSync"):

    u64 n (full blocks), u64 m (ranges), u64 range bytes
    u64[n] block indices, n x 16 fingerprints (zero fingerprint = zeros)
    u64[m] range offsets, u64[m] range lengths, the range bytes back to back

The block bytes themselves live in the extent store (found by fingerprint); gc keeps them
while an episode file names them.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from ..constants import FINGERPRINT_BYTES, NEARSYNC_EPISODE_MAGIC, NEARSYNC_EPISODE_VERSION
from ..errors import Corruption
from ..store.fileutil import make_private_dirs, read_checksummed, write_checksummed

_COUNTS = struct.Struct("<QQQ")


@dataclass(frozen=True)
class StoredEpisode:
    """An episode as the target keeps it."""

    indices: np.ndarray       # (n,) uint64
    fingerprints: np.ndarray  # (n, 16) uint8
    offsets: np.ndarray       # (m,) uint64
    lengths: np.ndarray       # (m,) uint64
    range_data: np.ndarray    # (sum(lengths),) uint8


def file_name(seq: int) -> str:
    return f"E{seq:020d}.lws"


def write(path: str, ep: StoredEpisode) -> None:
    """Write `ep` to `path` atomically and durably (directory created if missing)."""
    make_private_dirs(os.path.dirname(path))
    chunks = [
        _COUNTS.pack(ep.indices.size, ep.offsets.size, ep.range_data.size),
        np.ascontiguousarray(ep.indices, dtype="<u8").tobytes(),
        np.ascontiguousarray(ep.fingerprints, dtype=np.uint8).tobytes(),
        np.ascontiguousarray(ep.offsets, dtype="<u8").tobytes(),
        np.ascontiguousarray(ep.lengths, dtype="<u8").tobytes(),
        np.ascontiguousarray(ep.range_data, dtype=np.uint8).tobytes(),
    ]
    write_checksummed(path, NEARSYNC_EPISODE_MAGIC, NEARSYNC_EPISODE_VERSION, chunks)


def read(path: str) -> StoredEpisode:
    """Read and verify an episode file. Raises Corruption (checksums, lengths), FormatError
    (foreign file, newer version), OSError (missing file)."""
    _, payload = read_checksummed(path, NEARSYNC_EPISODE_MAGIC, NEARSYNC_EPISODE_VERSION)
    if len(payload) < _COUNTS.size:
        raise Corruption(f"{path}: episode payload of {len(payload)} bytes is too short")
    n, m, nbytes = _COUNTS.unpack_from(payload, 0)
    sizes = [8 * n, FINGERPRINT_BYTES * n, 8 * m, 8 * m, nbytes]
    if _COUNTS.size + sum(sizes) != len(payload):
        raise Corruption(f"{path}: episode counts do not match its {len(payload)}-byte payload")
    parts, pos = [], _COUNTS.size
    for size in sizes:
        parts.append(np.frombuffer(payload, dtype=np.uint8, count=size, offset=pos))
        pos += size
    lengths = parts[3].view("<u8")
    if int(lengths.sum()) != nbytes:
        raise Corruption(f"{path}: range lengths do not add up to the range bytes")
    return StoredEpisode(parts[0].view("<u8"), parts[1].reshape(n, FINGERPRINT_BYTES),
                         parts[2].view("<u8"), lengths, parts[4])

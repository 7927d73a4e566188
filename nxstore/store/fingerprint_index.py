"""Persistence of the native fingerprint index (fingerprint -> extent id).

The index is derived data: every fingerprint is also in the extent table, so
a missing, stale or damaged index file is rebuilt from the table, never an
error. The file (`INDEX_FILE`, next to the table checkpoint) is a
`fileutil.write_checksummed` file, magic b"NXFPINDX", version
INDEX_FORMAT_VERSION; payload, little-endian:

    offset size  field
    0      8     token of the table checkpoint it was saved with (u64)
    8      8     entries (u64)
    16     ...   FingerprintIndex.to_bytes() (its own header and checksums,
                 docs/format.md)

An index is used only when its token equals the loaded checkpoint's token:
then it describes exactly the checkpointed table, and the store adds the
extents it finds in group tails beyond the checkpoint.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable

import numpy as np

from ..constants import INDEX_FORMAT_VERSION
from ..errors import Corruption, FormatError
from .fileutil import read_checksummed, write_checksummed
from .native import FingerprintIndex

log = logging.getLogger(__name__)

INDEX_MAGIC = b"NXFPINDX"
_HEAD = struct.Struct("<QQ")


def save_index(path: str, index: FingerprintIndex, token: int) -> None:
    """Atomically write `index` tagged with `token` (durable on return)."""
    write_checksummed(
        path, INDEX_MAGIC, INDEX_FORMAT_VERSION, [_HEAD.pack(token, len(index)), index.to_bytes()]
    )


def load_index(path: str, token: int, problems: list[str] | None = None) -> FingerprintIndex | None:
    """The saved index if it exists, is intact and carries `token`; else None
    (with a log line saying why, and a line in `problems` if the file is damaged).
    Never raises for file content."""
    if not os.path.exists(path):
        log.info("%s: no fingerprint index file", path)
        return None
    try:
        _, payload = read_checksummed(path, INDEX_MAGIC, INDEX_FORMAT_VERSION)
        if len(payload) < _HEAD.size:
            raise Corruption(f"{path}: payload too short")
        saved_token, entries = _HEAD.unpack_from(payload)
        if saved_token != token:
            log.info("%s: index is from another checkpoint; rebuilding", path)
            return None
        index = FingerprintIndex.from_bytes(memoryview(payload)[_HEAD.size :])
        if len(index) != entries:
            raise Corruption(f"{path}: {len(index)} entries, header says {entries}")
        return index
    except (Corruption, FormatError) as exc:
        log.warning("fingerprint index unusable (%s); rebuilding it from the extent table", exc)
        if problems is not None:
            problems.append(f"{exc} (rebuilt from the extent table at open)")
        return None


def build_index(fps: np.ndarray, ids: np.ndarray) -> FingerprintIndex:
    """A new index of (fps[i] -> ids[i]); where a fingerprint repeats, the highest id wins."""
    index = FingerprintIndex(capacity=len(ids))
    if len(ids):
        order = np.argsort(ids, kind="stable")
        index.insert(fps[order], ids[order])  # later (higher) ids overwrite
    return index


def load_or_rebuild(
    path: str, token: int | None, source: Callable[[], tuple[np.ndarray, np.ndarray]],
    problems: list[str] | None = None,
) -> tuple[FingerprintIndex, bool]:
    """(index, rebuilt): the saved index for `token`, or one built from `source()`
    (fps, ids of every indexed live extent) when it is missing, stale or bad (damage is
    noted in `problems`)."""
    index = load_index(path, token, problems) if token is not None else None
    if index is not None:
        return index, False
    fps, ids = source()
    log.info("%s: rebuilt fingerprint index from the extent table (%d entries)", path, len(ids))
    return build_index(fps, ids), True

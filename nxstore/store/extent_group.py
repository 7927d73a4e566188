"""Extent group files: the record codec and the recovery scanner.

An extent group (`EG<8 hex>.eg`, numbered from 1, never reused while the store
lives) is an append-only sequence of records, one per extent:

    offset size  field
    0      4     magic b"NXEX"
    4      1     record version (EXTENT_FORMAT_VERSION)
    5      1     flags: bit 0 compressed (lz4 block, no size prefix), bit 1 indexed
    6      2     reserved (0)
    8      8     extent id (u64 LE, >= 1)
    16     4     raw length (u32 LE): the block size
    20     4     stored length (u32 LE): bytes of payload that follow the header
    24     4     container id (u32 LE)
    28     4     reserved (0)
    32     16    fingerprint: XXH3-128 (canonical) of the raw (decompressed) bytes
    48     8     reserved (0)
    56     8     XXH3-64 of header bytes 0..55 (u64 LE)
    64     ...   payload (stored length bytes)

The header checksum protects the header, the fingerprint protects the payload
(after decompression), so a record is valid iff both match. Records are never
rewritten in place; compaction copies them verbatim into a newer group.
See docs/format.md for the recovery rules.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np
import xxhash

from ..constants import EXTENT_FORMAT_VERSION, FINGERPRINT_BYTES
from ..errors import Corruption
from .native import (
    RECORD_HEADER,
    check_headers,
    checksum_rows,
    fingerprint_blocks,
    lz4_compress_rows,
    lz4_decompress_batch,
    lz4_probe_rows,
)
from .parallel import LZ4_PART_BYTES, split_rows

RECORD_MAGIC = b"NXEX"
HEADER_BYTES = 64
_CHECKED = 56  # header bytes covered by the header checksum
FLAG_COMPRESSED = 0x01
FLAG_INDEXED = 0x02
RECORD_FLAGS = FLAG_COMPRESSED | FLAG_INDEXED

_FIELDS = [
    ("magic", "S4", 0),
    ("version", "u1", 4),
    ("flags", "u1", 5),
    ("id", "<u8", 8),
    ("raw", "<u4", 16),
    ("slen", "<u4", 20),
    ("container", "<u4", 24),
    ("fp", ("u1", (FINGERPRINT_BYTES,)), 32),
    ("hck", "<u8", 56),
]
assert RECORD_HEADER == {  # what the native header check reads (native/headers.h)
    "bytes": HEADER_BYTES, "checked": _CHECKED, "magic": RECORD_MAGIC,
    "compressed": FLAG_COMPRESSED,
}  # fmt: skip


_NAMES, _FORMATS, _OFFSETS = zip(*_FIELDS, strict=True)
# a record header as a structured dtype
HEADER_DTYPE = np.dtype({"names": list(_NAMES), "formats": list(_FORMATS),
                         "offsets": list(_OFFSETS), "itemsize": HEADER_BYTES})  # fmt: skip
_GROUP_RE = re.compile(r"^EG([0-9a-f]{8})\.eg$")


def group_file_name(group: int) -> str:
    return f"EG{group:08x}.eg"


def parse_group_name(name: str) -> int | None:
    """Group number of an extent group file name, None for any other name."""
    m = _GROUP_RE.match(name)
    return int(m.group(1), 16) if m else None


class ExtentCorruption(Corruption):
    """An extent failed verification. `.extent_id`, `.batch_index` (position in the
    caller's id array, or None), `.group` and `.offset` name it."""

    def __init__(
        self, message: str, extent_id: int, batch_index: int | None, group: int, offset: int
    ) -> None:
        super().__init__(message)
        self.extent_id = extent_id
        self.batch_index = batch_index
        self.group = group
        self.offset = offset


def fill_headers(
    hdr: np.ndarray,
    ids: np.ndarray,
    flags: np.ndarray,
    block_size: int,
    slens: np.ndarray,
    containers: np.ndarray | int,
    fps: np.ndarray,
) -> None:
    """Fill structured header array `hdr` (zeroed, HEADER_DTYPE or a record view)
    including the checksums."""
    hdr["magic"] = RECORD_MAGIC
    hdr["version"] = EXTENT_FORMAT_VERSION
    hdr["flags"] = flags
    hdr["id"] = ids
    hdr["raw"] = block_size
    hdr["slen"] = slens
    hdr["container"] = containers
    hdr["fp"] = fps
    rows = hdr.view(np.uint8).reshape(len(hdr), hdr.dtype.itemsize)
    hdr["hck"] = checksum_rows(rows, _CHECKED)


def encode_records(
    ids: np.ndarray,
    flags: np.ndarray,
    block_size: int,
    containers: np.ndarray | int,
    fps: np.ndarray,
    rows: np.ndarray,
    limit: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode k records into one buffer; return (buffer uint8, record sizes int64,
    compressed bool (k,)).

    `rows` (k, block_size), C-contiguous, holds the raw blocks. A block is stored as
    its LZ4 block when that is at most `limit` bytes (0: never) and its probe says it
    is worth trying, with FLAG_COMPRESSED added to its `flags`, else raw. Native batch
    calls, split over the cores when the rows worth compressing hold enough work; the
    records are in row order whatever the split.
    """
    k = len(ids)
    attempt = lz4_probe_rows(rows) if limit else np.zeros(k, bool)
    # split by the rows lz4 will really run on: a part of raw copies is not worth a thread hop
    work = int(np.count_nonzero(attempt))
    parts = split_rows(
        lambda lo, hi: lz4_compress_rows(rows[lo:hi], limit, HEADER_BYTES, attempt[lo:hi]), k,
        LZ4_PART_BYTES // block_size * k // max(work, 1),
    )
    buf, lens, comp = parts[0] if len(parts) == 1 else map(np.concatenate, zip(*parts, strict=True))
    sizes = lens.astype(np.int64) + HEADER_BYTES
    hdr = np.zeros(k, HEADER_DTYPE)
    fill_headers(hdr, ids, flags | comp * np.uint8(FLAG_COMPRESSED), block_size, lens, containers,
                 fps)  # fmt: skip
    starts = np.cumsum(sizes) - sizes
    buf[starts[:, None] + np.arange(HEADER_BYTES)] = hdr.view(np.uint8).reshape(k, HEADER_BYTES)
    return buf, sizes, comp


def gather_headers(buf: np.ndarray, rel: np.ndarray) -> np.ndarray:
    """Headers (HEADER_DTYPE, copied) of the records at offsets `rel` of uint8 `buf`."""
    idx = rel.astype(np.int64)[:, None] + np.arange(HEADER_BYTES)
    return np.ascontiguousarray(buf[idx]).reshape(-1).view(HEADER_DTYPE)


def bad_headers(
    hdr: np.ndarray, ids: np.ndarray, slens: np.ndarray, flags: np.ndarray, block_size: int
) -> np.ndarray:
    """Mask of headers (packed HEADER_DTYPE array, as from gather_headers) that
    fail their checksum or disagree with the table: magic, extent id, raw length
    (`block_size`), stored length, compressed flag. One native call."""
    rows = np.ascontiguousarray(hdr).view(np.uint8).reshape(len(hdr), HEADER_BYTES)
    return check_headers(rows, ids, slens, flags, block_size)


def decode_payloads(
    buf: np.ndarray, offs: np.ndarray, slens: np.ndarray, compressed: np.ndarray, block_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The raw blocks (uint8 (k, block_size)) of k payloads, payload i being the
    slens[i] bytes at offs[i] of uint8 `buf`, LZ4 blocks where compressed[i], and
    ok (bool (k,)): False where a payload lies outside buf or does not give exactly
    block_size bytes (its row is then zero; the caller's fingerprint check fails)."""
    offs, slens = np.asarray(offs, np.int64), np.asarray(slens, np.int64)
    k = len(offs)
    raw = np.zeros((k, block_size), np.uint8)
    ok = np.zeros(k, bool)
    inside = (offs >= 0) & (slens >= 0) & (offs + slens <= len(buf))
    c = np.flatnonzero(inside & compressed)
    if c.size:
        ok[c] = lz4_decompress_batch(buf, offs[c], slens[c], block_size, raw, c.astype(np.int64))
    for i in np.flatnonzero(inside & ~compressed & (slens == block_size)).tolist():
        raw[i] = buf[offs[i] : offs[i] + block_size]
        ok[i] = True
    return raw, ok


@dataclass
class ScanResult:
    """Records found by `scan_group` (arrays in file order) and what went wrong."""

    ids: np.ndarray
    offsets: np.ndarray
    slens: np.ndarray
    flags: np.ndarray  # record flags
    containers: np.ndarray
    fps: np.ndarray
    data_ok: np.ndarray  # payload matches the fingerprint
    end: int  # offset just past the last valid record: the group's new length
    torn: bool  # bytes after `end` were a torn tail (caller truncates)
    problems: list[str] = field(default_factory=list)


def _valid_header_at(
    data: bytes, pos: int, block_size: int
) -> tuple[int, int, int, int, bytes] | None:
    """(id, flags, slen, container, fp) if a plausible, checksummed header starts at pos."""
    if len(data) - pos < HEADER_BYTES or data[pos : pos + 4] != RECORD_MAGIC:
        return None
    h = np.frombuffer(data, HEADER_DTYPE, 1, pos)[0]
    if xxhash.xxh3_64_intdigest(data[pos : pos + _CHECKED]) != int(h["hck"]):
        return None
    slen = int(h["slen"])
    if int(h["raw"]) != block_size or not 0 < slen <= block_size or int(h["id"]) == 0:
        return None
    if pos + HEADER_BYTES + slen > len(data):
        return None
    return int(h["id"]), int(h["flags"]), slen, int(h["container"]), bytes(h["fp"])


def scan_group(fd: int, name: str, start: int, end: int, block_size: int) -> ScanResult:
    """Parse and verify the records of a group between byte offsets start and end.

    A bad stretch (bad header or payload) followed by no valid record is a torn
    tail: `end` stops before it and `torn` is set. A bad stretch followed by
    valid records is corruption: it is reported in `problems` and skipped (a
    record with a good header but a bad payload is returned with data_ok False
    so reads of it raise Corruption). Never raises for bad content.
    """
    data = os.pread(fd, end - start, start) if end > start else b""
    problems: list[str] = []
    recs: list[tuple[int, int, int, int, int, bytes]] = []
    bad_from: int | None = None  # start of the current unreadable stretch (relative)
    pos = 0
    while pos < len(data):
        h = _valid_header_at(data, pos, block_size)
        if h is None:
            if bad_from is None:
                bad_from = pos
            nxt = data.find(RECORD_MAGIC, pos + 1)
            pos = len(data) if nxt < 0 else nxt
            continue
        if bad_from is not None:
            problems.append(
                f"{name}: unreadable bytes at offsets {start + bad_from}..{start + pos - 1}"
            )
            bad_from = None
        eid, flags, slen, cont, fp = h
        recs.append((pos, eid, flags, slen, cont, fp))
        pos += HEADER_BYTES + slen
    k = len(recs)
    offs = np.fromiter((r[0] for r in recs), np.int64, k)
    flags_a = np.fromiter((r[2] for r in recs), np.uint8, k)
    slens = np.fromiter((r[3] for r in recs), np.uint32, k)
    fps = np.frombuffer(b"".join(r[5] for r in recs), np.uint8).reshape(k, FINGERPRINT_BYTES)
    raw, decoded = decode_payloads(
        np.frombuffer(data, np.uint8), offs + HEADER_BYTES, slens, (flags_a & FLAG_COMPRESSED) > 0,
        block_size,
    )  # fmt: skip
    raw[~decoded, 0] = 1  # the zero block is never stored: forces a mismatch
    got, _ = fingerprint_blocks(raw, block_size)
    ok = np.all(got == fps, axis=1) if k else np.zeros(0, bool)
    # trailing records with bad payloads belong to the torn tail
    keep = k
    while keep and not ok[keep - 1]:
        keep -= 1
    torn = bad_from is not None or keep < k
    new_end = start + (
        int(offs[keep]) if keep < k else (bad_from if bad_from is not None else len(data))
    )
    for i in np.flatnonzero(~ok[:keep]).tolist():
        problems.append(
            f"{name}: extent {recs[i][1]} at offset {start + int(offs[i])}: "
            "payload does not match its fingerprint"
        )
    return ScanResult(
        ids=np.fromiter((r[1] for r in recs[:keep]), np.uint64, keep),
        offsets=offs[:keep] + start,
        slens=slens[:keep],
        flags=flags_a[:keep],
        containers=np.fromiter((r[4] for r in recs[:keep]), np.uint32, keep),
        fps=fps[:keep].copy(),
        data_ok=ok[:keep],
        end=new_end,
        torn=torn,
        problems=problems,
    )

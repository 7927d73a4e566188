"""OpLog record and segment codec: encode, decode, verify, scan.

The byte layout is documented in docs/format.md; in short (all integers little-endian):

Segment header, 32 bytes::

    0   8  magic b"NXOPLOG\\0"
    8   4  format version (u32, OPLOG_FORMAT_VERSION)
    12  4  reserved, 0
    16  8  first seq (u64): seq of the first record the segment holds (or will hold)
    24  8  XXH3-64 of bytes 0..23

Record, 48-byte header + payload::

    0   2  magic b"OR"
    2   1  type (RecordType)
    3   1  flags, 0 in version 1
    4   4  payload length (u32)
    8   8  seq (u64)
    16  8  vdisk id (u64)
    24  8  offset (u64)
    32  8  length (u64)
    40  8  checksum = XXH3-64(bytes 0..39, seed = XXH3-64(payload))
    48  …  payload

Besides the codec: `recover()` (verify the segments of a directory at open, cut torn tails,
salvage) and `RecordIterator` (read records back). `nxstore.oplog` owns the writing.
"""

from __future__ import annotations

import bisect
import enum
import logging
import os
import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import xxhash

from .constants import OPLOG_FORMAT_VERSION, OPLOG_INDEX_STRIDE_BYTES
from .errors import Corruption, FormatError
from .fileutil import fsync_dir

log = logging.getLogger("nxstore.oplog")

SEGMENT_MAGIC = b"NXOPLOG\x00"
SEGMENT_HEAD = struct.Struct("<8sIIQ")  # the 24 checksummed bytes
SEGMENT_HEADER_BYTES = SEGMENT_HEAD.size + 8  # 32

RECORD_MAGIC = b"OR"
RECORD_HEAD = struct.Struct("<2sBBIQQQQ")  # the 40 bytes the checksum covers directly
RECORD_FULL = struct.Struct("<2sBBIQQQQQ")  # header including the checksum
RECORD_HEADER_BYTES = RECORD_FULL.size  # 48
MAX_PAYLOAD_BYTES = 0xFFFFFFFF  # u32 payload length field

_U64 = struct.Struct("<Q")
_xxh = xxhash.xxh3_64_intdigest


class RecordType(enum.IntEnum):
    """What a record means; see `Record`."""

    WRITE = 1  # offset/length in bytes; payload = the data
    TRIM = 2  # offset/length in bytes; empty payload
    MAP = 3  # offset = first block index, length = block count; payload = u64 LE extent ids
    MARKER = 4  # light-weight snapshot marker; payload opaque; offset = length = 0


_KNOWN_TYPES = frozenset(int(t) for t in RecordType)


@dataclass(frozen=True, slots=True)
class Record:
    """One OpLog record as read back. Immutable."""

    seq: int
    type: RecordType
    vdisk_id: int
    offset: int
    length: int
    payload: bytes

    def extent_ids(self) -> np.ndarray:
        """The extent ids of a MAP record as a read-only uint64 array."""
        return np.frombuffer(self.payload, dtype="<u8")


def record_checksum(head40: bytes | memoryview, payload) -> int:
    """The checksum stored at bytes 40..47 of a record."""
    return _xxh(head40, _xxh(payload))


def encode_segment_header(first_seq: int, version: int = OPLOG_FORMAT_VERSION) -> bytes:
    head = SEGMENT_HEAD.pack(SEGMENT_MAGIC, version, 0, first_seq)
    return head + _U64.pack(_xxh(head))


def decode_segment_header(data: bytes, path: str) -> tuple[int, int]:
    """Return (version, first_seq) of a segment header.

    Raises FormatError for a foreign magic or a newer version (checked first, so that a
    future version may change the rest of the header), Corruption for a short header or a
    checksum mismatch.
    """
    if len(data) < SEGMENT_HEADER_BYTES:
        raise Corruption(f"{path}: segment header truncated ({len(data)} bytes)")
    magic, version, _reserved, first_seq = SEGMENT_HEAD.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        raise FormatError(f"{path}: not an OpLog segment (magic {magic!r})")
    if version > OPLOG_FORMAT_VERSION:
        raise FormatError(
            f"{path}: OpLog format version {version} is newer than supported {OPLOG_FORMAT_VERSION}"
        )
    (stored,) = _U64.unpack_from(data, SEGMENT_HEAD.size)
    if _xxh(data[: SEGMENT_HEAD.size]) != stored:
        raise Corruption(f"{path}: segment header checksum mismatch")
    return version, first_seq


def check_record_at(data, pos: int, end: int) -> tuple[str | None, tuple]:
    """Verify the record at data[pos:]; return (None, fields) or (reason, ()).

    fields = (rtype, plen, seq, vdisk_id, offset, length). Never raises.
    """
    if end - pos < RECORD_HEADER_BYTES:
        return f"incomplete record header ({end - pos} bytes)", ()
    magic, rtype, flags, plen, seq, vdisk, off, ln, csum = RECORD_FULL.unpack_from(data, pos)
    if magic != RECORD_MAGIC:
        return f"bad record magic {magic!r}", ()
    body = pos + RECORD_HEADER_BYTES
    if body + plen > end:
        return f"incomplete record payload ({end - body} of {plen} bytes)", ()
    mv = memoryview(data)
    if record_checksum(mv[pos : pos + RECORD_HEAD.size], mv[body : body + plen]) != csum:
        return "record checksum mismatch", ()
    if rtype not in _KNOWN_TYPES or flags:
        return f"unknown record type {rtype} / flags {flags:#x}", ()
    return None, (rtype, plen, seq, vdisk, off, ln)


class SegmentScan(NamedTuple):
    end: int  # byte offset just past the last good record
    count: int  # good records
    bad_reason: str | None  # why the record at `end` is bad, None if the segment is clean
    valid_after: int  # offset of a verifiable record after the damage, or -1


class SeqIndex:
    """A sparse seq -> byte offset index of one segment, kept in RAM only (rebuilt by the
    scan at open): an entry at the first record at least OPLOG_INDEX_STRIDE_BYTES past the
    previous entry. Reading from a seq then skips to the nearest entry at or below it and
    walks at most one stride of record headers, not the whole segment."""

    __slots__ = ("next_at", "offsets", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.offsets: list[int] = []
        self.next_at = SEGMENT_HEADER_BYTES + OPLOG_INDEX_STRIDE_BYTES

    def note(self, seq: int, offset: int) -> None:
        """Record `seq` starts at `offset` if a stride has passed (callers append in order)."""
        if offset >= self.next_at:
            self.seqs.append(seq)
            self.offsets.append(offset)
            self.next_at = offset + OPLOG_INDEX_STRIDE_BYTES

    def start(self, seq: int) -> int:
        """Byte offset of a record at or before `seq` (the first record if none is indexed)."""
        i = bisect.bisect_right(self.seqs, seq)
        return self.offsets[i - 1] if i else SEGMENT_HEADER_BYTES


def scan_segment(data: bytes, first_seq: int, index: SeqIndex | None = None) -> SegmentScan:
    """Walk the records of a segment image (header included) and verify each.

    Records must carry consecutive seqs starting at `first_seq`; every good one is noted in
    `index` (if given). At the first bad record, search the rest of the image for any record
    whose checksum verifies: its presence tells damage in the middle (Corruption) from a
    torn tail (safe to cut).
    """
    pos = SEGMENT_HEADER_BYTES
    end = len(data)
    expect = first_seq
    while pos < end:
        reason, fields = check_record_at(data, pos, end)
        if reason is None and fields[2] != expect:
            reason = f"record seq {fields[2]} where {expect} was expected"
            return SegmentScan(pos, expect - first_seq, reason, pos)
        if reason is not None:
            return SegmentScan(pos, expect - first_seq, reason, find_valid_record(data, pos + 1))
        if index is not None:
            index.note(expect, pos)
        pos += RECORD_HEADER_BYTES + fields[1]
        expect += 1
    return SegmentScan(pos, expect - first_seq, None, -1)


def find_valid_record(data: bytes, start: int) -> int:
    """Offset of the first record at or after `start` whose checksum verifies, or -1."""
    end = len(data)
    i = data.find(RECORD_MAGIC, start)
    while i != -1:
        if check_record_at(data, i, end)[0] is None:
            return i
        i = data.find(RECORD_MAGIC, i + 1)
    return -1


def iter_bytes(data, base: int, name: str, lo: int, hi: int):
    """Yield the Records with lo <= seq <= hi from an image of whole records.

    `base` is the file offset of data[0] and `name` the object named in errors.
    Raises Corruption naming `name` and the byte offset of a bad record.
    """
    pos = 0
    end = len(data)
    while pos < end:
        reason, fields = check_record_at(data, pos, end)
        if reason is not None:
            raise Corruption(f"{name}: at byte {base + pos}: {reason}")
        rtype, plen, seq, vdisk, off, ln = fields
        body = pos + RECORD_HEADER_BYTES
        if seq > hi:
            return
        if seq >= lo:
            yield Record(seq, RecordType(rtype), vdisk, off, ln, bytes(data[body : body + plen]))
        pos = body + plen


def iter_file(f, path: str, start: int, end: int, lo: int, hi: int):
    """Like iter_bytes, over file bytes [start, end) read through the binary file `f`.

    Records below `lo` are skipped by their length without reading or verifying payloads.
    """
    pos = start
    while pos < end:
        f.seek(pos)
        head = f.read(RECORD_HEADER_BYTES)
        if len(head) < RECORD_HEADER_BYTES or head[:2] != RECORD_MAGIC:
            raise Corruption(f"{path}: at byte {pos}: bad or truncated record header")
        magic, rtype, flags, plen, seq, vdisk, off, ln, csum = RECORD_FULL.unpack(head)
        nxt = pos + RECORD_HEADER_BYTES + plen
        if nxt > end:
            raise Corruption(f"{path}: at byte {pos}: record runs past the end of the log")
        if seq > hi:
            return
        if seq >= lo:
            payload = f.read(plen)
            if (
                len(payload) != plen
                or record_checksum(head[: RECORD_HEAD.size], payload) != csum
                or rtype not in _KNOWN_TYPES
            ):
                raise Corruption(f"{path}: at byte {pos}: record checksum mismatch")
            yield Record(seq, RecordType(rtype), vdisk, off, ln, payload)
        pos = nxt


# --- segments and recovery ---------------------------------------------------------------

_SEGMENT_RE = re.compile(r"^oplog-(\d{20})\.seg$")


def segment_name(first_seq: int) -> str:
    """File name of the segment whose first record has seq `first_seq`."""
    return f"oplog-{first_seq:020d}.seg"


@dataclass
class Segment:
    path: str
    first_seq: int
    size: int  # bytes in the file: header + records written out (not the in-memory buffer)
    version: int
    index: SeqIndex = field(default_factory=SeqIndex)  # of the records appended or scanned


@dataclass(frozen=True)
class Salvage:
    """What opening with salvage=True dropped."""

    path: str  # segment in which the damage was found
    offset: int  # byte offset of the damage in it; the log now ends there
    reason: str
    dropped_bytes: int  # bytes cut from that segment and from the segments deleted whole
    dropped_segments: tuple[str, ...]  # segment files deleted whole
    last_kept_seq: int  # the log now ends with this seq (appends continue after it)


class Recovered(NamedTuple):
    segments: list[Segment]  # verified, oldest first; sizes exclude any cut tail
    last_seq: int
    truncate_at: int | None  # cut the newest segment's file here before appending to it
    salvaged: Salvage | None


def recover(directory: str, salvage: bool) -> Recovered:
    """Find and verify every segment in `directory` (see OpLog.__init__ for the rules).

    Deletes leftover *.tmp segments and, with salvage, the segments after the damage; the
    caller cuts the newest segment at `truncate_at`. Raises Corruption / FormatError.
    """
    found: list[tuple[int, str]] = []
    for name in os.listdir(directory):
        m = _SEGMENT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
        elif name.startswith("oplog-") and name.endswith(".tmp"):
            os.unlink(os.path.join(directory, name))  # a segment whose creation crashed
    found.sort()
    segments: list[Segment] = []
    next_seq = found[0][0] if found else 1
    for i, (name_seq, path) in enumerate(found):
        with open(path, "rb") as f:
            data = f.read()
        reason = None
        try:
            version, first_seq = decode_segment_header(data, path)
        except Corruption as e:
            reason = str(e).removeprefix(f"{path}: ")
        else:
            if first_seq != name_seq:
                reason = f"header says first seq {first_seq}, file name says {name_seq}"
            elif first_seq != next_seq:
                reason = f"seq gap: segment starts at {first_seq}, expected {next_seq}"
        if reason is not None:
            return _damage(directory, salvage, found, i, 0, reason, segments, next_seq, len(data))
        index = SeqIndex()
        scan = scan_segment(data, first_seq, index)
        next_seq = first_seq + scan.count
        segments.append(Segment(path, first_seq, scan.end, version, index))
        if scan.bad_reason is None:
            continue
        if i == len(found) - 1 and scan.valid_after < 0:
            cut = len(data) - scan.end
            log.info("%s: cut torn tail of %d bytes at byte %d", path, cut, scan.end)
            return Recovered(segments, next_seq - 1, scan.end, None)
        reason = scan.bad_reason
        if scan.valid_after >= 0:
            reason += f" (a valid record follows at byte {scan.valid_after})"
        return _damage(
            directory, salvage, found, i, scan.end, reason, segments, next_seq, len(data)
        )
    return Recovered(segments, next_seq - 1, None, None)


def _damage(directory, salvage, found, i, offset, reason, segments, next_seq, seg_len) -> Recovered:
    """Damage at byte `offset` of segment found[i]: raise Corruption, or cut the log there."""
    path = found[i][1]
    if not salvage:
        raise Corruption(f"{path}: at byte {offset}: {reason}")
    dropped = seg_len - offset
    gone = [later for _, later in found[i + 1 :]]
    dropped += sum(os.path.getsize(p) for p in gone)
    for later in reversed(gone):  # newest first: a crash midway leaves the damage in place
        os.unlink(later)
        fsync_dir(directory)
    truncate_at: int | None = offset
    if offset < SEGMENT_HEADER_BYTES:  # the whole segment goes
        os.unlink(path)
        fsync_dir(directory)
        gone.insert(0, path)
        truncate_at = None
    report = Salvage(path, offset, reason, dropped, tuple(gone), next_seq - 1)
    msg = "%s: at byte %d: %s; salvage dropped %d bytes, log now ends at seq %d"
    log.warning(msg, path, offset, reason, dropped, next_seq - 1)
    return Recovered(segments, next_seq - 1, truncate_at, report)


class RecordIterator:
    """Iterator over a snapshot of segment files + buffer; closes its files when done."""

    def __init__(self, files, tail: bytes, tail_name: str, tail_base: int, lo: int, hi: int):
        self._files = files  # [(open binary file, path, start offset, end offset)]
        self._gen = self._run(tail, tail_name, tail_base, lo, hi)

    def _run(self, tail, tail_name, tail_base, lo, hi):
        try:
            for f, path, start, end in self._files:
                yield from iter_file(f, path, start, end, lo, hi)
            if tail:
                yield from iter_bytes(tail, tail_base, tail_name, lo, hi)
        finally:
            self.close()

    def __iter__(self) -> RecordIterator:
        return self

    def __next__(self) -> Record:
        return next(self._gen)

    def close(self) -> None:
        files, self._files = self._files, []
        for f, *_ in files:
            f.close()

    def __del__(self) -> None:
        self.close()

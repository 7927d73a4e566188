"""OpLog record and segment codec: encode, decode, verify, scan.

Kept as one file (565 lines) because it is one on-disk format: the codec, the segment
scanner, recovery and the record reader all rest on the same record check
(`check_record_at`) and change together with the layout.

The byte layout is documented in docs/format.md; in short (all integers little-endian):

Segment header, 64 bytes (version 2; version 1 had only the first 32)::

    0   8  magic b"NXOPLOG\\0"
    8   4  format version (u32, OPLOG_FORMAT_VERSION)
    12  4  reserved, 0
    16  8  first seq (u64): seq of the first record the segment holds (or will hold)
    24  8  XXH3-64 of bytes 0..23
    32  8  synced end (u64): every byte below it was fdatasynced (the watermark)
    40  8  XXH3-64 of (first seq, synced end) as two u64
    48 16  reserved, 0

The watermark is rewritten in place after each fdatasync (and persisted by the next one, at
rotation and at close), so it never claims bytes that were not durable; a cut or damaged
byte below it is damage, never a torn tail.

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
salvage) and `RecordIterator` (read records back). `nxstore.store.oplog` owns the writing.
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

from ..constants import OPLOG_FORMAT_VERSION, OPLOG_INDEX_STRIDE_BYTES, SALVAGE_DIR
from ..errors import Corruption, FormatError
from .fileutil import atomic_write, fsync_dir, make_private_dirs

log = logging.getLogger("nxstore.store.oplog")

SEGMENT_MAGIC = b"NXOPLOG\x00"
SEGMENT_HEAD = struct.Struct("<8sIIQ")  # the 24 checksummed bytes
V1_HEADER_BYTES = SEGMENT_HEAD.size + 8  # 32: version 1 had no watermark
WATERMARK_OFFSET = V1_HEADER_BYTES
WATERMARK = struct.Struct("<QQ")  # synced end, XXH3-64 of (first seq, synced end)
SEGMENT_HEADER_BYTES = 64  # version 2 (current): header + watermark + reserved

RECORD_MAGIC = b"OR"
RECORD_HEAD = struct.Struct("<2sBBIQQQQ")  # the 40 bytes the checksum covers directly
RECORD_FULL = struct.Struct("<2sBBIQQQQQ")  # header including the checksum
RECORD_HEADER_BYTES = RECORD_FULL.size  # 48
MAX_PAYLOAD_BYTES = 0xFFFFFFFF  # u32 payload length field

_U64 = struct.Struct("<Q")
_SEQ_END = struct.Struct("<QQ")
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


def header_bytes(version: int) -> int:
    """Where the records of a segment of format `version` start."""
    return V1_HEADER_BYTES if version < 2 else SEGMENT_HEADER_BYTES


def encode_segment_header(first_seq: int, version: int = OPLOG_FORMAT_VERSION) -> bytes:
    head = SEGMENT_HEAD.pack(SEGMENT_MAGIC, version, 0, first_seq)
    head += _U64.pack(_xxh(head))
    if version < 2:
        return head
    return head + encode_watermark(first_seq, SEGMENT_HEADER_BYTES) + bytes(16)


def encode_watermark(first_seq: int, synced_end: int) -> bytes:
    """The 16 watermark bytes stored at WATERMARK_OFFSET of a version-2 segment."""
    return WATERMARK.pack(synced_end, _xxh(_SEQ_END.pack(first_seq, synced_end)))


def decode_watermark(data: bytes, first_seq: int) -> int | None:
    """The synced end a version-2 header records, or None if its slot fails its checksum."""
    if len(data) < WATERMARK_OFFSET + WATERMARK.size:
        return None
    end, check = WATERMARK.unpack_from(data, WATERMARK_OFFSET)
    if check != _xxh(_SEQ_END.pack(first_seq, end)) or end < SEGMENT_HEADER_BYTES:
        return None
    return end


def decode_segment_header(data: bytes, path: str) -> tuple[int, int]:
    """Return (version, first_seq) of a segment header.

    Raises FormatError for a foreign magic or a newer version (checked first, so that a
    future version may change the rest of the header), Corruption for a short header or a
    checksum mismatch.
    """
    if len(data) < V1_HEADER_BYTES:
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
    if len(data) < header_bytes(version):
        raise Corruption(f"{path}: segment header truncated ({len(data)} bytes)")
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
    durable_count: int  # good records that end at or below the `durable_end` asked for
    bad_reason: str | None  # why the record at `end` is bad, None if the segment is clean
    valid_after: int  # offset of a verifiable record after the damage, or -1


class SeqIndex:
    """A sparse seq -> byte offset index of one segment, kept in RAM only (rebuilt by the
    scan at open): an entry at the first record at least OPLOG_INDEX_STRIDE_BYTES past the
    previous entry. Reading from a seq then skips to the nearest entry at or below it and
    walks at most one stride of record headers, not the whole segment."""

    __slots__ = ("first", "next_at", "offsets", "seqs")

    def __init__(self, first: int = SEGMENT_HEADER_BYTES) -> None:
        self.seqs: list[int] = []
        self.offsets: list[int] = []
        self.first = first  # where the segment's first record starts
        self.next_at = first + OPLOG_INDEX_STRIDE_BYTES

    def note(self, seq: int, offset: int) -> None:
        """Record `seq` starts at `offset` if a stride has passed (callers append in order)."""
        if offset >= self.next_at:
            self.seqs.append(seq)
            self.offsets.append(offset)
            self.next_at = offset + OPLOG_INDEX_STRIDE_BYTES

    def forget_from(self, seq: int) -> None:
        """Drop the entries of records >= seq (they were cut off)."""
        i = bisect.bisect_left(self.seqs, seq)
        del self.seqs[i:], self.offsets[i:]
        self.next_at = (self.offsets[-1] if self.offsets else self.first) + OPLOG_INDEX_STRIDE_BYTES

    def start(self, seq: int) -> int:
        """Byte offset of a record at or before `seq` (the first record if none is indexed)."""
        i = bisect.bisect_right(self.seqs, seq)
        return self.offsets[i - 1] if i else self.first


def scan_segment(
    data: bytes, first_seq: int, index: SeqIndex | None = None, *,
    start: int = SEGMENT_HEADER_BYTES, durable_end: int = 0,
) -> SegmentScan:
    """Walk the records of a segment image (header included) from byte `start`, verify each.

    Records must carry consecutive seqs starting at `first_seq`; every good one is noted in
    `index` (if given) and counted durable if it ends at or below `durable_end`. At the first
    bad record, search the rest of the image for any record whose checksum verifies: its
    presence tells damage in the middle (Corruption) from a torn tail (safe to cut).
    """
    pos = start
    end = len(data)
    expect = first_seq
    durable = 0
    while pos < end:
        reason, fields = check_record_at(data, pos, end)
        if reason is None and fields[2] != expect:
            reason = f"record seq {fields[2]} where {expect} was expected"
            return SegmentScan(pos, expect - first_seq, durable, reason, pos)
        if reason is not None:
            valid = find_valid_record(data, pos + 1)
            return SegmentScan(pos, expect - first_seq, durable, reason, valid)
        if index is not None:
            index.note(expect, pos)
        pos += RECORD_HEADER_BYTES + fields[1]
        expect += 1
        if pos <= durable_end:
            durable += 1
    return SegmentScan(pos, expect - first_seq, durable, None, -1)


def data_offset_of(data: bytes, seq: int) -> int:
    """Offset in `data` (whole, verified records from its start) of the record `seq`."""
    pos = 0
    while pos < len(data):
        fields = RECORD_FULL.unpack_from(data, pos)
        if fields[4] == seq:
            return pos
        pos += RECORD_HEADER_BYTES + fields[3]
    raise Corruption(f"record {seq} not found")


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
class LostRecord:
    """A record that salvage dropped although it was intact (it followed the damage)."""

    seq: int
    type: str  # RecordType name
    vdisk_id: int
    offset: int  # bytes (WRITE, TRIM) or first block (MAP)
    length: int  # bytes (WRITE, TRIM) or blocks (MAP)
    acknowledged: bool  # it was below the synced watermark: a sync() had returned for it


@dataclass(frozen=True)
class Salvage:
    """What opening with salvage=True dropped."""

    path: str  # segment in which the damage was found
    offset: int  # byte offset of the damage in it; the log now ends there
    reason: str
    dropped_bytes: int  # bytes cut from that segment and from the segments deleted whole
    dropped_segments: tuple[str, ...]  # segment files deleted whole
    last_kept_seq: int  # the log now ends with this seq (appends continue after it)
    lost: tuple[LostRecord, ...] = ()  # intact records after the damage, dropped with it
    acknowledged_lost: bool = False  # bytes below a synced watermark were dropped


class Recovered(NamedTuple):
    segments: list[Segment]  # verified, oldest first; sizes exclude any cut tail
    last_seq: int
    truncate_at: int | None  # cut the newest segment's file here before appending to it
    salvaged: Salvage | None
    durable_seq: int  # records <= this were durable (synced) before the log was opened
    problems: list[str]  # harmless damage found (an unreadable watermark slot)


def recover(directory: str, salvage: bool) -> Recovered:
    """Find and verify every segment in `directory` (see OpLog.__init__ for the rules).

    A version-2 segment's watermark says how many of its bytes were synced: a bad record or
    a missing byte below it is damage, never a torn tail. Deletes leftover *.tmp segments
    and, with salvage, the segments after the damage; the caller cuts the newest segment at
    `truncate_at`. Raises Corruption / FormatError.
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
    problems: list[str] = []
    next_seq = found[0][0] if found else 1
    durable_seq = next_seq - 1
    for i, (name_seq, path) in enumerate(found):
        newest = i == len(found) - 1
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
            return _damage(directory, salvage, found, i, 0, reason, segments, next_seq, data, 0)
        start = header_bytes(version)
        synced = start
        mark_damaged = False
        if version >= 2:
            mark = decode_watermark(data, first_seq)
            if mark is None and salvage and not newest:  # sealed: its records end it
                scan = scan_segment(data, first_seq, start=start)
                if scan.bad_reason is None:
                    _rewrite_watermark(path, first_seq, scan.end)
                    mark = scan.end
            if mark is None:
                problems.append(f"{path}: synced watermark unreadable (damaged); "
                                "its tail is judged by the records alone")
                log.warning("%s", problems[-1])
                mark_damaged = True
            else:
                synced = mark
        if not newest and version < 2:
            synced = len(data)  # older segments were synced whole at rotation
        index = SeqIndex(start)
        scan = scan_segment(data, first_seq, index, start=start, durable_end=synced)
        next_seq = first_seq + scan.count
        durable_seq = first_seq + scan.durable_count - 1 if newest else next_seq - 1
        segments.append(Segment(path, first_seq, scan.end, version, index))
        if scan.end < synced:
            reason = scan.bad_reason or f"file ends at byte {len(data)}"
            reason += f"; bytes up to {synced} were synced (acknowledged) here"
            return _damage(directory, salvage, found, i, scan.end, reason, segments, next_seq,
                           data, synced)
        if scan.bad_reason is None:
            continue
        if newest and scan.valid_after < 0 and not mark_damaged:
            cut = len(data) - scan.end
            log.info("%s: cut torn tail of %d bytes at byte %d", path, cut, scan.end)
            return Recovered(segments, next_seq - 1, scan.end, None, durable_seq, problems)
        reason = scan.bad_reason
        if scan.valid_after >= 0:
            reason += f" (a valid record follows at byte {scan.valid_after})"
        elif newest:
            # The slot is rewritten in place inside the header's first sector: a crash
            # leaves it old or new, never unreadable. With it damaged, this torn-looking
            # tail may be synced records that were zeroed or cut, so it is not cut silently.
            reason += ("; the synced watermark is unreadable, so a crash cannot be told "
                       "from damage to synced records")
        return _damage(directory, salvage, found, i, scan.end, reason, segments, next_seq,
                       data, len(data) if not newest else synced)
    return Recovered(segments, next_seq - 1, None, None, durable_seq, problems)


def _damage(directory, salvage, found, i, offset, reason, segments, next_seq, data,
            synced) -> Recovered:
    """Damage at byte `offset` of segment found[i] (whose bytes below `synced` had been
    synced): raise Corruption, or cut the log there and report what went."""
    path = found[i][1]
    if not salvage:
        raise Corruption(f"{path}: at byte {offset}: {reason}")
    gone = [later for _, later in found[i + 1 :]]
    lost = _intact_after(data, max(offset, V1_HEADER_BYTES), synced)
    for later in gone:
        with open(later, "rb") as f:
            later_data = f.read()
        later_synced = len(later_data) if later != found[-1][1] else _synced_end(later_data)
        lost += _intact_after(later_data, V1_HEADER_BYTES, later_synced)
    dropped = len(data) - offset + sum(os.path.getsize(p) for p in gone)
    # Nothing is destroyed: what the log drops is kept in salvaged/ for forensics.
    keep = os.path.join(directory, SALVAGE_DIR)
    make_private_dirs(keep)
    if offset < len(data):
        atomic_write(os.path.join(keep, f"{os.path.basename(path)}.from-{offset}"),
                     [data[offset:]])
    for later in reversed(gone):  # newest first: a crash midway leaves the damage in place
        os.rename(later, os.path.join(keep, os.path.basename(later)))
        fsync_dir(directory)
    fsync_dir(keep)
    truncate_at: int | None = offset
    if offset < V1_HEADER_BYTES:  # the whole segment goes
        os.rename(path, os.path.join(keep, os.path.basename(path)))
        fsync_dir(directory)
        gone.insert(0, path)
        truncate_at = None
    acknowledged = offset < synced or any(r.acknowledged for r in lost)
    report = Salvage(path, offset, reason, dropped, tuple(gone), next_seq - 1, tuple(lost),
                     acknowledged)
    msg = "%s: at byte %d: %s; salvage dropped %d bytes (%d intact records%s), log now ends at seq %d"
    log.warning(msg, path, offset, reason, dropped, len(lost),
                ", acknowledged writes among them" if acknowledged else "", next_seq - 1)
    # durable_seq 0: after a salvage no record is held to the "synced, so complete" rule.
    return Recovered(segments, next_seq - 1, truncate_at, report, 0, [])


def _rewrite_watermark(path: str, first_seq: int, end: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, encode_watermark(first_seq, end), WATERMARK_OFFSET)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    log.warning("%s: rewrote its damaged synced watermark (%d bytes)", path, end)


def _synced_end(data: bytes) -> int:
    """The watermark of a segment image (its header size if it has none or it is bad)."""
    try:
        version, first_seq = decode_segment_header(data, "")
    except (Corruption, FormatError):
        return V1_HEADER_BYTES
    return (decode_watermark(data, first_seq) if version >= 2 else None) or header_bytes(version)


def _intact_after(data: bytes, start: int, synced: int) -> list[LostRecord]:
    """Every record that verifies in data[start:], found by resynchronising after damage."""
    out: list[LostRecord] = []
    pos = find_valid_record(data, start)
    while pos >= 0:
        reason, fields = check_record_at(data, pos, len(data))
        if reason is not None:
            pos = find_valid_record(data, pos + 1)
            continue
        rtype, plen, seq, vdisk, off, ln = fields
        end = pos + RECORD_HEADER_BYTES + plen
        out.append(LostRecord(seq, RecordType(rtype).name, vdisk, off, ln, end <= synced))
        pos = end if end < len(data) else -1
    return out


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

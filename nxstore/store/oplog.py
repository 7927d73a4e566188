"""The OpLog: the cluster's single write-ahead log.

Kept as one file (561 lines) because it is one class whose append, group-commit sync,
segment rotation, release and back-pressure share one lock, its condition and the active
segment's state; the format itself (codec, recovery, reading) is in oplog_record.py.

Small and random vDisk writes are appended here and acknowledged once `sync()` made them
durable; the drain later moves them into the extent store and calls `release()`. Light-weight
snapshot (LWS) markers are records too: the episodes between two markers are what NearSync reads
back with `records()` and ships.

Files: ``<directory>/oplog-<first seq, 20 digits>.seg``. A segment is a 32-byte header (magic,
format version, first seq, XXH3-64 of the header) followed by records: a 48-byte header (magic
"OR", type, flags, payload length, seq, vdisk id, offset, length, checksum) and the payload. The
checksum is XXH3-64 over header bytes 0..39 seeded with XXH3-64 of the payload, so a flipped
byte anywhere in a record is detected. Seqs are consecutive u64s starting at 1, shared by all
vDisks; file order is seq order. Byte-by-byte layout and the crash-safety argument:
docs/format.md; codec, recovery and reading: `nxstore.store.oplog_record`.

Durability: `append_*` only buffers (in memory, written out early past OPLOG_BUFFER_BYTES);
`sync()` writes the buffer with one os.write and fdatasyncs; concurrent callers share one
fdatasync (group commit). What `sync(seq)` returned for survives kill -9 and power loss.
After each fdatasync the segment's synced watermark (header bytes 32..47) is rewritten in
place; the next fdatasync (or rotation, or close) makes it durable. Recovery treats any
missing or bad byte below the watermark as damage: only bytes written after the last sync
may ever be cut as a torn tail.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import xxhash

from ..constants import (
    OPLOG_BUFFER_BYTES,
    OPLOG_CAP_BYTES,
    OPLOG_FORMAT_VERSION,
    OPLOG_SEGMENT_BYTES,
    SALVAGE_DIR,
)
from ..errors import ClosedError, InvalidArgument, raise_os_error
from .fileutil import atomic_write, fsync_dir, make_private_dirs, open_private
from .lockorder import Level, ordered_lock
from .oplog_record import (
    MAX_PAYLOAD_BYTES,
    RECORD_HEAD,
    RECORD_MAGIC,
    SEGMENT_HEADER_BYTES,
    WATERMARK_OFFSET,
    LostRecord,
    Record,
    RecordIterator,
    RecordType,
    Salvage,
    Segment,
    data_offset_of,
    encode_segment_header,
    encode_watermark,
    recover,
    segment_name,
)

__all__ = ["LostRecord", "OpLog", "Record", "RecordType", "Salvage"]

log = logging.getLogger(__name__)

_U64 = struct.Struct("<Q")
_pack_head = RECORD_HEAD.pack
_pack_u64 = _U64.pack
_xxh = xxhash.xxh3_64_intdigest
_WRITE, _TRIM, _MAP, _MARKER = (int(t) for t in RecordType)


class OpLog:
    """A directory of segments; see the module docstring.

    Thread-safe. `on_pressure`: a callable (no arguments) or None, invoked by a caller of
    `wait_for_space` that is about to block, outside every OpLog lock.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        segment_bytes: int = OPLOG_SEGMENT_BYTES,
        cap_bytes: int = OPLOG_CAP_BYTES,
        salvage: bool = False,
    ) -> None:
        """Open (creating it if missing) the OpLog in `directory` and recover it.

        A torn tail (incomplete or unverifiable last records of the newest segment) is cut
        off (logged at INFO). Any other bad record, bad segment header or gap in the seq space
        raises Corruption naming the file and byte offset, unless `salvage` is true: then the
        log is truncated at the damage (logged at WARNING) and `self.salvaged` says what went.
        A foreign or newer-version segment raises FormatError. Everything recovered is durable
        on return (`durable_seq == last_seq`).
        """
        if segment_bytes <= 0 or cap_bytes <= 0:
            raise InvalidArgument("segment_bytes and cap_bytes must be positive")
        self._dir = os.fspath(directory)
        self._segment_bytes = segment_bytes
        self._cap = cap_bytes
        self._lock = ordered_lock(Level.OPLOG, f"OpLog {self._dir}")
        self._cond = threading.Condition(self._lock)
        # serialises segment deletion (prefix order)
        self._release_lock = ordered_lock(Level.OPLOG_RELEASE, f"OpLog release {self._dir}")
        self._buf = bytearray()
        self._closed = False
        self._syncing = False  # a group-commit leader is in fdatasync outside the lock
        self._io_error: OSError | None = None
        self._fd = -1
        self._mark_dirty = False  # a watermark was written that no fdatasync covered yet
        self.on_pressure: Callable[[], object] | None = None
        # Called (no arguments, outside every OpLog lock) before each fdatasync: what a
        # record names elsewhere (a MAP record's extents) must be durable before it is.
        self.before_sync: Callable[[], object] | None = None
        make_private_dirs(self._dir)
        found = recover(self._dir, salvage)
        self._segments: list[Segment] = found.segments
        self._last_seq = found.last_seq
        self.salvaged = found.salvaged
        #: Records with seq <= this had been synced before this open (a MAP record among
        #: them names extents that were durable too); later ones may never have been.
        self.recovered_durable_seq = found.durable_seq
        #: Harmless damage found at open (an unreadable watermark slot), for scrub.
        self.problems: list[str] = found.problems
        self._open_active(found.truncate_at)
        self._written_seq = self._last_seq  # records <= this are in the file
        self._durable_seq = self._last_seq  # records <= this are fdatasynced
        self._durable_size = self._segments[-1].size  # durable bytes of the active segment

    # --- segment files ---------------------------------------------------------------------

    def _open_active(self, truncate_at: int | None) -> None:
        """Open the newest segment for appending (cutting it at truncate_at) or start one."""
        if self._segments:
            seg = self._segments[-1]
            fd = os.open(seg.path, os.O_WRONLY)
            try:
                if truncate_at is not None:
                    os.ftruncate(fd, truncate_at)
                    seg.size = truncate_at
                os.fdatasync(fd)  # what a crashed predecessor left in the page cache
                if seg.version == OPLOG_FORMAT_VERSION:
                    # Everything kept is durable now; say so before appending after it.
                    os.pwrite(fd, encode_watermark(seg.first_seq, seg.size), WATERMARK_OFFSET)
                    os.fdatasync(fd)
                if seg.version == OPLOG_FORMAT_VERSION and seg.size < self._segment_bytes:
                    os.lseek(fd, seg.size, os.SEEK_SET)
                    self._fd = fd
                    return
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        self._start_segment(self._last_seq + 1)

    def _start_segment(self, first_seq: int) -> None:
        """Create a segment durably (tmp + fsync + rename + dir fsync); make it active."""
        name = segment_name(first_seq)
        path = os.path.join(self._dir, name)
        tmp = path + ".tmp"
        fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, encode_segment_header(first_seq))
            os.fdatasync(fd)
            os.rename(tmp, path)
            fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._segments.append(Segment(path, first_seq, SEGMENT_HEADER_BYTES, OPLOG_FORMAT_VERSION))

    # --- appends ----------------------------------------------------------------------

    def append_write(self, vdisk_id: int, offset: int, data) -> int:
        """Append a WRITE of the bytes-like `data` at byte `offset`; return its seq.

        Not durable until `sync()`. Raises InvalidArgument for negative or too-large
        numbers, ClosedError after close().
        """
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        n = mv.nbytes
        return self._append(_WRITE, vdisk_id, offset, n, mv)

    def append_trim(self, vdisk_id: int, offset: int, length: int) -> int:
        """Append a TRIM of `length` bytes at byte `offset`; return its seq."""
        return self._append(_TRIM, vdisk_id, offset, length, b"")

    def append_map(self, vdisk_id: int, first_block: int, extent_ids: np.ndarray) -> int:
        """Append a MAP: blocks first_block.. now point at `extent_ids` (1-D, >= 0)."""
        ids = np.asarray(extent_ids)
        if ids.ndim != 1 or ids.dtype.kind not in "ui":
            raise InvalidArgument("extent_ids must be a 1-D integer array")
        if ids.dtype.kind == "i" and ids.size and int(ids.min()) < 0:
            raise InvalidArgument("extent ids must not be negative")
        payload = np.ascontiguousarray(ids, dtype="<u8").tobytes()
        return self._append(_MAP, vdisk_id, first_block, len(ids), payload)

    def append_marker(self, vdisk_id: int, payload: bytes) -> int:
        """Append a MARKER (light-weight snapshot) with an opaque payload; return its seq."""
        return self._append(_MARKER, vdisk_id, 0, 0, bytes(payload))

    def _append(self, rtype: int, vdisk_id: int, offset: int, length: int, payload) -> int:
        plen = len(payload)
        if plen > MAX_PAYLOAD_BYTES:
            raise InvalidArgument(f"record payload of {plen} bytes exceeds {MAX_PAYLOAD_BYTES}")
        phash = _xxh(payload)  # outside the lock: the only O(payload) work besides the copy
        with self._lock:
            if self._closed or self._io_error is not None:
                self._check_open()
            seq = self._last_seq + 1
            try:
                head = _pack_head(RECORD_MAGIC, rtype, 0, plen, seq, vdisk_id, offset, length)
            except struct.error:
                raise InvalidArgument(
                    f"vdisk_id/offset/length out of range: {vdisk_id}, {offset}, {length}"
                ) from None
            buf = self._buf
            seg = self._segments[-1]
            seg.index.note(seq, seg.size + len(buf))
            buf += head
            buf += _pack_u64(_xxh(head, phash))
            buf += payload
            self._last_seq = seq
            if len(buf) >= OPLOG_BUFFER_BYTES:
                self._write_buffer_locked()
            if self._segments[-1].size + len(self._buf) >= self._segment_bytes:
                self._rotate_locked(
                    lambda: self._segments[-1].size + len(self._buf) >= self._segment_bytes
                )
            return seq

    # --- durability -------------------------------------------------------------------

    def sync(self, seq: int | None = None) -> None:
        """Return once every record with seq <= `seq` (default: all appended) is durable.

        Group commit: while one caller (the leader) is in fdatasync, others wait; the next
        leader writes everything appended meanwhile and one fdatasync covers them all. A seq
        already durable returns at once; a seq beyond last_seq means "everything appended".
        Raises ClosedError after close(), OSError if the write or fdatasync fails (the log is
        then unusable: every later call raises OSError).
        """
        with self._cond:
            self._check_open()
            target = self._last_seq if seq is None else min(seq, self._last_seq)
            while self._durable_seq < target:
                if self._syncing:
                    self._cond.wait()
                    if self._durable_seq >= target:
                        break
                    self._check_open()
                    continue
                self._write_buffer_locked()
                upto = self._written_seq
                seg = self._segments[-1]
                size = seg.size
                fd = self._fd
                self._syncing = True
                self._lock.release()
                err: OSError | None = None
                try:
                    if self.before_sync is not None:
                        self.before_sync()
                    os.fdatasync(fd)
                    # Only now may the watermark claim these bytes; the next fdatasync of
                    # this file persists it (a kill -9 keeps it in the page cache anyway).
                    os.pwrite(fd, encode_watermark(seg.first_seq, size), WATERMARK_OFFSET)
                    self._mark_dirty = True
                except OSError as e:
                    err = e
                finally:
                    self._lock.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                if err is not None:
                    self._io_error = err
                    raise_os_error(err, f"OpLog {self._dir}")
                if upto > self._durable_seq:
                    self._durable_seq = upto
                    self._durable_size = size

    def _write_buffer_locked(self) -> None:
        buf = self._buf
        if not buf:
            return
        self._buf = bytearray()
        try:
            view = memoryview(buf)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            self._io_error = e
            raise_os_error(e, f"OpLog {self._dir}")
        self._segments[-1].size += len(buf)
        self._written_seq = self._last_seq

    def _rotate_locked(self, still_needed: Callable[[], bool]) -> None:
        """Close the active segment durably and start the next one, if still_needed()."""
        while self._syncing:
            self._cond.wait()
        if self._closed or not still_needed():
            return
        self._check_open()
        self._write_buffer_locked()
        seg = self._segments[-1]
        try:
            if self.before_sync is not None:
                self.before_sync()
            os.fdatasync(self._fd)
            os.pwrite(self._fd, encode_watermark(seg.first_seq, seg.size), WATERMARK_OFFSET)
            os.fdatasync(self._fd)  # a sealed segment's watermark covers all of it, durably
        except OSError as e:
            self._io_error = e
            raise_os_error(e, f"OpLog {self._dir}")
        self._mark_dirty = False
        self._durable_seq = self._written_seq
        os.close(self._fd)
        self._fd = -1
        try:
            self._start_segment(self._last_seq + 1)
        except OSError as e:  # no active segment: unusable like after a failed write
            self._io_error = e
            raise_os_error(e, f"OpLog {self._dir}")
        self._durable_size = SEGMENT_HEADER_BYTES
        self._cond.notify_all()

    def drop_unacknowledged(self, from_seq: int) -> int:
        """Cut the log before record `from_seq`, found at open past every synced watermark
        (`recovered_durable_seq < from_seq`): part of a torn tail whose write was never
        acknowledged (a MAP record whose extents did not survive the crash). Without the
        cut, the next sync would claim it and a later open would take it as acknowledged.
        The bytes go to salvaged/. Returns how many records were dropped. Call before
        appending anything (at open). Raises InvalidArgument for a synced record."""
        with self._lock:
            self._check_open()
            if from_seq <= self.recovered_durable_seq:
                raise InvalidArgument(f"record {from_seq} was synced: it is not torn")
            if from_seq > self._last_seq:
                return 0
            if self._buf or self._written_seq != self._last_seq:
                raise InvalidArgument("drop_unacknowledged is for a log nothing was appended to")
            seg = self._segments[-1]
            if from_seq < seg.first_seq:
                raise InvalidArgument(f"record {from_seq} is not in the newest segment")
            with open(seg.path, "rb") as f:
                f.seek(seg.index.start(from_seq))
                data = f.read()
            pos = seg.index.start(from_seq)
            offset = pos + data_offset_of(data, from_seq)
            dropped = self._last_seq - from_seq + 1
            keep = os.path.join(self._dir, SALVAGE_DIR)
            make_private_dirs(keep)
            atomic_write(os.path.join(keep, f"{os.path.basename(seg.path)}.from-{offset}"),
                         [data[offset - pos :]])
            os.ftruncate(self._fd, offset)
            os.lseek(self._fd, offset, os.SEEK_SET)
            os.pwrite(self._fd, encode_watermark(seg.first_seq, offset), WATERMARK_OFFSET)
            os.fdatasync(self._fd)
            seg.size = offset
            seg.index.forget_from(from_seq)
            self._last_seq = self._written_seq = self._durable_seq = from_seq - 1
            self._durable_size = offset
            log.warning("%s: dropped %d unacknowledged record(s) from seq %d (kept in %s)",
                        seg.path, dropped, from_seq, keep)
            return dropped

    # --- space ------------------------------------------------------------------------

    def release(self, upto_seq: int) -> None:
        """Every record <= upto_seq is no longer needed.

        Deletes (oldest first, fsyncing the directory after each) every segment all of whose
        records are <= upto_seq. When everything appended is released, the active segment is
        closed and a fresh one started so that it can go too. Wakes `wait_for_space` waiters.
        Idempotent. Records of a retained segment stay readable through `records()`, and come
        back after a reopen: replaying them must be harmless.
        """
        with self._release_lock:
            with self._cond:
                self._check_open()
                segs = self._segments
                active = segs[-1]
                if upto_seq >= self._last_seq >= active.first_seq:
                    self._rotate_locked(
                        lambda: upto_seq >= self._last_seq >= self._segments[-1].first_seq
                    )
                doomed: list[Segment] = []
                while len(segs) > 1 and segs[1].first_seq - 1 <= upto_seq:
                    doomed.append(segs.pop(0))
                if doomed:
                    self._cond.notify_all()
            for seg in doomed:
                os.unlink(seg.path)
                fsync_dir(self._dir)

    def wait_for_space(self, nbytes: int, timeout: float | None = None) -> bool:
        """Block while bytes_used + nbytes > cap_bytes; return False on timeout, else True.

        Call it without holding your own locks. Before blocking, `on_pressure` (if set) is
        called once, outside the OpLog's locks. Never blocks when no record is retained (so a
        request larger than the cap cannot wait forever). Raises ClosedError if the log is or
        gets closed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        notified = False
        with self._cond:
            while True:
                self._check_open()
                if not self._over_cap(nbytes):
                    return True
                if not notified and self.on_pressure is not None:
                    notified = True
                    callback = self.on_pressure
                    self._lock.release()
                    try:
                        callback()
                    except Exception:
                        log.exception("OpLog on_pressure callback failed")
                    finally:
                        self._lock.acquire()
                    continue
                if deadline is None:
                    self._cond.wait()
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)

    def _over_cap(self, nbytes: int) -> bool:
        if self._segments[0].first_seq > self._last_seq:
            return False  # nothing retained: nothing to wait for
        return self._bytes_used_locked() + nbytes > self._cap

    def _bytes_used_locked(self) -> int:
        return sum(s.size for s in self._segments) + len(self._buf)

    # --- reading ----------------------------------------------------------------------

    def records(self, from_seq: int = 0, to_seq: int | None = None) -> Iterator[Record]:
        """Iterate the records with from_seq <= seq <= to_seq in seq order.

        Covers retained segments and the unsynced buffer, as of this call: records appended
        later are not seen, and segments released meanwhile stay readable (their files are held
        open). Records below `first_retained_seq` are gone and silently absent: a consumer that
        needs a complete range checks `first_retained_seq <= from_seq` first. Records at or
        above it that were released may still be returned. Every returned record was verified;
        a bad one raises Corruption naming the file and byte offset. Reading starts at the
        segment's sparse index entry nearest below `from_seq` (oplog_record.SeqIndex), so the
        cost does not grow with the records before it.
        """
        with self._lock:
            self._check_open()
            hi = self._last_seq if to_seq is None else min(to_seq, self._last_seq)
            segs = self._segments
            files = []
            try:
                for i, seg in enumerate(segs):
                    last = segs[i + 1].first_seq - 1 if i + 1 < len(segs) else self._written_seq
                    if last < from_seq or seg.first_seq > hi or last < seg.first_seq:
                        continue
                    f = open(seg.path, "rb", buffering=1 << 20)  # noqa: SIM115 - closed by the iterator
                    files.append((f, seg.path, seg.index.start(from_seq), seg.size))
            except BaseException:
                for f, *_ in files:
                    f.close()
                raise
            tail_base = segs[-1].size
            skip = max(0, segs[-1].index.start(from_seq) - tail_base)  # whole records, indexed
            tail = bytes(self._buf[skip:]) if hi > self._written_seq else b""
            tail_name = f"{segs[-1].path} (unwritten buffer)"
        return RecordIterator(files, tail, tail_name, tail_base + skip, from_seq, hi)

    # --- state ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def last_seq(self) -> int:
        """Seq of the newest appended record (0 for a log that never had one)."""
        return self._last_seq

    @property
    def durable_seq(self) -> int:
        """Every record with seq <= this survives a crash."""
        return self._durable_seq

    @property
    def bytes_used(self) -> int:
        """Bytes of the retained segment files plus the unwritten buffer."""
        with self._lock:
            return self._bytes_used_locked()

    @property
    def first_retained_seq(self) -> int:
        """Seq of the oldest record still readable; last_seq + 1 when none is."""
        with self._lock:
            return self._segments[0].first_seq

    @property
    def segment_paths(self) -> list[str]:
        """Paths of the retained segment files, oldest first."""
        with self._lock:
            return [s.path for s in self._segments]

    def close(self) -> None:
        """Close the log. Writes out the buffer (records not synced stay unpromised) and
        makes the last synced watermark durable.

        Idempotent; every other call afterwards raises ClosedError; blocked `sync` and
        `wait_for_space` callers get ClosedError.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._syncing:
                self._cond.wait()
            try:
                if self._io_error is None and self._fd >= 0:
                    self._write_buffer_locked()
                    if self._mark_dirty:  # persist the last watermark (not the new bytes' claim)
                        os.fdatasync(self._fd)
                        self._mark_dirty = False
            finally:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1
                self._cond.notify_all()

    def __enter__(self) -> OpLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpLog({self._dir!r}, last_seq={self._last_seq}, durable_seq={self._durable_seq})"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"OpLog {self._dir} is closed")
        if self._io_error is not None:
            e = self._io_error
            err = OSError(e.errno, f"OpLog {self._dir} unusable after an I/O error: {e.strerror}")
            raise_os_error(err, f"OpLog {self._dir} (unusable until the cluster is reopened)")

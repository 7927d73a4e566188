"""Persistence of block-map layers: one base file + one append-only delta log each.

For layer id N the directory holds ``L<N as 16 hex digits>.base`` and
``L<N as 16 hex digits>.delta``; docs/format.md gives every byte.

* The base is a whole map, written with `fileutil.write_checksummed` (temp
  file, fsync, rename, fsync dir): a reader sees the old or the new one.
* The delta log is a header + records, each record one batch of map entries
  with its own checksums, appended with pwrite + fdatasync.
* Base and delta carry a generation number. `write_base` writes base
  generation g+1 first, then replaces the delta by an empty one of generation
  g+1. On load a delta of generation g+1 is applied; one of generation g is
  the leftover of a crash between those two steps, already contained in the
  base, and is ignored. (A generation, not the records' applied_seq, decides
  this: it stays correct even if a caller writes a base with a lower
  applied_seq than records it appended earlier.)
* A crash mid-append leaves a torn last record: shorter than it declares, or
  (on file systems that extend the size before the data) ending in zeros. Load
  drops it; the next append truncates it away first. Any other checksum
  failure raises Corruption naming the file.
* The delta header (version 2) holds a synced watermark: the end of the records
  an fdatasync covered. It is rewritten after each append's fdatasync and made
  durable by the next one, by `seal` (a snapshot freezing the layer) or `close`.
  A record cut or damaged below it is Corruption, never a torn tail.

A layer with neither file loads as empty (a head that was never persisted).
MapStore serialises its own calls with a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import sys
from dataclasses import dataclass

import numpy as np
import xxhash

from ..constants import MAP_DELTA_COMPACT_MIN_BYTES, MAP_DELTA_COMPACT_RATIO, MAP_FORMAT_VERSION
from ..errors import Corruption, FormatError, InvalidArgument, raise_os_error
from .block_map import MapLayer, as_u64, sorted_last_wins
from .fileutil import (
    atomic_write,
    fsync_dir,
    make_private_dirs,
    read_checksummed,
    write_checksummed,
)
from .lockorder import Level, ordered_lock

BASE_MAGIC = b"NXMAPBAS"
DELTA_MAGIC = b"NXMAPDLT"
_BASE_META = struct.Struct("<QQQQ")  # layer id, generation, applied_seq, entry count
_DELTA_HEAD = struct.Struct("<8sIIQQ")  # magic, version, reserved, layer id, generation
V1_DELTA_HEADER_BYTES = _DELTA_HEAD.size + 8  # + XXH3-64 of the above = 40
_WATERMARK = struct.Struct("<QQ")  # synced end, XXH3-64 of (layer id, generation, synced end)
_MARK_INPUT = struct.Struct("<QQQ")
WATERMARK_OFFSET = V1_DELTA_HEADER_BYTES
DELTA_HEADER_BYTES = 64  # version 2: header, watermark, 8 reserved bytes
_REC_HEAD = struct.Struct("<QQQ")  # applied_seq, entry count, XXH3-64 of the payload
RECORD_HEADER_BYTES = _REC_HEAD.size + 8  # + XXH3-64 of the above = 32
_SECTOR = 512  # bytes; the smallest unit a crash leaves written or not
_NAME = re.compile(r"^L([0-9a-f]{16})\.(base|delta)$")
_LITTLE = sys.byteorder == "little"
log = logging.getLogger(__name__)


def _le(a: np.ndarray) -> np.ndarray:
    return a if _LITTLE else a.astype("<u8")


def _h(data: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


def _strictly_ascending(k: np.ndarray) -> bool:
    return len(k) < 2 or bool(np.all(k[1:] > k[:-1]))


def _zero_filled(data: bytes, p: int, hi: int) -> bool:
    """Whether a record starting at `p` looks torn by a crash that extended the
    file but left the rest unwritten: the file from p, or from a sector boundary
    in (p, hi), to its end is zeros. (p is where the previous fdatasync ended;
    beyond it the disk holds whole sectors that were or were not written.)"""
    z = len(data.rstrip(b"\0"))  # the file's trailing zeros start here
    return z <= p or -(-z // _SECTOR) * _SECTOR < hi


def _delta_header(layer_id: int, generation: int) -> bytes:
    head = _DELTA_HEAD.pack(DELTA_MAGIC, MAP_FORMAT_VERSION, 0, layer_id, generation)
    head += struct.pack("<Q", _h(head))
    return head + _watermark(layer_id, generation, DELTA_HEADER_BYTES) + bytes(8)


def _watermark(layer_id: int, generation: int, synced_end: int) -> bytes:
    return _WATERMARK.pack(synced_end, _h(_MARK_INPUT.pack(layer_id, generation, synced_end)))


def _read_watermark(data: bytes, layer_id: int, generation: int) -> int | None:
    """The synced end a version-2 delta header records; None if its slot is damaged."""
    if len(data) < WATERMARK_OFFSET + _WATERMARK.size:
        return None
    end, check = _WATERMARK.unpack_from(data, WATERMARK_OFFSET)
    if check != _h(_MARK_INPUT.pack(layer_id, generation, end)) or end < DELTA_HEADER_BYTES:
        return None
    return end


def encode_record(blocks: np.ndarray, vals: np.ndarray, applied_seq: int) -> list[bytes]:
    """A delta record (header, keys, vals) for a sorted unique batch."""
    kb, vb = _le(blocks).tobytes(), _le(vals).tobytes()
    payload_hash = xxhash.xxh3_64(kb)
    payload_hash.update(vb)
    head = _REC_HEAD.pack(applied_seq, len(blocks), payload_hash.intdigest())
    return [head + struct.pack("<Q", _h(head)), kb, vb]


@dataclass
class _Delta:
    """What a scan of a delta log found."""

    generation: int
    records: list[tuple[int, np.ndarray, np.ndarray]]  # (applied_seq, keys, vals)
    valid_end: int  # offset just past the last valid record
    size: int  # file size (> valid_end when a torn tail is present)
    version: int  # 1: no watermark (records from byte 40); 2: watermark (records from 64)


@dataclass
class _State:
    """What this MapStore knows about a layer's files (cached between calls)."""

    generation: int  # the base's generation (0 = no base)
    delta_gen: int | None  # generation of the delta header; None = no delta file
    end: int  # where the next record goes
    size: int  # delta file size
    version: int = MAP_FORMAT_VERSION  # of the delta file (1 has no watermark to update)
    mark_dirty: bool = False  # the watermark was rewritten after the last fdatasync


class MapStore:
    """Base + delta files of every block-map layer, in one directory."""

    def __init__(self, directory: str, compact_min_bytes: int = MAP_DELTA_COMPACT_MIN_BYTES):
        """`directory` is the maps directory itself (the cluster passes
        ``<root>/constants.MAP_DIR``); it is created if missing."""
        self.directory = os.fspath(directory)
        self.compact_min_bytes = compact_min_bytes
        make_private_dirs(self.directory)
        self._lock = ordered_lock(Level.MAP_STORE, f"map store {self.directory}")
        self._states: dict[int, _State] = {}
        #: harmless damage found while loading (an unreadable watermark slot), for scrub
        self.problems: list[str] = []
        self._bad_marks: set[int] = set()  # layers whose delta watermark slot is damaged

    # -- paths ----------------------------------------------------------------
    def base_path(self, layer_id: int) -> str:
        return os.path.join(self.directory, f"L{self._check_id(layer_id):016x}.base")

    def delta_path(self, layer_id: int) -> str:
        return os.path.join(self.directory, f"L{self._check_id(layer_id):016x}.delta")

    @staticmethod
    def _check_id(layer_id: int) -> int:
        if not isinstance(layer_id, (int, np.integer)) or not 0 <= layer_id < 2**64:
            raise InvalidArgument(f"bad layer id {layer_id!r}")
        return int(layer_id)

    # -- public API -------------------------------------------------------------
    def load(self, layer_id: int) -> tuple[MapLayer, int]:
        """(layer, applied_seq): the base plus every valid delta record, as a new
        mutable layer. applied_seq is the highest of the base's and the records'.

        A torn last delta record (crash mid-append) is dropped. Raises Corruption
        naming the file for a bad base, a bad delta header, a bad record that is
        not a torn tail, or a delta whose generation does not fit the base;
        FormatError for a foreign file or a newer format version. A layer with
        neither file loads as (empty layer, 0).
        """
        with self._lock:
            gen, seq, keys, vals = self._read_base(layer_id)
            delta = self._scan_delta(layer_id)
            layer = MapLayer._trusted(keys, vals)
            st = _State(gen, None, 0, 0)
            if delta is not None:
                st.delta_gen, st.end, st.size = delta.generation, delta.valid_end, delta.size
                st.version = delta.version
                if delta.generation == gen:
                    if delta.records:
                        layer.set(
                            np.concatenate([r[1] for r in delta.records]),
                            np.concatenate([r[2] for r in delta.records]),
                        )
                        seq = max(seq, max(r[0] for r in delta.records))
                elif delta.generation != gen - 1:
                    raise Corruption(
                        f"{self.delta_path(layer_id)}: generation {delta.generation} "
                        f"does not fit base generation {gen}"
                    )
            self._states[layer_id] = st
            return layer, seq

    def append(self, layer_id: int, blocks: np.ndarray, vals: np.ndarray, applied_seq: int) -> None:
        """Append one delta record (blocks, vals, applied_seq); durable on return
        (pwrite + fdatasync). Repeated blocks: the later entry wins, as in
        MapLayer.set. An empty batch is allowed (it records applied_seq).
        Raises InvalidArgument on bad input, Corruption if the existing delta is bad.
        """
        b = as_u64(blocks, "blocks")
        v = as_u64(vals, "vals")
        if len(b) != len(v):
            raise InvalidArgument(f"{len(b)} blocks but {len(v)} values")
        if not 0 <= applied_seq < 2**64:
            raise InvalidArgument(f"bad applied_seq {applied_seq}")
        b, v = sorted_last_wins(b, v)
        chunks = encode_record(b, v, applied_seq)
        with self._lock:
            st = self._state(layer_id)
            path = self.delta_path(layer_id)
            if st.delta_gen != st.generation:  # missing, or stale after a crash
                self._reset_delta(layer_id, st)
            fd = os.open(path, os.O_WRONLY)
            try:
                if st.size != st.end:  # cut a torn tail before writing after it
                    os.ftruncate(fd, st.end)
                    os.fsync(fd)
                    st.size = st.end
                data = b"".join(chunks)
                view, off = memoryview(data), st.end
                while view:
                    n = os.pwrite(fd, view, off)
                    view, off = view[n:], off + n
                os.fdatasync(fd)
                if st.version >= 2:  # claim the record only now that it is durable
                    os.pwrite(fd, _watermark(layer_id, st.delta_gen, off), WATERMARK_OFFSET)
                    st.mark_dirty = True
            except OSError as exc:
                self._states.pop(layer_id, None)  # unknown file state: rescan next time
                with contextlib.suppress(OSError):  # leave no partial record behind
                    os.ftruncate(fd, st.end)
                raise_os_error(exc, path)
            except BaseException:
                self._states.pop(layer_id, None)
                raise
            finally:
                os.close(fd)
            st.end = st.size = off

    def seal(self, layer_id: int | None = None) -> None:
        """Make the watermark of one layer's delta (None: of every layer's) durable: for
        a layer that will get no more appends (frozen by a snapshot) and at close."""
        with self._lock:
            ids = list(self._states) if layer_id is None else [layer_id]
            for lid in ids:
                st = self._states.get(lid)
                if st is None or not st.mark_dirty:
                    continue
                fd = os.open(self.delta_path(lid), os.O_WRONLY)
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                st.mark_dirty = False

    def write_base(self, layer_id: int, layer: MapLayer, applied_seq: int) -> None:
        """Make `layer` the whole persisted map of `layer_id` (durable on return)
        and empty the delta. Crash-safe: new base (generation g+1) by atomic
        rename first, then the delta replaced by an empty one of generation g+1.
        """
        if not 0 <= applied_seq < 2**64:
            raise InvalidArgument(f"bad applied_seq {applied_seq}")
        keys, vals = layer.items()
        with self._lock:
            st = self._state(layer_id)
            gen = max(st.generation, st.delta_gen or 0) + 1
            meta = _BASE_META.pack(self._check_id(layer_id), gen, applied_seq, len(keys))
            try:
                write_checksummed(
                    self.base_path(layer_id),
                    BASE_MAGIC,
                    MAP_FORMAT_VERSION,
                    [meta, memoryview(_le(keys)), memoryview(_le(vals))],
                )
            except OSError as exc:
                raise_os_error(exc, self.base_path(layer_id))
            st.generation = gen
            self._reset_delta(layer_id, st)

    def maybe_compact(self, layer_id: int, layer: MapLayer, applied_seq: int) -> bool:
        """write_base(layer_id, layer, applied_seq) if the delta log is larger than
        MAP_DELTA_COMPACT_RATIO of the base and than compact_min_bytes; return
        whether it did. `layer` must be the layer's full current map."""
        with self._lock:
            delta = self._size(self.delta_path(layer_id))
            base = self._size(self.base_path(layer_id))
        if delta <= max(MAP_DELTA_COMPACT_RATIO * base, self.compact_min_bytes):
            return False
        self.write_base(layer_id, layer, applied_seq)
        return True

    def repair_watermarks(self) -> list[str]:
        """Rewrite every damaged delta watermark slot found so far to the end of the
        records that verified (fsck --repair); return the files repaired."""
        repaired = []
        with self._lock:
            for lid in sorted(self._bad_marks):
                st = self._states.get(lid)
                if st is None or st.delta_gen is None or st.end != st.size:
                    continue  # not loaded, or a torn tail is still there: the next append cuts it
                fd = os.open(self.delta_path(lid), os.O_WRONLY)
                try:
                    os.pwrite(fd, _watermark(lid, st.delta_gen, st.end), WATERMARK_OFFSET)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                repaired.append(self.delta_path(lid))
            self._bad_marks.clear()
        return repaired

    def delete(self, layer_id: int) -> None:
        """Remove both files of a layer (missing files are fine); durable on return."""
        with self._lock:
            for path in (self.delta_path(layer_id), self.base_path(layer_id)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            fsync_dir(self.directory)
            self._states.pop(layer_id, None)

    def layer_ids(self) -> list[int]:
        """Sorted ids of every layer with a file here (for orphan cleanup)."""
        ids = set()
        for name in os.listdir(self.directory):
            m = _NAME.match(name)
            if m:
                ids.add(int(m.group(1), 16))
        return sorted(ids)

    def disk_bytes(self, layer_id: int | None = None) -> int:
        """Bytes on disk of one layer's files, or of every layer's."""
        ids = self.layer_ids() if layer_id is None else [layer_id]
        return sum(self._size(self.base_path(i)) + self._size(self.delta_path(i)) for i in ids)

    # -- internals --------------------------------------------------------------
    @staticmethod
    def _size(path: str) -> int:
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return 0

    def _state(self, layer_id: int) -> _State:
        st = self._states.get(layer_id)
        if st is None:
            gen = self._read_base(layer_id)[0]
            delta = self._scan_delta(layer_id)
            if delta is None:
                st = _State(gen, None, 0, 0)
            else:
                if delta.generation not in (gen, gen - 1):
                    raise Corruption(
                        f"{self.delta_path(layer_id)}: generation {delta.generation} "
                        f"does not fit base generation {gen}"
                    )
                st = _State(gen, delta.generation, delta.valid_end, delta.size, delta.version)
            self._states[layer_id] = st
        return st

    def _reset_delta(self, layer_id: int, st: _State) -> None:
        try:
            atomic_write(self.delta_path(layer_id), [_delta_header(layer_id, st.generation)])
        except OSError as exc:
            raise_os_error(exc, self.delta_path(layer_id))
        st.delta_gen = st.generation
        st.end = st.size = DELTA_HEADER_BYTES
        st.version = MAP_FORMAT_VERSION
        st.mark_dirty = False

    def _read_base(self, layer_id: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(generation, applied_seq, keys, vals); generation 0 and empty if no base."""
        path = self.base_path(layer_id)
        try:
            _, payload = read_checksummed(path, BASE_MAGIC, MAP_FORMAT_VERSION)
        except FileNotFoundError:
            empty = np.zeros(0, dtype=np.uint64)
            return 0, 0, empty, empty
        if len(payload) < _BASE_META.size:
            raise Corruption(f"{path}: base payload too short ({len(payload)} bytes)")
        lid, gen, seq, count = _BASE_META.unpack_from(payload)
        if lid != layer_id:
            raise Corruption(f"{path}: holds layer {lid}, expected {layer_id}")
        if len(payload) != _BASE_META.size + 16 * count or gen < 1:
            raise Corruption(f"{path}: {count} entries do not fit {len(payload)} bytes")
        off = _BASE_META.size
        keys = np.frombuffer(payload, "<u8", count, off).astype(np.uint64, copy=False)
        vals = np.frombuffer(payload, "<u8", count, off + 8 * count).astype(np.uint64, copy=False)
        if not _strictly_ascending(keys):
            raise Corruption(f"{path}: keys are not strictly ascending")
        return gen, seq, keys, vals

    def _scan_delta(self, layer_id: int) -> _Delta | None:
        """Parse a delta log; None if it does not exist. See the module docstring
        for what counts as a torn tail (dropped) and what as Corruption."""
        path = self.delta_path(layer_id)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        n = len(data)
        if n < V1_DELTA_HEADER_BYTES:
            raise Corruption(f"{path}: truncated delta header ({n} bytes)")
        (head_hash,) = struct.unpack_from("<Q", data, _DELTA_HEAD.size)
        if _h(data[: _DELTA_HEAD.size]) != head_hash:
            raise Corruption(f"{path}: delta header checksum mismatch")
        magic, version, _, lid, gen = _DELTA_HEAD.unpack_from(data)
        if magic != DELTA_MAGIC:
            raise FormatError(f"{path}: not a delta log (magic {magic!r})")
        if version > MAP_FORMAT_VERSION:
            raise FormatError(
                f"{path}: format version {version} is newer than {MAP_FORMAT_VERSION}"
            )
        if lid != layer_id:
            raise Corruption(f"{path}: holds layer {lid}, expected {layer_id}")
        start = synced = V1_DELTA_HEADER_BYTES
        mark_damaged = False
        if version >= 2:
            if n < DELTA_HEADER_BYTES:
                raise Corruption(f"{path}: truncated delta header ({n} bytes)")
            start = synced = DELTA_HEADER_BYTES
            mark = _read_watermark(data, layer_id, gen)
            if mark is None:
                self.problems.append(f"{path}: synced watermark unreadable (damaged); "
                                     "its tail is judged by the records alone")
                log.warning("%s", self.problems[-1])
                self._bad_marks.add(layer_id)
                mark_damaged = True
            else:
                synced = mark
        mv = memoryview(data)
        records = []
        p = start
        torn = False
        while p < n:
            if n - p < RECORD_HEADER_BYTES:
                torn = True  # not even a whole record header
                break
            seq, count, payload_hash = _REC_HEAD.unpack_from(data, p)
            (rec_hash,) = struct.unpack_from("<Q", data, p + _REC_HEAD.size)
            if _h(mv[p : p + _REC_HEAD.size]) != rec_hash:
                if p >= synced and _zero_filled(data, p, min(n, p + RECORD_HEADER_BYTES)):
                    torn = True  # size extended, header never written
                    break
                raise Corruption(f"{path}: record header checksum mismatch at offset {p}")
            end = p + RECORD_HEADER_BYTES + 16 * count
            if end > n:
                torn = True  # record cut short
                break
            if _h(mv[p + RECORD_HEADER_BYTES : end]) != payload_hash:
                if p >= synced and end == n and _zero_filled(data, p, n):
                    torn = True  # size extended, payload not all written
                    break
                raise Corruption(f"{path}: record payload checksum mismatch at offset {p}")
            off = p + RECORD_HEADER_BYTES
            keys = np.frombuffer(data, "<u8", count, off).astype(np.uint64, copy=False)
            vals = np.frombuffer(data, "<u8", count, off + 8 * count).astype(np.uint64, copy=False)
            if not _strictly_ascending(keys):
                raise Corruption(f"{path}: record keys not ascending at offset {p}")
            records.append((seq, keys, vals))
            p = end
        if p < synced:
            raise Corruption(f"{path}: records end at offset {p} (file {n} bytes) but "
                             f"{synced} bytes were synced: the delta log was cut or damaged")
        if torn and mark_damaged:
            # The slot is rewritten in place, inside the header's first sector: a crash
            # leaves it old or new, never unreadable. Damage there means this tail may
            # be damage too (synced records zeroed or cut), so it is not dropped as torn.
            raise Corruption(f"{path}: synced watermark unreadable and the records end in a "
                             f"torn record at offset {p} (file {n} bytes): a crash cannot be "
                             "told from damage that cut synced records")
        return _Delta(gen, records, p, n, version)

"""Python face of the native extension `nxstore._native` (C in native/).

Kept as one file (607 lines) because it is the whole Python/C boundary: a checked wrapper
per entry point of native/*.h, all sharing the argument checks and the cffi pointer alias
at its top, so the Python side of the C contract reads in one place.

Batched, numpy in / numpy out, no per-element Python work. Every call into C
releases the GIL, so other Python threads run while a batch is hashed or
looked up. The C contracts are in native/*.h; the on-disk layout of
`FingerprintIndex.to_bytes()` is in docs/format.md.

Fingerprints are XXH3-128 in canonical form (16 bytes, equal to
`xxhash.xxh3_128(block).digest()`); fingerprint arrays are uint8 of shape
(n, 16). Block maps are sorted, unique uint64 keys with uint64 values.
`lz4_probe_rows`, `lz4_compress_rows` and `lz4_decompress_batch` are the extent store's codec: one call per
batch of records (stored payloads are raw LZ4 blocks, as python-lz4's
`lz4.block.compress(x, store_size=False)`).
`gather_records`, `plan_runs`, `preadv_runs`, `check_headers` and `verify_blocks` are the
extent store's read path: one call each per read request, whatever the number of extents
(nxstore/store/extent_read.py, ExtentStore.read_blocks). On that path the wrappers check types
and shapes without converting: a conversion costs about what the C call does.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import xxhash

from .._native import ffi, lib
from ..constants import (
    FINGERPRINT_BYTES,
    INDEX_BLOB_HEADER_BYTES,
    INDEX_BLOB_MAGIC,
    INDEX_BLOB_VERSION,
    INDEX_SLOT_BYTES,
)
from ..errors import Corruption, FormatError, InvalidArgument, NxError
from .lockorder import Level, ordered_lock

__all__ = [
    "FingerprintIndex",
    "check_headers",
    "checksum_rows",
    "fingerprint_blocks",
    "gather_records",
    "gmac_tag",
    "lz4_compress_rows",
    "lz4_decompress_batch",
    "lz4_probe_rows",
    "map_diff",
    "map_fill_range",
    "map_lookup",
    "map_merge",
    "plan_runs",
    "copy_runs",
    "preadv_runs",
    "verify_blocks",
]

_U64 = np.dtype(np.uint64)
_I64 = np.dtype(np.int64)
READV_MAX_IOV = int(lib.NX_READV_MAX_IOV)  # iovecs one preadv may take (Linux UIO_MAXIOV)
# the buffers plan_runs points iovecs into, by index (native/plan.h)
PLAN_SINK, PLAN_HDRS, PLAN_OUT, PLAN_CBUF = (
    int(lib.NX_PLAN_SINK), int(lib.NX_PLAN_HDRS), int(lib.NX_PLAN_OUT), int(lib.NX_PLAN_CBUF)
)
# the extent record header as native/headers.h reads it (extent_group checks they agree)
RECORD_HEADER = {
    "bytes": int(lib.NX_RECORD_HEADER_BYTES),
    "checked": int(lib.NX_RECORD_CHECKED_BYTES),
    "magic": int(lib.NX_RECORD_MAGIC).to_bytes(4, "little"),
    "compressed": int(lib.NX_RECORD_FLAG_COMPRESSED),
}
_SLOT = np.dtype([("fp", np.uint8, (FINGERPRINT_BYTES,)), ("id", "<u8")])
# magic, version, slot bytes, capacity, count, XXH3-64(slots); then XXH3-64(bytes 0..39)
_HEAD = struct.Struct("<8sIIQQQ")
assert _HEAD.size + 8 == INDEX_BLOB_HEADER_BYTES and _SLOT.itemsize == INDEX_SLOT_BYTES


# _ptr(ctype, buffer, writable=False): a cffi pointer into a buffer, kept alive with it. An
# alias, not a wrapper: a read makes ~40 of these and a Python frame each cost 8 us of ~170.
_ptr = ffi.from_buffer


def _require(arr: Any, dtype: Any, ndim: int, what: str) -> None:
    """InvalidArgument unless `arr` is a C-contiguous ndarray of dtype and ndim:
    what the C may then index without a copy."""
    if (
        not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim
        or not arr.flags.c_contiguous
    ):  # fmt: skip
        raise InvalidArgument(f"{what} must be a C-contiguous {ndim}-D {np.dtype(dtype)} array")


def fingerprint_blocks(buf: Any, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fingerprint each `block_size`-byte block of `buf` and flag all-zero blocks.

    `buf`: bytes, bytearray, C-contiguous memoryview, or uint8 ndarray (copied if
    not contiguous); any alignment. Returns (fps uint8 (n, 16), zero bool (n,)).
    Raises InvalidArgument for another type, block_size <= 0, or a length that
    is not a multiple of block_size.
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise InvalidArgument(f"block_size must be a positive int, not {block_size!r}")
    if isinstance(buf, np.ndarray):
        if buf.dtype != np.uint8:
            raise InvalidArgument(f"buffer ndarray must be uint8, not {buf.dtype}")
        buf = np.ascontiguousarray(buf)
        nbytes = buf.nbytes
    elif isinstance(buf, (bytes, bytearray, memoryview)):
        view = memoryview(buf)
        if not view.c_contiguous:
            raise InvalidArgument("buffer memoryview must be C-contiguous")
        nbytes = view.nbytes
    else:
        raise InvalidArgument(f"buffer must be bytes-like or a uint8 ndarray, not {type(buf)}")
    if nbytes % block_size:
        raise InvalidArgument(f"buffer length {nbytes} is not a multiple of {block_size}")
    n = nbytes // block_size
    fps = np.empty((n, FINGERPRINT_BYTES), np.uint8)
    zero = np.empty(n, np.bool_)
    if n:
        lib.nx_fingerprint_blocks(
            _ptr("uint8_t[]", buf),
            n,
            block_size,
            _ptr("uint8_t[]", fps, True),
            _ptr("uint8_t[]", zero, True),
        )
    return fps, zero


def checksum_rows(rows: np.ndarray, nbytes: int) -> np.ndarray:
    """XXH3-64 of the first `nbytes` bytes of each row of `rows` (uint8 (n, w),
    C-contiguous): uint64 (n,), each equal to `xxhash.xxh3_64_intdigest`.

    Raises InvalidArgument for another dtype, shape or layout, or nbytes
    outside 0..w."""
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2:
        raise InvalidArgument("rows must be a 2-D uint8 array")
    if not rows.flags.c_contiguous:
        raise InvalidArgument("rows must be C-contiguous")
    n, width = rows.shape
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 <= nbytes <= width:
        raise InvalidArgument(f"nbytes must be an int in 0..{width}, not {nbytes!r}")
    out = np.empty(n, _U64)
    if n:
        lib.nx_checksum_rows(_ptr("uint8_t[]", rows), n, width, nbytes, _ptr("uint64_t[]", out, True))
    return out


def check_headers(
    hdrs: np.ndarray, ids: Any, slens: Any, flags: Any, block_size: int
) -> np.ndarray:
    """Mask (bool (n,)) of extent record headers that fail their XXH3-64 checksum
    or disagree with what the table expects: magic, compressed flag (bit 0 of
    flags[i]), extent id ids[i], raw length `block_size`, stored length
    slens[i]. Layout: native/headers.h and docs/format.md.

    hdrs: uint8 (n, 64), C-contiguous. Raises InvalidArgument for other shapes
    or lengths."""
    if not isinstance(hdrs, np.ndarray) or hdrs.dtype != np.uint8 or hdrs.ndim != 2:
        raise InvalidArgument("headers must be a 2-D uint8 array")
    n = len(hdrs)
    if hdrs.shape[1] != RECORD_HEADER["bytes"] or not hdrs.flags.c_contiguous:
        raise InvalidArgument(f"headers must be C-contiguous (n, 64), not {hdrs.shape}")
    i = np.ascontiguousarray(ids, _U64)
    sl = np.ascontiguousarray(slens, np.uint32)
    fl = np.ascontiguousarray(flags, np.uint8)
    if not i.shape == sl.shape == fl.shape == (n,):
        raise InvalidArgument(f"{n} headers but {i.shape} ids, {sl.shape} lengths, {fl.shape} flags")
    bad = np.empty(n, np.bool_)
    if n:
        lib.nx_check_headers(
            _ptr("uint8_t[]", hdrs), n, _ptr("uint64_t[]", i), _ptr("uint32_t[]", sl),
            _ptr("uint8_t[]", fl), block_size, _ptr("uint8_t[]", bad, True),
        )  # fmt: skip
    return bad


def verify_blocks(blocks: np.ndarray, table: np.ndarray, ids: np.ndarray) -> int:
    """Index of the first row of `blocks` (uint8 (n, block_size)) whose
    fingerprint is not row ids[i] of `table` (uint8 (rows, 16)), or whose ids[i]
    is not a row of it; n if all match. ids: uint64 (n,). All C-contiguous.
    Raises InvalidArgument for other types, shapes or layouts."""
    _require(blocks, np.uint8, 2, "blocks")
    _require(table, np.uint8, 2, "fingerprint table")
    _require(ids, _U64, 1, "ids")
    n = len(blocks)
    if table.shape[1] != FINGERPRINT_BYTES or len(ids) != n:
        raise InvalidArgument(f"{n} blocks, {len(ids)} ids, table {table.shape}")
    if not n:
        return 0
    return int(lib.nx_verify_blocks(
        _ptr("uint8_t[]", blocks), n, blocks.shape[1], _ptr("uint8_t[]", table), len(table),
        _ptr("uint64_t[]", ids),
    ))  # fmt: skip


def _as_fps(fps: Any) -> np.ndarray:
    """fps as a C-contiguous uint8 (n, 16) array; InvalidArgument otherwise.

    Accepts a uint8 array of shape (n, 16) or (16 n,), flat bytes-like, or a
    list/tuple of 16-byte bytes objects."""
    if isinstance(fps, (list, tuple)) and all(isinstance(f, bytes) for f in fps):
        if any(len(f) != FINGERPRINT_BYTES for f in fps):
            raise InvalidArgument("every fingerprint must be 16 bytes")
        fps = b"".join(fps)
    if isinstance(fps, (bytes, bytearray, memoryview)):
        fps = np.frombuffer(fps, np.uint8)
    arr = np.asarray(fps)
    if arr.dtype != np.uint8:
        raise InvalidArgument(f"fingerprints must be uint8, not {arr.dtype}")
    if arr.ndim == 1 and arr.size % FINGERPRINT_BYTES == 0:
        arr = arr.reshape(-1, FINGERPRINT_BYTES)
    if arr.ndim != 2 or arr.shape[1] != FINGERPRINT_BYTES:
        raise InvalidArgument(f"fingerprints must have shape (n, 16), not {arr.shape}")
    return np.ascontiguousarray(arr)


def _as_u64(a: Any, what: str) -> np.ndarray:
    """a as a C-contiguous 1-D uint64 array; non-negative integers are converted."""
    arr = np.asarray(a)
    if arr.dtype != _U64:
        if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0):
            raise InvalidArgument(f"{what} must be non-negative integers (uint64)")
        arr = arr.astype(_U64)
    if arr.ndim != 1:
        raise InvalidArgument(f"{what} must be 1-D, not shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _as_map(keys: Any, vals: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    k = _as_u64(keys, f"{what} keys")
    v = _as_u64(vals, f"{what} values")
    if k.shape != v.shape:
        raise InvalidArgument(f"{what}: {k.size} keys but {v.size} values")
    return k, v


class FingerprintIndex:
    """In-memory map fingerprint (16 bytes) -> extent id (nonzero uint64).

    An open-addressing table in C that doubles past load 0.70 and never
    shrinks. Thread-safe (calls on one index are serialized by a lock; the GIL
    is released inside). Nothing here is durable: persist `to_bytes()`.
    """

    def __init__(self, capacity: int = 0) -> None:
        """An empty index holding `capacity` entries before it first grows.

        Raises InvalidArgument for a negative capacity, MemoryError when the
        table cannot be allocated."""
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise InvalidArgument(f"capacity must be a non-negative int, not {capacity!r}")
        self._lock = ordered_lock(Level.FINGERPRINT_INDEX, "fingerprint index")
        self._ix = self._own(lib.nx_index_new(capacity))

    @staticmethod
    def _own(ix: Any) -> Any:
        if ix == ffi.NULL:
            raise MemoryError("fingerprint index: allocation failed")
        return ffi.gc(ix, lib.nx_index_free)

    def __len__(self) -> int:
        return int(lib.nx_index_count(self._ix))

    def capacity(self) -> int:
        """Slots in the table (a power of two)."""
        return int(lib.nx_index_capacity(self._ix))

    def memory_bytes(self) -> int:
        """Heap bytes held by the C table (24 bytes per slot plus a small struct)."""
        return int(lib.nx_index_memory_bytes(self._ix))

    def lookup(self, fps: Any) -> np.ndarray:
        """ids (uint64, shape (n,)) of the n fingerprints; 0 where absent."""
        f = _as_fps(fps)
        out = np.empty(len(f), _U64)
        if len(f):
            with self._lock:
                lib.nx_index_lookup(
                    self._ix, _ptr("uint8_t[]", f), len(f), _ptr("uint64_t[]", out, True)
                )
        return out

    def lookup_or_insert(self, fps: Any, next_id: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Look up each fingerprint, inserting missing ones with ids next_id, next_id+1, ...

        Returns (ids uint64 (n,), is_new bool (n,), n_new); new entries hold ids
        next_id .. next_id + n_new - 1 in batch order. A fingerprint repeated in
        the batch gets its first occurrence's id and is not new. Raises
        InvalidArgument if next_id is 0 or next_id + n overflows uint64;
        MemoryError if the table cannot grow (the index is then unchanged).
        """
        f = _as_fps(fps)
        n = len(f)
        if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id <= 0:
            raise InvalidArgument(f"next_id must be a positive int, not {next_id!r}")
        if next_id + n > 2**64 - 1:
            raise InvalidArgument("next_id + batch size overflows uint64")
        ids = np.empty(n, _U64)
        new = np.empty(n, np.bool_)
        if not n:
            return ids, new, 0
        with self._lock:
            rc = lib.nx_index_lookup_or_insert(
                self._ix,
                _ptr("uint8_t[]", f),
                n,
                next_id,
                _ptr("uint64_t[]", ids, True),
                _ptr("uint8_t[]", new, True),
            )
        if rc == lib.NX_ENOMEM:
            raise MemoryError("fingerprint index: cannot grow")
        if rc < 0:
            raise InvalidArgument(f"lookup_or_insert failed ({rc})")
        return ids, new, int(rc)

    def insert(self, fps: Any, ids: Any) -> None:
        """Map fingerprint i to ids[i] (insert or overwrite; later duplicates win).

        Raises InvalidArgument for mismatched lengths or an id of 0 (nothing is
        inserted then); MemoryError if the table cannot grow (a prefix of the
        batch is applied; retrying is safe)."""
        f = _as_fps(fps)
        i = _as_u64(ids, "ids")
        if len(f) != len(i):
            raise InvalidArgument(f"{len(f)} fingerprints but {len(i)} ids")
        if not len(f):
            return
        with self._lock:
            rc = lib.nx_index_insert(self._ix, _ptr("uint8_t[]", f), _ptr("uint64_t[]", i), len(f))
        if rc == lib.NX_EINVAL:
            raise InvalidArgument("extent id 0 is reserved (empty slot)")
        if rc == lib.NX_ENOMEM:
            raise MemoryError("fingerprint index: cannot grow")

    def remove(self, fps: Any) -> int:
        """Remove the fingerprints (absent ones are ignored); return how many were removed."""
        f = _as_fps(fps)
        if not len(f):
            return 0
        with self._lock:
            return int(lib.nx_index_remove(self._ix, _ptr("uint8_t[]", f), len(f)))

    def _raw(self) -> Any:
        """The C slot array as a cffi buffer (valid until the next modification)."""
        ptr = ffi.new("const uint8_t **")
        nbytes = ffi.new("size_t *")
        lib.nx_index_raw(self._ix, ptr, nbytes)
        return ffi.buffer(ptr[0], nbytes[0])

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """All entries as (fps uint8 (n, 16), ids uint64 (n,)), in table order."""
        with self._lock:
            slots = np.frombuffer(self._raw(), _SLOT).copy()
        used = slots[slots["id"] != 0]
        return np.ascontiguousarray(used["fp"]), used["id"].astype(_U64)

    def to_bytes(self) -> bytes:
        """The index as bytes: a 48-byte header then the raw slot array
        (docs/format.md). `from_bytes` restores an equal index."""
        _require_little_endian()
        with self._lock:
            raw = self._raw()
            head = _HEAD.pack(
                INDEX_BLOB_MAGIC,
                INDEX_BLOB_VERSION,
                INDEX_SLOT_BYTES,
                self.capacity(),
                len(self),
                xxhash.xxh3_64_intdigest(raw),
            )
            return b"".join((head, struct.pack("<Q", xxhash.xxh3_64_intdigest(head)), raw))

    @classmethod
    def from_bytes(cls, data: Any) -> FingerprintIndex:
        """Rebuild an index from `to_bytes()` output (one copy of the slot array).

        Raises FormatError for a foreign magic, an unknown version or slot size;
        Corruption for a checksum mismatch, a wrong length, or slots that break
        the table's invariants; MemoryError if the table cannot be allocated.
        """
        _require_little_endian()
        view = memoryview(data).cast("B")
        if len(view) < INDEX_BLOB_HEADER_BYTES:
            raise Corruption(f"fingerprint index: truncated header ({len(view)} bytes)")
        magic, version, slot_bytes, capacity, count, slots_hash = _HEAD.unpack_from(view)
        if magic != INDEX_BLOB_MAGIC:
            raise FormatError(f"fingerprint index: bad magic {magic!r}")
        (head_hash,) = struct.unpack_from("<Q", view, _HEAD.size)
        if xxhash.xxh3_64_intdigest(view[: _HEAD.size]) != head_hash:
            raise Corruption("fingerprint index: header checksum mismatch")
        if version != INDEX_BLOB_VERSION:
            raise FormatError(f"fingerprint index: unsupported version {version}")
        if slot_bytes != INDEX_SLOT_BYTES:
            raise FormatError(f"fingerprint index: unsupported slot size {slot_bytes}")
        body = view[INDEX_BLOB_HEADER_BYTES:]
        if len(body) != capacity * INDEX_SLOT_BYTES:
            raise Corruption(
                f"fingerprint index: {len(body)} slot bytes, header says {capacity} slots"
            )
        if xxhash.xxh3_64_intdigest(body) != slots_hash:
            raise Corruption("fingerprint index: slot array checksum mismatch")
        out = ffi.new("nx_index **")
        rc = lib.nx_index_from_raw(_ptr("uint8_t[]", body), len(body), capacity, count, out)
        if rc == lib.NX_ENOMEM:
            raise MemoryError("fingerprint index: allocation failed")
        if rc != lib.NX_OK:
            raise Corruption(f"fingerprint index: inconsistent table (code {rc})")
        self = cls.__new__(cls)
        self._lock = ordered_lock(Level.FINGERPRINT_INDEX, "fingerprint index")
        self._ix = cls._own(out[0])
        return self


def _require_little_endian() -> None:
    if sys.byteorder != "little":  # slot ids are host-order u64; the format is LE
        raise FormatError("fingerprint index persistence needs a little-endian host")


def map_merge(
    top_keys: Any, top_vals: Any, bot_keys: Any, bot_vals: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Union of two block maps; where a key is in both, the top value wins.

    Keys must be sorted strictly ascending (unchecked: otherwise the result is
    unspecified). Returns fresh (keys, vals) uint64 arrays, keys ascending.
    """
    tk, tv = _as_map(top_keys, top_vals, "top")
    bk, bv = _as_map(bot_keys, bot_vals, "bottom")
    cap = tk.size + bk.size
    ok, ov = np.empty(cap, _U64), np.empty(cap, _U64)
    if not cap:
        return ok, ov
    n = lib.nx_map_merge(
        _ptr("uint64_t[]", tk), _ptr("uint64_t[]", tv), tk.size,
        _ptr("uint64_t[]", bk), _ptr("uint64_t[]", bv), bk.size,
        _ptr("uint64_t[]", ok, True), _ptr("uint64_t[]", ov, True),
    )  # fmt: skip
    return ok[:n].copy(), ov[:n].copy()


def map_diff(a_keys: Any, a_vals: Any, b_keys: Any, b_vals: Any) -> np.ndarray:
    """Keys (uint64, ascending) in exactly one map or in both with different values.

    Keys must be sorted strictly ascending (unchecked)."""
    ak, av = _as_map(a_keys, a_vals, "a")
    bk, bv = _as_map(b_keys, b_vals, "b")
    cap = ak.size + bk.size
    out = np.empty(cap, _U64)
    if not cap:
        return out
    n = lib.nx_map_diff(
        _ptr("uint64_t[]", ak), _ptr("uint64_t[]", av), ak.size,
        _ptr("uint64_t[]", bk), _ptr("uint64_t[]", bv), bk.size,
        _ptr("uint64_t[]", out, True),
    )  # fmt: skip
    return out[:n].copy()


def map_lookup(keys: Any, vals: Any, query: Any) -> tuple[np.ndarray, np.ndarray]:
    """Look up query keys (any order, repeats allowed) in a block map.

    Returns (vals uint64, found bool), both shaped like `query`; vals is 0 where
    not found. Map keys must be sorted strictly ascending (unchecked); sorted
    queries are fastest (galloping search)."""
    k, v = _as_map(keys, vals, "map")
    q = _as_u64(query, "query")
    out_v = np.empty(q.size, _U64)
    found = np.empty(q.size, np.bool_)
    if q.size:
        lib.nx_map_lookup(
            _ptr("uint64_t[]", k), _ptr("uint64_t[]", v), k.size,
            _ptr("uint64_t[]", q), q.size,
            _ptr("uint64_t[]", out_v, True), _ptr("uint8_t[]", found, True),
        )  # fmt: skip
    return out_v, found


def map_fill_range(
    keys: np.ndarray, vals: np.ndarray, lo: int, out_v: np.ndarray, found: np.ndarray
) -> int:
    """Fill in what a block map says about the blocks lo .. lo + len(out_v) - 1:
    for each map key in that range whose slot (key - lo) is not yet `found`,
    set out_v[slot] to its value and found[slot]. Returns the slots set.
    Called newest map first, it resolves a chain without a query array.

    keys, vals: uint64 (n,), keys strictly ascending (unchecked); out_v uint64
    and found bool, of one length; all C-contiguous. Raises InvalidArgument
    for other types or shapes, or lo outside 0 .. 2**64 - 1."""
    for arr, dtype, what in ((keys, _U64, "keys"), (vals, _U64, "vals"), (out_v, _U64, "out_v"),
                             (found, np.bool_, "found")):  # fmt: skip
        _require(arr, dtype, 1, what)
    if len(keys) != len(vals) or len(out_v) != len(found):
        raise InvalidArgument(f"{len(keys)} keys, {len(vals)} vals; {len(out_v)} out, {len(found)} found")
    if isinstance(lo, bool) or not isinstance(lo, int) or not 0 <= lo < 2**64:
        raise InvalidArgument(f"lo must be an int in 0 .. 2**64 - 1, not {lo!r}")
    if not len(keys) or not len(out_v):
        return 0
    return int(lib.nx_map_fill_range(
        _ptr("uint64_t[]", keys), _ptr("uint64_t[]", vals), len(keys), lo, len(out_v),
        _ptr("uint64_t[]", out_v, True), _ptr("uint8_t[]", found, True),
    ))  # fmt: skip


def gather_records(
    group: np.ndarray, offset: np.ndarray, slen: np.ndarray, flags: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """What `plan_runs` needs of extents `ids`, from the extent table's columns
    (group, offset, slen uint32, flags uint8; row r describes extent id r):
    (keys int64 = group << 32 | offset, lens int64 = slen, comp bool = the
    compressed flag, ascending), ascending True when the keys are strictly
    ascending, so the records are in file order and none repeats. ids: uint64.
    All C-contiguous 1-D. Raises InvalidArgument for other types or shapes,
    columns of different lengths, or an id past them. See native/plan.h."""
    for arr, dtype, what in ((group, np.uint32, "group"), (offset, np.uint32, "offset"),
                             (slen, np.uint32, "slen"), (flags, np.uint8, "flags"),
                             (ids, _U64, "ids")):  # fmt: skip
        _require(arr, dtype, 1, what)
    rows = len(group)
    if not len(offset) == len(slen) == len(flags) == rows:
        raise InvalidArgument("gather_records: table columns of different lengths")
    n = len(ids)
    keys, lens, comp = np.empty(n, _I64), np.empty(n, _I64), np.empty(n, np.bool_)
    if not n:
        return keys, lens, comp, True
    rc = lib.nx_gather_records(
        _ptr("uint32_t[]", group), _ptr("uint32_t[]", offset), _ptr("uint32_t[]", slen),
        _ptr("uint8_t[]", flags), rows, _ptr("uint64_t[]", ids), n,
        _ptr("int64_t[]", keys, True), _ptr("int64_t[]", lens, True), _ptr("uint8_t[]", comp, True),
    )  # fmt: skip
    if rc < 0:
        raise InvalidArgument(f"gather_records: an id is not below the table's {rows} rows")
    return keys, lens, comp, bool(rc)


def plan_runs(
    keys: np.ndarray, lens: np.ndarray, comp: np.ndarray, dest: np.ndarray, block_size: int,
    max_gap: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The preadv_runs plan of n extent records sorted by key (group << 32 | file
    offset, strictly ascending; unchecked): stored payload lengths `lens`,
    compressed mask `comp`, output rows `dest` of the uncompressed payloads.

    Returns (iovecs int64 (3n, 3), runs int64 (r, 4) with fd 0): per record its
    header (buffer PLAN_HDRS at 64 i), payload (PLAN_OUT at dest * block_size,
    or compressed: PLAN_CBUF, packed in record order) and the gap to the next
    record (PLAN_SINK, zero-length unless the next record is in the same group
    at most max_gap bytes on; they then share a run). See native/plan.h.
    Raises InvalidArgument for arrays of different lengths."""
    k = np.ascontiguousarray(keys, _I64)
    n = len(k)
    ln = np.ascontiguousarray(lens, _I64)
    c = np.ascontiguousarray(comp, np.bool_)
    d = np.ascontiguousarray(dest, _I64)
    if not k.shape == ln.shape == c.shape == d.shape == (n,):
        raise InvalidArgument(f"plan_runs: {n} keys, {ln.shape} lens, {c.shape} comp, {d.shape} dest")
    iovs = np.empty((3 * n, 3), _I64)
    runs = np.empty((n, 4), _I64)
    nruns = 0
    if n:
        nruns = lib.nx_plan_runs(
            _ptr("int64_t[]", k), _ptr("int64_t[]", ln), _ptr("uint8_t[]", c),
            _ptr("int64_t[]", d), n, block_size, max_gap,
            _ptr("int64_t[]", iovs, True), _ptr("int64_t[]", runs, True),
        )  # fmt: skip
    return iovs, runs[:nruns]


def preadv_runs(
    buffers: Sequence[Any], iovecs: np.ndarray, runs: np.ndarray, iov_limit: int = READV_MAX_IOV
) -> np.ndarray:
    """Read a batch of runs from files into `buffers`, in one call without the GIL.

    buffers: writable bytes-like objects (uint8 ndarrays, bytearrays), any size
    including 0. iovecs: int64 (n, 3), one row per iovec: (index into buffers,
    byte offset in that buffer, length); zero-length iovecs are skipped.
    runs: int64 (r, 4), one row per run: (fd, file offset, first iovec row,
    iovec count). Run i fills its iovecs in order from the file starting at the
    offset, with preadv calls of at most `iov_limit` iovecs, continuing after
    a short read until the iovecs are full or the file ends.

    Returns int64 (r,): the bytes each run read (less than its iovecs' total
    only at end of file) or -errno when a read failed (that run's bytes are
    then unspecified; EINTR is retried). Raises InvalidArgument, with nothing
    read, for an iovec outside its buffer, a run naming rows past `iovecs`, a
    negative fd, offset or count, iov_limit outside 1..READV_MAX_IOV, or
    arrays of the wrong shape.
    """
    iov = np.ascontiguousarray(iovecs, _I64)
    run = np.ascontiguousarray(runs, _I64)
    if iov.ndim != 2 or iov.shape[1] != 3 or run.ndim != 2 or run.shape[1] != 4:
        raise InvalidArgument(f"iovecs must be (n, 3) and runs (r, 4), not {iov.shape}, {run.shape}")
    try:
        # held until the call returns: they keep the buffers alive and their memory pinned
        ptrs = [ffi.from_buffer("uint8_t[]", b, require_writable=True) for b in buffers]
    except (TypeError, BufferError) as exc:
        raise InvalidArgument(f"buffers must be writable bytes-like objects: {exc}") from None
    result = np.empty(len(run), _I64)
    rc = lib.nx_preadv_runs(
        ffi.new("uint8_t *[]", ptrs), ffi.new("uint64_t[]", [len(p) for p in ptrs]), len(ptrs),
        _ptr("int64_t[]", iov), len(iov), _ptr("int64_t[]", run), len(run),
        iov_limit, _ptr("int64_t[]", result, True),
    )  # fmt: skip
    if rc != lib.NX_OK:
        raise InvalidArgument("preadv_runs: an iovec or run is out of range, or a bad iov_limit")
    return result


def _require_size(value: Any, lo: int, hi: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidArgument(f"{what} must be an int in {lo}..{hi}, not {value!r}")


def _require_rows(rows: Any) -> tuple[int, int]:
    """(k, block_size) of `rows`, a C-contiguous uint8 (k, block_size) array; else InvalidArgument."""
    _require(rows, np.uint8, 2, "rows")
    k, bs = rows.shape
    _require_size(bs, 1, int(lib.NX_LZ4_MAX_BLOCK), "block_size")
    return k, bs


def lz4_probe_rows(rows: np.ndarray) -> np.ndarray:
    """Which rows of `rows` (uint8 (k, block_size), C-contiguous) are worth
    compressing: bool (k,), False where a spread 1 KiB probe of the row hardly
    compresses (native/lz4batch.h); rows under 8 KiB are always worth it. About
    1/16 of the cost of compressing a 16 KiB row. Raises InvalidArgument for
    another type, shape or layout, or block_size 0."""
    k, bs = _require_rows(rows)
    worth = np.empty(k, np.bool_)
    if k:
        lib.nx_lz4_probe_rows(_ptr("uint8_t[]", rows), k, bs, _ptr("uint8_t[]", worth, True))
    return worth


def lz4_compress_rows(
    rows: np.ndarray, limit: int, gap: int = 0, attempt: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode each row of `rows` (uint8 (k, block_size), C-contiguous): as its raw
    LZ4 block (byte for byte LZ4_compress_default of the system liblz4) when that
    is at most `limit` bytes, else as the row itself. Only rows where `attempt`
    (bool (k,), e.g. from lz4_probe_rows) is True are tried; all when None.

    Returns (buf uint8, lens uint32 (k,), compressed bool (k,)): buf packs, in
    row order, `gap` unwritten bytes (room for a record header) then the payload
    of lens[i] bytes, per row. Raises InvalidArgument for another type, shape
    or layout, block_size 0, or limit/gap/attempt out of range."""
    k, bs = _require_rows(rows)
    _require_size(limit, 0, bs, "limit")
    _require_size(gap, 0, 2**20, "gap")
    tried = ffi.NULL
    if attempt is not None:
        _require(attempt, np.bool_, 1, "attempt")
        if len(attempt) != k:
            raise InvalidArgument(f"{k} rows but {len(attempt)} attempt flags")
        tried = _ptr("uint8_t[]", attempt)
    buf = np.empty(k * (gap + bs), np.uint8)
    lens, comp = np.empty(k, np.uint32), np.empty(k, np.bool_)
    if not k:
        return buf, lens, comp
    used = lib.nx_lz4_compress_rows(
        _ptr("uint8_t[]", rows), k, bs, limit, gap, tried, _ptr("uint8_t[]", buf, True),
        _ptr("uint32_t[]", lens, True), _ptr("uint8_t[]", comp, True),
    )  # fmt: skip
    return buf[:used], lens, comp


def lz4_decompress_batch(
    src: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, block_size: int,
    out2d: np.ndarray, rows: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Decode k raw LZ4 blocks, payload i being src[offsets[i] : offsets[i] +
    lengths[i]], into out2d[i] (or out2d[rows[i]]); return ok, bool (k,): True
    where the payload decodes to exactly `block_size` bytes. A row whose payload
    does not (damaged, truncated, another length) is zeroed; damage never makes
    it read or write outside its payload and row.

    src: uint8 1-D; offsets, lengths (and rows): int64 (k,); out2d: uint8
    (n, block_size), all C-contiguous (n = k without rows). Raises
    InvalidArgument, with nothing written, for other types or shapes, a payload
    outside src, or a row outside out2d."""
    _require(src, np.uint8, 1, "src")
    _require(offsets, _I64, 1, "offsets")
    _require(lengths, _I64, 1, "lengths")
    _require(out2d, np.uint8, 2, "out2d")
    k = len(offsets)
    _require_size(block_size, 1, int(lib.NX_LZ4_MAX_BLOCK), "block_size")
    if len(lengths) != k or out2d.shape[1] != block_size:
        raise InvalidArgument(f"{k} offsets, {len(lengths)} lengths, out2d {out2d.shape}")
    dest = ffi.NULL
    if rows is not None:
        _require(rows, _I64, 1, "rows")
        if len(rows) != k:
            raise InvalidArgument(f"{k} offsets but {len(rows)} rows")
        dest = _ptr("int64_t[]", rows)
    elif len(out2d) < k:
        raise InvalidArgument(f"{k} payloads but out2d has {len(out2d)} rows")
    ok = np.zeros(k, np.bool_)
    if not k:
        return ok
    rc = lib.nx_lz4_decompress_rows(
        _ptr("uint8_t[]", src), len(src), _ptr("int64_t[]", offsets), _ptr("int64_t[]", lengths),
        k, block_size, _ptr("uint8_t[]", out2d, True), len(out2d), dest,
        _ptr("uint8_t[]", ok, True),
    )  # fmt: skip
    if rc < 0:
        raise InvalidArgument("lz4_decompress_batch: a payload lies outside src or a row outside out2d")
    return ok


def copy_runs(src: np.ndarray, dst: np.ndarray, src_off: np.ndarray, dst_off: np.ndarray,
              lengths: np.ndarray) -> None:
    """dst[dst_off[i]:dst_off[i] + lengths[i]] = src[src_off[i]:src_off[i] + lengths[i]]
    for every i, in order, in one call without the GIL (gathering variable-length records
    into one buffer). src and dst: C-contiguous 1-D uint8 arrays, not overlapping; the
    offsets and lengths int64. Raises InvalidArgument, with nothing copied, for other
    types, arrays of different lengths, or a run outside its buffer. See native/readv.h."""
    _require(src, np.uint8, 1, "src")
    _require(dst, np.uint8, 1, "dst")
    so, do, ln = (np.ascontiguousarray(a, _I64) for a in (src_off, dst_off, lengths))
    if not so.ndim == do.ndim == ln.ndim == 1 or not len(so) == len(do) == len(ln):
        raise InvalidArgument(f"copy_runs: {so.shape} src offsets, {do.shape} dst offsets, "
                              f"{ln.shape} lengths")
    rc = lib.nx_copy_runs(
        _ptr("uint8_t[]", src), src.size, _ptr("uint8_t[]", dst, True), dst.size,
        _ptr("int64_t[]", so), _ptr("int64_t[]", do), _ptr("int64_t[]", ln), len(ln),
    )  # fmt: skip
    if rc != lib.NX_OK:
        raise InvalidArgument("copy_runs: a run has a negative offset or length or lies "
                              "outside its buffer")


GMAC_KEY_BYTES = int(lib.NX_GMAC_KEY_BYTES)
GMAC_TAG_BYTES = int(lib.NX_GMAC_TAG_BYTES)


def gmac_tag(key: bytes, counter: int, parts: Sequence[Any]) -> bytes:
    """The AES-256-GMAC tag (16 bytes) of the concatenated `parts` (bytes-like, each
    C-contiguous) under the 32-byte `key` and the nonce made of `counter` (u64): the frame
    MAC of replication protocol version 5, through the system libcrypto (native/framemac.h).
    Never call twice with one key and counter on different data. Raises InvalidArgument for
    a key of another length or a counter outside u64; NxError if libcrypto fails."""
    if len(key) != GMAC_KEY_BYTES:
        raise InvalidArgument(f"gmac_tag: key of {len(key)} bytes, need {GMAC_KEY_BYTES}")
    if not 0 <= counter < 1 << 64:
        raise InvalidArgument(f"gmac_tag: counter {counter} is not a u64")
    bufs = [_ptr("uint8_t[]", p) for p in parts]
    tag = bytearray(GMAC_TAG_BYTES)
    rc = lib.nx_gmac(key, counter, bufs, [len(b) for b in bufs], len(bufs), _ptr("uint8_t[]", tag, True))
    if rc != lib.NX_OK:
        raise NxError(f"gmac_tag: libcrypto failed (status {rc})")
    return bytes(tag)

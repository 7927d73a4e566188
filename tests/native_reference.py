"""Slow pure-Python references for nxstore.native, used only by the tests.

Each function states the same contract as its native twin in the simplest
code that can be checked by eye; tests/test_native.py proves they agree.
"""

from __future__ import annotations

import struct

import numpy as np
import xxhash

SLOT_BYTES = 24
HEADER = struct.Struct("<8sIIQQQ")  # + u64 header hash = 48 bytes
HOME_MULTIPLIER = 0x9E3779B97F4A7C15


def fingerprint_blocks(buf: bytes, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(fps (n, 16) uint8, zero (n,) bool), one xxhash call per block."""
    blocks = [buf[i : i + block_size] for i in range(0, len(buf), block_size)]
    fps = np.array([list(xxhash.xxh3_128(b).digest()) for b in blocks], dtype=np.uint8).reshape(
        -1, 16
    )
    zero = np.array([b.count(0) == len(b) for b in blocks], dtype=bool)
    return fps, zero


class DictIndex:
    """The fingerprint index as a dict {fp bytes: id}."""

    def __init__(self) -> None:
        self.d: dict[bytes, int] = {}

    def lookup(self, fps: list[bytes]) -> list[int]:
        return [self.d.get(fp, 0) for fp in fps]

    def lookup_or_insert(self, fps: list[bytes], next_id: int) -> tuple[list[int], list[bool], int]:
        ids, new = [], []
        nid = next_id
        for fp in fps:
            if fp in self.d:
                ids.append(self.d[fp])
                new.append(False)
            else:
                self.d[fp] = nid
                ids.append(nid)
                new.append(True)
                nid += 1
        return ids, new, nid - next_id

    def insert(self, fps: list[bytes], ids: list[int]) -> None:
        for fp, i in zip(fps, ids, strict=True):
            self.d[fp] = i

    def remove(self, fps: list[bytes]) -> int:
        return sum(self.d.pop(fp, None) is not None for fp in fps)


def slot_home(fp: bytes, capacity: int) -> int:
    """Home slot of a fingerprint, as documented in docs/format.md."""
    lo, hi = struct.unpack("<QQ", fp)
    shift = 64 - (capacity.bit_length() - 1)
    return (((lo ^ hi) * HOME_MULTIPLIER) % 2**64) >> shift


def parse_index_blob(data: bytes) -> dict[bytes, int]:
    """Decode FingerprintIndex.to_bytes() from the documented layout alone,
    asserting every documented invariant; return {fp: id}."""
    magic, version, slot_bytes, capacity, count, slots_hash = HEADER.unpack_from(data)
    (head_hash,) = struct.unpack_from("<Q", data, HEADER.size)
    assert (magic, version, slot_bytes) == (b"NXFPIDX\0", 1, SLOT_BYTES)
    assert head_hash == xxhash.xxh3_64_intdigest(data[: HEADER.size])
    body = data[48:]
    assert len(body) == capacity * SLOT_BYTES and capacity & (capacity - 1) == 0
    assert slots_hash == xxhash.xxh3_64_intdigest(body)
    out: dict[bytes, int] = {}
    slots = [body[i * SLOT_BYTES : (i + 1) * SLOT_BYTES] for i in range(capacity)]
    for pos, s in enumerate(slots):
        fp, (ident,) = s[:16], struct.unpack("<Q", s[16:])
        if ident == 0:
            assert s == bytes(SLOT_BYTES)
            continue
        p = slot_home(fp, capacity)  # linear probe from home must reach pos
        while p != pos:
            assert struct.unpack("<Q", slots[p][16:])[0] != 0 and slots[p][:16] != fp
            p = (p + 1) % capacity
        out[fp] = ident
    assert len(out) == count and count * 10 <= capacity * 7
    return out


def reseal_index_blob(data: bytearray) -> bytes:
    """Recompute both checksums of a (tampered) index blob."""
    body = bytes(data[48:])
    struct.pack_into("<Q", data, 32, xxhash.xxh3_64_intdigest(body))
    struct.pack_into("<Q", data, 40, xxhash.xxh3_64_intdigest(bytes(data[:40])))
    return bytes(data)


def map_merge(top: dict[int, int], bot: dict[int, int]) -> tuple[list[int], list[int]]:
    merged = {**bot, **top}
    keys = sorted(merged)
    return keys, [merged[k] for k in keys]


def map_diff(a: dict[int, int], b: dict[int, int]) -> list[int]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) or (k in a) != (k in b))


def map_lookup(m: dict[int, int], query: list[int]) -> tuple[list[int], list[bool]]:
    return [m.get(q, 0) for q in query], [q in m for q in query]

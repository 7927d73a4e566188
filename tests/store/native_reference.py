"""Slow pure-Python references for nxstore.native, used only by the tests.

Each function states the same contract as its native twin in the simplest
code that can be checked by eye; tests/store/test_native.py proves they agree.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

import lz4.block
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


def checksum_rows(rows: np.ndarray, nbytes: int) -> list[int]:
    """XXH3-64 of the first nbytes of each row, one xxhash call per row."""
    return [xxhash.xxh3_64_intdigest(row[:nbytes].tobytes()) for row in rows]


def check_headers(
    hdrs: np.ndarray, ids: np.ndarray, slens: np.ndarray, flags: np.ndarray, block_size: int
) -> list[bool]:
    """Each 64-byte header parsed field by field (docs/format.md): bad unless the
    magic, compressed flag, id, raw length, stored length and checksum match."""
    out = []
    for i in range(len(hdrs)):
        h = hdrs[i].tobytes()
        magic, _version, hflags, _, hid, raw, hslen = struct.unpack_from("<4sBBHQII", h)
        (hck,) = struct.unpack_from("<Q", h, 56)
        out.append(
            magic != b"NXEX" or (hflags ^ int(flags[i])) & 1 != 0 or hid != int(ids[i])
            or raw != block_size or hslen != int(slens[i])
            or hck != xxhash.xxh3_64_intdigest(h[:56])
        )  # fmt: skip
    return out


def plan_runs(
    keys: list[int], lens: list[int], comp: list[bool], dest: list[int], block_size: int,
    max_gap: int,
) -> tuple[list[tuple[int, int, int]], list[list[int]]]:  # fmt: skip
    """Record by record: iovecs (header, payload, gap) and runs, a new run after
    any record whose successor is in another group, overlaps it, or starts more
    than max_gap bytes past its end."""
    iovs: list[tuple[int, int, int]] = []
    runs: list[list[int]] = []
    cpos, joined = 0, False
    for i, key in enumerate(keys):
        if not joined:
            runs.append([0, key % 2**32, 3 * i, 0])
        runs[-1][3] += 3
        if comp[i]:
            payload, cpos = (3, cpos, lens[i]), cpos + lens[i]
        else:
            payload = (2, dest[i] * block_size, block_size)
        gap = keys[i + 1] - (key + 64 + lens[i]) if i + 1 < len(keys) else -1
        joined = 0 <= gap <= max_gap and keys[i + 1] // 2**32 == key // 2**32
        iovs += [(1, 64 * i, 64), payload, (0, 0, gap if joined else 0)]
    return iovs, runs


def preadv_runs(
    buffers: list[bytearray], iovecs: list[tuple[int, int, int]],
    runs: list[tuple[int, int, int, int]], iov_limit: int,
) -> list[int]:  # fmt: skip
    """Each run with os.preadv, at most iov_limit non-empty iovecs a call, going
    on after a short read until its iovecs are full or a read returns 0 bytes;
    -errno where a read raised."""
    views = [memoryview(b) for b in buffers]
    out = []
    for fd, pos, first, count in runs:
        todo = [views[b][o : o + n] for b, o, n in iovecs[first : first + count] if n]
        done = 0
        try:
            while todo:
                got = os.preadv(fd, todo[:iov_limit], pos + done)
                if got == 0:
                    break
                done += got
                while got:  # drop the filled iovecs, shorten a part-filled one
                    if got >= len(todo[0]):
                        got -= len(todo.pop(0))
                    else:
                        todo[0], got = todo[0][got:], 0
        except OSError as exc:
            done = -exc.errno
        out.append(done)
    return out


def map_merge(top: dict[int, int], bot: dict[int, int]) -> tuple[list[int], list[int]]:
    merged = {**bot, **top}
    keys = sorted(merged)
    return keys, [merged[k] for k in keys]


def map_diff(a: dict[int, int], b: dict[int, int]) -> list[int]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) or (k in a) != (k in b))


def map_lookup(m: dict[int, int], query: list[int]) -> tuple[list[int], list[bool]]:
    return [m.get(q, 0) for q in query], [q in m for q in query]


def map_fill_range(
    m: dict[int, int], lo: int, out: list[int], found: list[bool]
) -> int:
    """Block by block of [lo, lo + len(out)): take m's value where not yet found."""
    n = 0
    for at in range(len(out)):
        if not found[at] and lo + at in m:
            out[at], found[at], n = m[lo + at], True, n + 1
    return n


def verify_blocks(blocks: np.ndarray, table: np.ndarray, ids: list[int]) -> int:
    """The first row whose xxhash XXH3-128 digest is not table row ids[i] (or
    whose id is past the table), else the number of rows."""
    for i, row in enumerate(blocks):
        if ids[i] >= len(table) or xxhash.xxh3_128(row.tobytes()).digest() != table[ids[i]].tobytes():
            return i
    return len(blocks)


def gather_records(
    group: list[int], offset: list[int], slen: list[int], flags: list[int], ids: list[int]
) -> tuple[list[int], list[int], list[bool], bool] | None:
    """Per id its (group << 32 | offset, stored length, compressed bit) and whether
    the keys strictly ascend; None if an id is past the columns."""
    if any(i >= len(group) for i in ids):
        return None
    keys = [group[i] * 2**32 + offset[i] for i in ids]
    return (keys, [slen[i] for i in ids], [flags[i] & 1 == 1 for i in ids],
            all(a < b for a, b in zip(keys, keys[1:], strict=False)))  # fmt: skip


# --- lz4 batch codec ------------------------------------------------------------
# The stored form is a raw LZ4 block: LZ4_compress_default of the system liblz4, called here
# through ctypes one block at a time (python-lz4 bundles its own lz4, whose blocks may differ
# byte for byte; both decode each other's).
_LIBLZ4 = ctypes.CDLL(ctypes.util.find_library("lz4") or "liblz4.so.1")
LZ4_SAMPLE_SLICES, LZ4_SAMPLE_SLICE_BYTES, LZ4_SAMPLE_MIN_SAVING = 4, 256, 32
LZ4_SAMPLE_MIN_BLOCK = 8192


def lz4_compress_default(block: bytes) -> bytes:
    """LZ4_compress_default(block), unlimited output."""
    dst = ctypes.create_string_buffer(len(block) + len(block) // 255 + 16)
    n = _LIBLZ4.LZ4_compress_default(block, dst, len(block), len(dst))
    assert n > 0
    return dst.raw[:n]


def lz4_worth_compressing(block: bytes) -> bool:
    """The incompressibility probe of native/lz4batch.h, from its description."""
    if len(block) < LZ4_SAMPLE_MIN_BLOCK:
        return True
    step = len(block) // LZ4_SAMPLE_SLICES
    sample = b"".join(
        block[s * step : s * step + LZ4_SAMPLE_SLICE_BYTES] for s in range(LZ4_SAMPLE_SLICES)
    )
    return len(lz4_compress_default(sample)) <= len(sample) - len(sample) // LZ4_SAMPLE_MIN_SAVING


def lz4_encode(block: bytes, limit: int, sample: bool) -> tuple[bytes, bool]:
    """(payload, compressed) of one block as the extent store stores it (sample: the probe
    decides which blocks are tried)."""
    if limit and (not sample or lz4_worth_compressing(block)):
        p = lz4_compress_default(block)
        if len(p) <= limit:
            return p, True
    return block, False


def lz4_decode(payload: bytes, block_size: int) -> bytes | None:
    """The block a payload decodes to with python-lz4, None unless exactly block_size bytes."""
    try:
        raw = lz4.block.decompress(payload, uncompressed_size=block_size)
    except lz4.block.LZ4BlockError:
        return None
    return raw if len(raw) == block_size else None


def copy_runs(src: bytes, dst: bytearray, runs: list[tuple[int, int, int]]) -> None:
    """Each run (src offset, dst offset, length) by slicing, in order."""
    for a, b, n in runs:
        dst[b : b + n] = src[a : a + n]


# -- AES-256-GMAC (native/framemac.h), after FIPS-197 and NIST SP 800-38D ---------------------
def _xtime(a: int) -> int:
    return ((a << 1) ^ 0x11B) if a & 0x80 else a << 1


def _gf8_mul(a: int, b: int) -> int:
    p = 0
    while b:
        if b & 1:
            p ^= a
        a, b = _xtime(a), b >> 1
    return p


def _sbox() -> list[int]:
    """The AES S-box: the inverse in GF(2^8) (0 for 0), then the affine map."""
    box = []
    for x in range(256):
        inv = next((y for y in range(1, 256) if _gf8_mul(x, y) == 1), 0)
        rot = lambda v, k: ((v << k) | (v >> (8 - k))) & 0xFF  # noqa: E731
        box.append(inv ^ rot(inv, 1) ^ rot(inv, 2) ^ rot(inv, 3) ^ rot(inv, 4) ^ 0x63)
    return box


SBOX = _sbox()


def aes256_round_keys(key: bytes) -> list[list[int]]:
    """The 15 round keys (16 bytes each) of AES-256 (FIPS-197 5.2)."""
    w = [list(key[4 * i: 4 * i + 4]) for i in range(8)]
    rcon = 1
    for i in range(8, 60):
        t = list(w[i - 1])
        if i % 8 == 0:
            t = [SBOX[b] for b in t[1:] + t[:1]]
            t[0] ^= rcon
            rcon = _xtime(rcon)
        elif i % 8 == 4:
            t = [SBOX[b] for b in t]
        w.append([a ^ b for a, b in zip(w[i - 8], t, strict=True)])
    return [sum(w[4 * r: 4 * r + 4], []) for r in range(15)]


def aes256_encrypt_block(round_keys: list[list[int]], block: bytes) -> bytes:
    """One AES-256 block encryption (FIPS-197 5.1); state byte r + 4c is row r, column c."""
    s = [b ^ k for b, k in zip(block, round_keys[0], strict=True)]
    for r in range(1, 15):
        s = [SBOX[b] for b in s]
        s = [s[(i % 4) + 4 * ((i // 4 + i % 4) % 4)] for i in range(16)]  # ShiftRows
        if r < 14:  # MixColumns
            mixed = []
            for c in range(4):
                a = s[4 * c: 4 * c + 4]
                m2 = [_gf8_mul(x, 2) for x in a]
                m3 = [_gf8_mul(x, 3) for x in a]
                mixed += [m2[0] ^ m3[1] ^ a[2] ^ a[3], a[0] ^ m2[1] ^ m3[2] ^ a[3],
                          a[0] ^ a[1] ^ m2[2] ^ m3[3], m3[0] ^ a[1] ^ a[2] ^ m2[3]]
            s = mixed
        s = [b ^ k for b, k in zip(s, round_keys[r], strict=True)]
    return bytes(s)


def _gf128_mul(x: int, y: int) -> int:
    """Multiplication in GCM's GF(2^128) (SP 800-38D, Algorithm 1; bit 0 is the MSB)."""
    z, v = 0, y
    for i in range(127, -1, -1):
        if (x >> i) & 1:
            z ^= v
        v = (v >> 1) ^ (0xE1 << 120) if v & 1 else v >> 1
    return z


def gmac(key: bytes, counter: int, parts: list[bytes]) -> bytes:
    """GCM-AES-256 tag with IV = 4 zero bytes + u64 LE counter, no plaintext and the joined
    `parts` as additional data: the contract of nx_gmac."""
    rk = aes256_round_keys(key)
    h = int.from_bytes(aes256_encrypt_block(rk, bytes(16)), "big")
    aad = b"".join(parts)
    x = 0
    for i in range(0, len(aad), 16):
        x = _gf128_mul(x ^ int.from_bytes(aad[i: i + 16].ljust(16, b"\0"), "big"), h)
    x = _gf128_mul(x ^ ((len(aad) * 8) << 64), h)
    j0 = bytes(4) + counter.to_bytes(8, "little") + (1).to_bytes(4, "big")
    return (x ^ int.from_bytes(aes256_encrypt_block(rk, j0), "big")).to_bytes(16, "big")

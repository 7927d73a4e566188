"""The native lz4 batch codec agrees with one-block-at-a-time references (native_reference):
the same decisions and bytes when compressing, the same verdicts when decoding damaged
payloads, and nothing read or written outside the payloads and rows it is given."""

from __future__ import annotations

import os

import lz4.block
import native_reference as ref
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nxstore.constants import COMPRESS_MIN_SAVING
from nxstore.errors import InvalidArgument
from nxstore.store import native, parallel
from nxstore.store.extent_group import (
    FLAG_COMPRESSED,
    FLAG_INDEXED,
    HEADER_BYTES,
    HEADER_DTYPE,
    ExtentCorruption,
    decode_payloads,
    encode_records,
    fill_headers,
    group_file_name,
)
from nxstore.store.extent_store import ExtentStore
from nxstore.store.parallel import WORKERS, split_rows

I64 = np.int64


def _row(kind: str, bs: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if kind == "zero":
        return bytes(bs)
    if kind == "random":
        return rng.bytes(bs)
    if kind == "low_entropy":  # compresses by a margin that depends on the limit
        return rng.integers(0, 4, bs, dtype=np.uint8).tobytes()
    if kind == "text":
        words = [b"extent ", b"group ", b"record ", b"%d " % seed, b"snapshot\n"]
        out = b"".join(words[i] for i in rng.integers(0, len(words), bs // 4 + 1))
        return (out * (bs // len(out) + 1))[:bs]
    if kind == "random_head":  # the first bytes do not compress, the rest is zero
        return rng.bytes(bs // 4) + bytes(bs - bs // 4)
    # "random_except_slices": zero where the probe looks, random elsewhere
    arr = np.frombuffer(rng.bytes(bs), np.uint8).copy()
    step = bs // ref.LZ4_SAMPLE_SLICES
    for s in range(ref.LZ4_SAMPLE_SLICES):
        arr[s * step : s * step + ref.LZ4_SAMPLE_SLICE_BYTES] = 0
    return arr.tobytes()


KINDS = ["zero", "random", "low_entropy", "text", "random_head", "random_except_slices"]


@st.composite
def row_batches(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    bs = draw(st.sampled_from([1, 17, 300, 4096, 8192, 16384]))
    kinds = draw(st.lists(st.sampled_from(KINDS), max_size=8))
    seed = draw(st.integers(0, 2**16))
    rows = [_row(kind, bs, seed + i) for i, kind in enumerate(kinds)]
    return np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), bs).copy(), bs


def _unpack(buf: np.ndarray, lens: np.ndarray, gap: int) -> list[bytes]:
    out, pos = [], 0
    for n in lens.tolist():
        out.append(buf[pos + gap : pos + gap + n].tobytes())
        pos += gap + n
    assert pos == len(buf)
    return out


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(row_batches(), st.sampled_from([None, 0, 1, 2]), st.integers(0, 80), st.booleans())
def test_compress_matches_reference(
    case: tuple[np.ndarray, int], limit_kind: int | None, gap: int, sample: bool
) -> None:
    rows, bs = case
    limit = {None: bs - bs // COMPRESS_MIN_SAVING, 0: 0, 1: bs, 2: bs // 2}[limit_kind]
    worth = native.lz4_probe_rows(rows)
    assert worth.tolist() == [ref.lz4_worth_compressing(r.tobytes()) for r in rows]
    buf, lens, comp = native.lz4_compress_rows(rows, limit, gap, worth if sample else None)
    assert lens.dtype == np.uint32 and comp.dtype == np.bool_ and len(lens) == len(rows)
    for i, payload in enumerate(_unpack(buf, lens, gap)):
        want, want_comp = ref.lz4_encode(rows[i].tobytes(), limit, sample)
        assert (payload, bool(comp[i])) == (want, want_comp), (i, bs, limit)
        if want_comp:  # python-lz4 (its own bundled lz4) decodes it
            assert lz4.block.decompress(payload, uncompressed_size=bs) == rows[i].tobytes()


@pytest.mark.parametrize("bs", [4096, 16384, 65536])
def test_compress_decisions_by_kind(bs: int) -> None:
    """The probe skips random rows but still compresses a row whose head alone is
    random; the limit keeps what saves >= 1/8 (a random row with zero probe slices:
    half zero in 4 KiB, too little zero in bigger blocks)."""
    kinds = ["zero", "random", "text", "random_head", "random_except_slices"]
    rows = np.frombuffer(b"".join(_row(k, bs, 7) for k in kinds), np.uint8).reshape(-1, bs)
    want = [True, False, True, True, bs == 4096]
    assert native.lz4_probe_rows(rows).tolist() == [True, bs < 8192, True, True, True]
    for attempt in (native.lz4_probe_rows(rows), None):
        _, lens, comp = native.lz4_compress_rows(rows, bs - bs // COMPRESS_MIN_SAVING, 0, attempt)
        assert comp.tolist() == want
        assert lens[1] == bs and np.all(lens[comp] <= bs - bs // COMPRESS_MIN_SAVING)


def _payloads(rows: list[bytes]) -> list[bytes]:
    return [lz4.block.compress(r, store_size=False) for r in rows]


def _damage(payload: bytes, how: str, draw: st.DrawFn) -> bytes:
    if how == "truncate":
        return payload[: draw(st.integers(0, max(len(payload) - 1, 0)))]
    if how == "flip" and payload:
        i = draw(st.integers(0, len(payload) - 1))
        return payload[:i] + bytes([payload[i] ^ draw(st.integers(1, 255))]) + payload[i + 1 :]
    if how == "random":
        return draw(st.binary(max_size=300))
    if how == "extend":
        return payload + draw(st.binary(min_size=1, max_size=20))
    return payload


@st.composite
def payload_batches(draw: st.DrawFn) -> tuple[list[bytes], list[bytes | None], int]:
    """(payloads, the block each decodes to or None, block_size)."""
    bs = draw(st.sampled_from([1, 64, 300, 4096, 16384]))
    n = draw(st.integers(0, 8))
    seed = draw(st.integers(0, 2**16))
    rows = [_row(draw(st.sampled_from(KINDS)), bs, seed + i) for i in range(n)]
    other = [_row("text", 2 * bs, seed)]  # decodes, but to the wrong length
    payloads = []
    for p in _payloads(rows):
        how = draw(st.sampled_from(["none", "none", "truncate", "flip", "random", "extend", "long"]))
        payloads.append(_payloads(other)[0] if how == "long" else _damage(p, how, draw))
    return payloads, [ref.lz4_decode(p, bs) for p in payloads], bs


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(payload_batches(), st.integers(0, 16), st.booleans())
def test_decompress_matches_reference(
    case: tuple[list[bytes], list[bytes | None], int], pad: int, scatter: bool
) -> None:
    payloads, want, bs = case
    k = len(payloads)
    # payloads packed with junk between them: a truncated payload must not read on
    src = b"".join(b"\xaa" * pad + p for p in payloads) + b"\x55" * pad
    ends = np.cumsum([pad + len(p) for p in payloads], dtype=I64)
    lengths = np.array([len(p) for p in payloads], I64)
    offsets = ends - lengths
    srcarr = np.frombuffer(src, np.uint8)
    if scatter:  # into every other row of a bigger array; the rows between stay untouched
        out = np.full((2 * k + 1, bs), 0xEE, np.uint8)
        rows = np.arange(k, dtype=I64)[::-1] * 2 + 1
        ok = native.lz4_decompress_batch(srcarr, offsets, lengths, bs, out, rows.copy())
        got = out[rows]
        assert np.all(out[0::2] == 0xEE)
    else:
        out = np.full((k, bs), 0xEE, np.uint8)
        ok = native.lz4_decompress_batch(srcarr, offsets, lengths, bs, out)
        got = out
    assert ok.dtype == np.bool_ and ok.tolist() == [w is not None for w in want]
    for i, w in enumerate(want):
        assert got[i].tobytes() == (w if w is not None else bytes(bs))


def test_decompress_reads_blocks_made_by_both_libraries() -> None:
    bs = 16384
    rows = np.frombuffer(b"".join(_row("text", bs, s) for s in range(3)), np.uint8).reshape(3, bs)
    buf, lens, comp = native.lz4_compress_rows(rows, bs)
    assert comp.all()
    mine = _unpack(buf, lens, 0)
    theirs = _payloads([r.tobytes() for r in rows])
    src = np.frombuffer(b"".join(mine + theirs), np.uint8)
    lengths = np.array([len(p) for p in mine + theirs], I64)
    offsets = np.cumsum(lengths) - lengths
    out = np.empty((6, bs), np.uint8)
    assert native.lz4_decompress_batch(src, offsets, lengths, bs, out).all()
    assert np.array_equal(out[:3], rows) and np.array_equal(out[3:], rows)


def test_lz4_argument_errors() -> None:
    rows = np.zeros((2, 4096), np.uint8)
    for bad in (rows.astype(np.int8), rows[:, ::2], rows.reshape(-1), b"\0" * 8192):
        with pytest.raises(InvalidArgument):
            native.lz4_compress_rows(bad, 100)  # type: ignore[arg-type]
    for limit, gap in ((-1, 0), (4097, 0), (True, 0), (100, -1), (1.5, 0)):
        with pytest.raises(InvalidArgument):
            native.lz4_compress_rows(rows, limit, gap)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        native.lz4_compress_rows(np.zeros((2, 0), np.uint8), 0)
    for attempt in (np.ones(3, bool), np.ones(2, np.uint8), np.ones((2, 1), bool)):
        with pytest.raises(InvalidArgument):
            native.lz4_compress_rows(rows, 100, 0, attempt)
    for bad in (rows.astype(np.int8), rows[:, ::2], np.zeros((2, 0), np.uint8)):
        with pytest.raises(InvalidArgument):
            native.lz4_probe_rows(bad)

    src = np.frombuffer(lz4.block.compress(bytes(4096), store_size=False), np.uint8)
    n = len(src)
    out = np.zeros((2, 4096), np.uint8)

    def call(offs: list[int], lens: list[int], bs: int = 4096, o: np.ndarray = out,
             rows: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        return native.lz4_decompress_batch(src, np.array(offs, I64), np.array(lens, I64), bs, o,
                                           rows)  # fmt: skip

    assert call([0], [n]).tolist() == [True]
    for offs, lens in (([0], [n + 1]), ([1], [n]), ([-1], [1]), ([0], [-1]), ([0, 0], [n]),
                       ([n + 1], [0]), ([0] * 3, [n] * 3)):  # fmt: skip
        with pytest.raises(InvalidArgument):
            call(offs, lens)
    for rows in (np.array([2], I64), np.array([-1], I64), np.array([0, 1], I64),
                 np.array([0], np.int32)):  # fmt: skip
        with pytest.raises(InvalidArgument):
            call([0], [n], rows=rows)
    with pytest.raises(InvalidArgument):
        call([0], [n], bs=4095)
    with pytest.raises(InvalidArgument):
        call([0], [n], o=out[:, ::2])
    with pytest.raises(InvalidArgument):
        native.lz4_decompress_batch(src.astype(np.int8), np.zeros(1, I64), np.ones(1, I64),
                                    4096, out)  # fmt: skip
    out[:] = 7  # nothing written on an argument error
    with pytest.raises(InvalidArgument):
        call([0, 0], [n, n + 1])
    assert np.all(out == 7)


# --- the records the extent store writes, and the split over cores ----------------------------


@pytest.fixture
def idle_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split as on an idle host, whatever the load of the one running the tests."""
    monkeypatch.setattr(parallel, "host_busy", lambda: False)


@pytest.mark.parametrize(("bs", "k"), [(4096, 3), (4096, 200), (16384, 40)])
@pytest.mark.usefixtures("idle_cores")
def test_encode_records_matches_one_record_at_a_time(bs: int, k: int) -> None:
    """Whatever the split over cores, the buffer is each record's header then its payload,
    in row order, as the extent store always wrote them (docs/format.md)."""
    rows = np.frombuffer(b"".join(_row(KINDS[i % len(KINDS)], bs, i) for i in range(k)),
                         np.uint8).reshape(k, bs)  # fmt: skip
    ids = np.arange(10, 10 + k, dtype=np.uint64)
    flags = np.full(k, FLAG_INDEXED, np.uint8)
    fps, _ = native.fingerprint_blocks(rows, bs)
    limit = bs - bs // COMPRESS_MIN_SAVING
    buf, sizes, comp = encode_records(ids, flags, bs, 3, fps, rows, limit)
    want = []
    for i in range(k):
        payload, compressed = ref.lz4_encode(rows[i].tobytes(), limit, True)
        assert bool(comp[i]) == compressed
        hdr = np.zeros(1, HEADER_DTYPE)
        fill_headers(hdr, ids[i : i + 1], flags[i] | (FLAG_COMPRESSED * compressed), bs,
                     np.array([len(payload)]), 3, fps[i : i + 1])  # fmt: skip
        want.append(hdr.tobytes() + payload)
    assert buf.tobytes() == b"".join(want)
    assert sizes.tolist() == [len(w) for w in want]
    raw, ok = decode_payloads(buf, np.cumsum(sizes) - sizes + HEADER_BYTES, sizes - HEADER_BYTES,
                              comp, bs)  # fmt: skip
    assert ok.all() and np.array_equal(raw, rows)


@pytest.mark.usefixtures("idle_cores")
def test_split_rows_order_parts_and_errors() -> None:
    calls: list[tuple[int, int]] = []
    assert split_rows(lambda lo, hi: calls.append((lo, hi)) or (lo, hi), 5, 4) == [(0, 5)]
    assert calls == [(0, 5)]
    got = split_rows(lambda lo, hi: (lo, hi), 1000, 10)
    edges = [lo for lo, _ in got] + [got[-1][1]]
    assert edges[0] == 0 and edges[-1] == 1000 and len(got) == min(WORKERS, 100)
    assert all(a[1] == b[0] for a, b in zip(got, got[1:], strict=False))

    def boom(lo: int, hi: int) -> int:
        if lo:
            raise InvalidArgument("part")
        return hi

    if WORKERS > 1:
        with pytest.raises(InvalidArgument):
            split_rows(boom, 1000, 10)


def test_split_rows_is_one_call_on_a_busy_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "_load", (-1.0, False))
    monkeypatch.setattr(parallel.os, "getloadavg", lambda: (parallel._CORES + 1.0, 0.0, 0.0))
    assert parallel.host_busy()
    assert split_rows(lambda lo, hi: (lo, hi), 1000, 10) == [(0, 1000)]
    monkeypatch.setattr(parallel, "_load", (-1.0, True))
    monkeypatch.setattr(parallel.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert not parallel.host_busy()


@pytest.mark.usefixtures("idle_cores")
def test_read_names_a_compressed_payload_that_does_not_decode(tmp_path) -> None:
    """One payload among many (a read split over the cores) overwritten so that lz4 rejects
    it: the read names that extent and why; the others still read back."""
    bs, k, bad = 4096, 600, 450
    rows = np.frombuffer(b"".join(_row("text", bs, i) for i in range(k)), np.uint8)
    store = ExtentStore.open(str(tmp_path / "ex"), bs, create=True)
    try:
        ids = store.put_blocks(rows)
        assert store.stats()["compressed_extents"] == k
        e = int(ids[bad])
        off, slen = int(store._table.offset[e]), int(store._table.slen[e])
        store.sync()
        with open(os.path.join(store.directory, group_file_name(1)), "r+b") as f:
            f.seek(off + HEADER_BYTES)
            f.write(b"\xff" * slen)  # literal lengths that run past the payload
        out = np.empty(k * bs, np.uint8)
        with pytest.raises(ExtentCorruption) as ei:
            store.read_blocks(ids, out)
        assert ei.value.extent_id == e and ei.value.batch_index == bad
        assert "payload does not decode" in str(ei.value)
        good = np.delete(ids, bad)
        out = np.empty(len(good) * bs, np.uint8)
        store.read_blocks(good, out)
        assert np.array_equal(out.reshape(-1, bs), np.delete(rows.reshape(k, bs), bad, axis=0))
    finally:
        store.close()

/*
 * fingerprint.h - batched block fingerprints, zero detection and row checksums.
 *
 * A fingerprint is the XXH3-128 hash (seed 0) of a block's bytes, stored in
 * canonical form (XXH128_canonicalFromHash: big-endian high64 then low64), so
 * it equals python `xxhash.xxh3_128(block).digest()` on every host.
 */
#ifndef NX_FINGERPRINT_H
#define NX_FINGERPRINT_H

#include <stddef.h>
#include <stdint.h>

#define NX_FINGERPRINT_BYTES 16

/*
 * nx_fingerprint_blocks: hash `nblocks` consecutive blocks of `block_size`
 * bytes starting at `buf` (any alignment).
 *   fps_out  receives 16 * nblocks bytes: fingerprint i at fps_out + 16 * i.
 *   zero_out receives nblocks bytes: 1 iff block i is all zero bytes, else 0.
 * nblocks == 0 writes nothing. block_size == 0 hashes empty blocks.
 * Never fails; touches no global state; safe to call from several threads.
 */
void nx_fingerprint_blocks(const uint8_t *buf, size_t nblocks, size_t block_size,
                           uint8_t *fps_out, uint8_t *zero_out);

/*
 * nx_checksum_rows: out[i] = XXH3-64 (seed 0, as python
 * `xxhash.xxh3_64_intdigest`) of the first `len` bytes of row i, the row
 * starting at buf + i * stride (any alignment), for i < nrows. The extent
 * store checks record headers with it: one call per batch instead of one
 * Python call per header. Never fails; safe to call from several threads.
 */
void nx_checksum_rows(const uint8_t *buf, size_t nrows, size_t stride, size_t len,
                      uint64_t *out);

/*
 * nx_verify_blocks: the index of the first of `nblocks` consecutive blocks of
 * `block_size` bytes at `buf` whose fingerprint differs from row ids[i] of
 * `table` (table_rows fingerprints of 16 bytes, row r at table + 16 * r), or
 * whose ids[i] >= table_rows; nblocks if every block matches. The extent
 * store checks what it read with it: hashing and comparing in one call, with
 * no fingerprint array and no gather of the expected ones. Stops at the first
 * mismatch. Never fails; safe to call from several threads.
 */
size_t nx_verify_blocks(const uint8_t *buf, size_t nblocks, size_t block_size,
                        const uint8_t *table, uint64_t table_rows, const uint64_t *ids);

/* nx_is_zero: 1 iff the `len` bytes at `p` (any alignment) are all zero. */
int nx_is_zero(const uint8_t *p, size_t len);

#endif /* NX_FINGERPRINT_H */

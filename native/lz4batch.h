/*
 * lz4batch.h - batched LZ4 block compression and decompression of fixed-size rows.
 *
 * The extent store stores a block as a raw LZ4 block (no size prefix: what
 * python `lz4.block.compress(x, store_size=False)` makes, i.e.
 * LZ4_compress_default) when that saves at least a set fraction of the block,
 * else as the block itself. These calls do a batch of blocks per call, with
 * the system liblz4 (liblz4-dev), so Python does no per-block work and the GIL
 * is released for the whole batch.
 */
#ifndef NX_LZ4BATCH_H
#define NX_LZ4BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "nxerr.h"

/* The incompressibility probe: NX_LZ4_SAMPLE_SLICES slices of
 * NX_LZ4_SAMPLE_SLICE_BYTES, slice s at byte s * block_size / SLICES of the row,
 * concatenated and LZ4-compressed; a row whose probe saves less than
 * 1/NX_LZ4_SAMPLE_MIN_SAVING of the probe's bytes is not worth compressing.
 * Rows shorter than NX_LZ4_SAMPLE_MIN_BLOCK are not probed (always worth it). */
#define NX_LZ4_SAMPLE_SLICES 4
#define NX_LZ4_SAMPLE_SLICE_BYTES 256
#define NX_LZ4_SAMPLE_MIN_SAVING 32
#define NX_LZ4_SAMPLE_MIN_BLOCK 8192
/* The largest block_size (and payload length) these calls take (LZ4's int sizes). */
#define NX_LZ4_MAX_BLOCK 0x7E000000

/*
 * nx_lz4_probe_rows: worth[i] = 1 if row i (of `nrows` rows of `block_size`
 * bytes at src, row i at src + i * block_size) is worth compressing by the
 * probe above (always 1 for rows shorter than NX_LZ4_SAMPLE_MIN_BLOCK), else 0.
 * Returns the count of ones, or NX_EINVAL with nothing written when
 * block_size is 0 or above NX_LZ4_MAX_BLOCK. About 1/16 of the cost of
 * compressing a 16 KiB row, so a caller can see how much work a batch holds
 * before splitting it. Safe to call from several threads.
 */
int64_t nx_lz4_probe_rows(const uint8_t *src, size_t nrows, size_t block_size, uint8_t *worth);

/*
 * nx_lz4_compress_rows: encode `nrows` rows of `block_size` bytes (row i at
 * src + i * block_size, any alignment) into `out`, packed in row order: for
 * each row `gap` bytes left untouched (room for the caller's record header),
 * then its payload: the LZ4 block of the row (byte for byte what
 * LZ4_compress_default makes) if that is at most `limit` bytes, else the row
 * itself. Only rows with attempt[i] nonzero are compressed (every row when
 * attempt is NULL); the others are stored raw without trying.
 *   lens[i]       the payload length of row i (block_size when stored raw)
 *   compressed[i] 1 if row i's payload is compressed, else 0
 * `out` must hold nrows * (gap + block_size) bytes; nothing past the returned
 * count is written. Returns the bytes used (the sum of gap + lens[i]), or
 * NX_EINVAL with nothing written when block_size is 0 or above
 * NX_LZ4_MAX_BLOCK. Touches no global state; safe to call from several threads.
 */
int64_t nx_lz4_compress_rows(const uint8_t *src, size_t nrows, size_t block_size, size_t limit,
                             size_t gap, const uint8_t *attempt, uint8_t *out, uint32_t *lens,
                             uint8_t *compressed);

/*
 * nx_lz4_decompress_rows: decode `n` LZ4 blocks, payload i being the
 * lengths[i] bytes at src + offsets[i], into rows of `block_size` bytes of
 * `out` (out_rows rows): payload i into row rows[i], or row i if rows is NULL.
 * ok[i] = 1 if payload i decodes (LZ4_decompress_safe) to exactly block_size
 * bytes, else 0 and its row is zeroed. Damaged payloads never make it read
 * outside their lengths[i] bytes nor write outside their row.
 * Returns the count of rows decoded, or NX_EINVAL with nothing written when a
 * payload lies outside the src_len bytes of src (or has a negative offset or
 * length, or one above NX_LZ4_MAX_BLOCK), a row is not below out_rows, or
 * block_size is 0 or above NX_LZ4_MAX_BLOCK. Payloads and rows may repeat
 * (a repeated row holds the last payload's result). Safe to call from
 * several threads on distinct rows.
 */
int64_t nx_lz4_decompress_rows(const uint8_t *src, size_t src_len, const int64_t *offsets,
                               const int64_t *lengths, size_t n, size_t block_size,
                               uint8_t *out, size_t out_rows, const int64_t *rows, uint8_t *ok);

#endif /* NX_LZ4BATCH_H */

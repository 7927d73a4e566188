/*
 * lz4batch.c - see lz4batch.h.
 *
 * LZ4 is the system liblz4 (<lz4.h>, linked dynamically); only its stable
 * public API is used, so any liblz4 >= 1.9 makes the same blocks as the one
 * python-lz4 bundles.
 */
#include "lz4batch.h"

#include <string.h>

#include <lz4.h>

#define SAMPLE_BYTES (NX_LZ4_SAMPLE_SLICES * NX_LZ4_SAMPLE_SLICE_BYTES)

/* 1 iff the probe of the row at p says the row is worth compressing. */
static int probe_compresses(const uint8_t *p, size_t block_size)
{
    char sample[SAMPLE_BYTES];
    char packed[LZ4_COMPRESSBOUND(SAMPLE_BYTES)];
    for (size_t s = 0; s < NX_LZ4_SAMPLE_SLICES; s++)
        memcpy(sample + s * NX_LZ4_SAMPLE_SLICE_BYTES, p + s * (block_size / NX_LZ4_SAMPLE_SLICES),
               NX_LZ4_SAMPLE_SLICE_BYTES);
    int n = LZ4_compress_default(sample, packed, SAMPLE_BYTES, (int)sizeof packed);
    return n > 0 && n <= SAMPLE_BYTES - SAMPLE_BYTES / NX_LZ4_SAMPLE_MIN_SAVING;
}

int64_t nx_lz4_probe_rows(const uint8_t *src, size_t nrows, size_t block_size, uint8_t *worth)
{
    if (block_size == 0 || block_size > NX_LZ4_MAX_BLOCK)
        return NX_EINVAL;
    int64_t count = 0;
    for (size_t i = 0; i < nrows; i++) {
        worth[i] = block_size < NX_LZ4_SAMPLE_MIN_BLOCK
                   || probe_compresses(src + i * block_size, block_size);
        count += worth[i];
    }
    return count;
}

int64_t nx_lz4_compress_rows(const uint8_t *src, size_t nrows, size_t block_size, size_t limit,
                             size_t gap, const uint8_t *attempt, uint8_t *out, uint32_t *lens,
                             uint8_t *compressed)
{
    if (block_size == 0 || block_size > NX_LZ4_MAX_BLOCK)
        return NX_EINVAL;
    if (limit > block_size)
        limit = block_size;
    size_t pos = 0;
    for (size_t i = 0; i < nrows; i++) {
        const uint8_t *row = src + i * block_size;
        uint8_t *dst = out + pos + gap;
        int n = 0;
        if (limit > 0 && (!attempt || attempt[i]))
            /* 0 when the block does not fit in `limit` bytes: LZ4 then stops early */
            n = LZ4_compress_default((const char *)row, (char *)dst, (int)block_size, (int)limit);
        if (n > 0) {
            lens[i] = (uint32_t)n;
            compressed[i] = 1;
        } else {
            memcpy(dst, row, block_size);
            lens[i] = (uint32_t)block_size;
            compressed[i] = 0;
        }
        pos += gap + lens[i];
    }
    return (int64_t)pos;
}

int64_t nx_lz4_decompress_rows(const uint8_t *src, size_t src_len, const int64_t *offsets,
                               const int64_t *lengths, size_t n, size_t block_size,
                               uint8_t *out, size_t out_rows, const int64_t *rows, uint8_t *ok)
{
    if (block_size == 0 || block_size > NX_LZ4_MAX_BLOCK)
        return NX_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (offsets[i] < 0 || lengths[i] < 0 || lengths[i] > NX_LZ4_MAX_BLOCK
            || (uint64_t)offsets[i] > src_len || (uint64_t)lengths[i] > src_len - (uint64_t)offsets[i])
            return NX_EINVAL;
        if (rows && (rows[i] < 0 || (uint64_t)rows[i] >= out_rows))
            return NX_EINVAL;
        if (!rows && i >= out_rows)
            return NX_EINVAL;
    }
    int64_t good = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t *dst = out + (size_t)(rows ? rows[i] : (int64_t)i) * block_size;
        int got = LZ4_decompress_safe((const char *)src + offsets[i], (char *)dst, (int)lengths[i],
                                      (int)block_size);
        ok[i] = got >= 0 && (size_t)got == block_size;
        if (ok[i])
            good++;
        else
            memset(dst, 0, block_size);
    }
    return good;
}

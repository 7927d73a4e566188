/*
 * fingerprint.c - see fingerprint.h.
 *
 * The XXH3 implementation comes from the system header <xxhash.h>
 * (libxxhash-dev), inlined with XXH_INLINE_ALL so that it is compiled with
 * this build's flags: with -march=native the compiler may use AVX2, which is
 * what makes the batch call as fast as memory (see docs/_parts/native.md).
 *
 * Zero detection runs before hashing: it reads the block into L1 (the hash
 * then reads it from cache) and exits at the first nonzero 64-byte stripe.
 * A zero block's fingerprint is computed once per call and copied.
 */
#include "fingerprint.h"

#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

int nx_is_zero(const uint8_t *p, size_t len)
{
    size_t i = 0;
    /* 64-byte stripes of eight 8-byte words; memcpy keeps loads alignment-safe. */
    for (; i + 64 <= len; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, 64);
        if ((w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7]) != 0)
            return 0;
    }
    for (; i < len; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

static void put_fingerprint(uint8_t *out, const uint8_t *p, size_t len)
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(p, len));
    memcpy(out, c.digest, NX_FINGERPRINT_BYTES);
}

void nx_fingerprint_blocks(const uint8_t *buf, size_t nblocks, size_t block_size,
                           uint8_t *fps_out, uint8_t *zero_out)
{
    uint8_t zero_fp[NX_FINGERPRINT_BYTES];
    int have_zero_fp = 0;

    for (size_t i = 0; i < nblocks; i++) {
        const uint8_t *blk = buf + i * block_size;
        uint8_t *out = fps_out + i * NX_FINGERPRINT_BYTES;
        if (nx_is_zero(blk, block_size)) {
            zero_out[i] = 1;
            if (!have_zero_fp) {
                put_fingerprint(zero_fp, blk, block_size);
                have_zero_fp = 1;
            }
            memcpy(out, zero_fp, NX_FINGERPRINT_BYTES);
        } else {
            zero_out[i] = 0;
            put_fingerprint(out, blk, block_size);
        }
    }
}

size_t nx_verify_blocks(const uint8_t *buf, size_t nblocks, size_t block_size,
                        const uint8_t *table, uint64_t table_rows, const uint64_t *ids)
{
    for (size_t i = 0; i < nblocks; i++) {
        uint8_t fp[NX_FINGERPRINT_BYTES];
        if (ids[i] >= table_rows)
            return i;
        put_fingerprint(fp, buf + i * block_size, block_size);
        if (memcmp(fp, table + ids[i] * NX_FINGERPRINT_BYTES, NX_FINGERPRINT_BYTES) != 0)
            return i;
    }
    return nblocks;
}

void nx_checksum_rows(const uint8_t *buf, size_t nrows, size_t stride, size_t len,
                      uint64_t *out)
{
    for (size_t i = 0; i < nrows; i++)
        out[i] = XXH3_64bits(buf + i * stride, len);
}

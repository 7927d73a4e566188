/* headers.c - see headers.h. XXH3 is inlined as in fingerprint.c. */
#include "headers.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void nx_check_headers(const uint8_t *hdrs, size_t n, const uint64_t *ids, const uint32_t *slens,
                      const uint8_t *flags, uint32_t block_size, uint8_t *bad)
{
    const uint64_t word0_mask = UINT64_C(0xFFFFFFFF) | (uint64_t)NX_RECORD_FLAG_COMPRESSED << 40;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *h = hdrs + i * NX_RECORD_HEADER_BYTES;
        uint64_t word0 = NX_RECORD_MAGIC | (uint64_t)(flags[i] & NX_RECORD_FLAG_COMPRESSED) << 40;
        uint64_t word2 = (uint64_t)slens[i] << 32 | block_size;
        bad[i] = (le64(h) & word0_mask) != word0 || le64(h + 8) != ids[i]
                 || le64(h + 16) != word2
                 || le64(h + 56) != XXH3_64bits(h, NX_RECORD_CHECKED_BYTES);
    }
}

/*
 * headers.h - checks of extent record headers against the extent table.
 *
 * A record header is 64 bytes (docs/format.md, "Extent groups"). Read as
 * eight little-endian u64 words: word 0 holds the magic "NXEX" (bytes 0..3),
 * the version (byte 4) and the flags (byte 5, bit 0 = compressed); word 1 the
 * extent id; word 2 the raw length (low 32 bits) and the stored length (high
 * 32 bits); word 7 the XXH3-64 (seed 0) of bytes 0..55. Python checks that
 * these constants match nxstore/extent_group.py when it loads.
 */
#ifndef NX_HEADERS_H
#define NX_HEADERS_H

#include <stddef.h>
#include <stdint.h>

#define NX_RECORD_HEADER_BYTES 64
#define NX_RECORD_CHECKED_BYTES 56     /* bytes covered by the header checksum */
#define NX_RECORD_MAGIC 0x5845584EU    /* "NXEX" as a little-endian u32 */
#define NX_RECORD_FLAG_COMPRESSED 0x01

/*
 * nx_check_headers: for i < n, bad[i] = 1 if header i (the 64 bytes at
 * hdrs + 64 * i, any alignment) has another magic, a compressed flag other
 * than bit 0 of flags[i], an extent id other than ids[i], a raw length other
 * than block_size, a stored length other than slens[i], or a checksum that
 * does not match its bytes 0..55; else bad[i] = 0. The version byte and the
 * other flag bits are not compared. Never fails; safe from several threads.
 */
void nx_check_headers(const uint8_t *hdrs, size_t n, const uint64_t *ids, const uint32_t *slens,
                      const uint8_t *flags, uint32_t block_size, uint8_t *bad);

#endif /* NX_HEADERS_H */

/*
 * framemac.h - the replication frame MAC of protocol version 5: AES-256-GMAC.
 *
 * The tag of a frame is the GCM tag of AES-256 under `key` with the 96-bit nonce
 * (4 zero bytes, then `counter` as u64 little-endian), no plaintext and the
 * concatenation of `parts` as the additional authenticated data (NIST SP 800-38D,
 * "GMAC"). It goes through the system libcrypto (OpenSSL 3, libssl-dev), whose
 * AES-NI / carry-less-multiply code hashes several GB/s per core: about 4x
 * HMAC-SHA256 on the same machine.
 *
 * A GMAC nonce must never repeat under one key. The caller keys each direction
 * of each connection afresh (the handshake derives the keys from both sides'
 * fresh nonces) and passes the frame number of that direction as `counter`.
 */
#ifndef NX_FRAMEMAC_H
#define NX_FRAMEMAC_H

#include <stddef.h>
#include <stdint.h>

#include "nxerr.h"

#define NX_GMAC_KEY_BYTES 32
#define NX_GMAC_TAG_BYTES 16

/*
 * nx_gmac: write the 16-byte tag of parts[0..nparts) (lens[i] bytes at
 * parts[i]; a part may be NULL when its length is 0) under the 32-byte `key`
 * and `counter` to `tag`. Returns NX_OK, NX_ENOMEM (no cipher context) or
 * NX_EINVAL (libcrypto refused: a part over INT_MAX bytes, no AES-256-GCM);
 * `tag` is then unspecified. Safe to call from several threads.
 */
int nx_gmac(const uint8_t *key, uint64_t counter, const uint8_t *const *parts,
            const size_t *lens, size_t nparts, uint8_t *tag);

#endif /* NX_FRAMEMAC_H */

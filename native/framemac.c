/* framemac.c - AES-256-GMAC frame tags through libcrypto (contract in framemac.h). */
#include "framemac.h"

#include <limits.h>
#include <openssl/evp.h>

int nx_gmac(const uint8_t *key, uint64_t counter, const uint8_t *const *parts,
            const size_t *lens, size_t nparts, uint8_t *tag)
{
    uint8_t nonce[12] = {0};
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(counter >> (8 * i));

    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return NX_ENOMEM;
    int rc = NX_EINVAL;
    int outl = 0;
    /* 12 bytes is GCM's default IV length: no EVP_CTRL_GCM_SET_IVLEN needed. */
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, nonce) != 1)
        goto done;
    for (size_t i = 0; i < nparts; i++) {
        size_t left = lens[i];
        const uint8_t *p = parts[i];
        while (left > 0) {  /* EVP takes int lengths */
            int step = left > (size_t)(INT_MAX / 2) ? INT_MAX / 2 : (int)left;
            if (EVP_EncryptUpdate(ctx, NULL, &outl, p, step) != 1)
                goto done;
            p += step;
            left -= (size_t)step;
        }
    }
    if (EVP_EncryptFinal_ex(ctx, NULL, &outl) != 1)
        goto done;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, NX_GMAC_TAG_BYTES, tag) != 1)
        goto done;
    rc = NX_OK;
done:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

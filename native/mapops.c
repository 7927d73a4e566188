/* mapops.c - see mapops.h. Merge and diff are single two-pointer passes. */
#include "mapops.h"

size_t nx_map_merge(const uint64_t *top_k, const uint64_t *top_v, size_t nt,
                    const uint64_t *bot_k, const uint64_t *bot_v, size_t nb,
                    uint64_t *out_k, uint64_t *out_v)
{
    size_t i = 0, j = 0, o = 0;
    while (i < nt && j < nb) {
        if (top_k[i] < bot_k[j]) {
            out_k[o] = top_k[i];
            out_v[o++] = top_v[i++];
        } else if (bot_k[j] < top_k[i]) {
            out_k[o] = bot_k[j];
            out_v[o++] = bot_v[j++];
        } else {
            out_k[o] = top_k[i];
            out_v[o++] = top_v[i++];
            j++;
        }
    }
    for (; i < nt; i++, o++) {
        out_k[o] = top_k[i];
        out_v[o] = top_v[i];
    }
    for (; j < nb; j++, o++) {
        out_k[o] = bot_k[j];
        out_v[o] = bot_v[j];
    }
    return o;
}

size_t nx_map_diff(const uint64_t *a_k, const uint64_t *a_v, size_t na,
                   const uint64_t *b_k, const uint64_t *b_v, size_t nb, uint64_t *out_k)
{
    size_t i = 0, j = 0, o = 0;
    while (i < na && j < nb) {
        if (a_k[i] < b_k[j]) {
            out_k[o++] = a_k[i++];
        } else if (b_k[j] < a_k[i]) {
            out_k[o++] = b_k[j++];
        } else {
            if (a_v[i] != b_v[j])
                out_k[o++] = a_k[i];
            i++;
            j++;
        }
    }
    while (i < na)
        out_k[o++] = a_k[i++];
    while (j < nb)
        out_k[o++] = b_k[j++];
    return o;
}

/* First index in [lo, n) whose key is >= x, searching outward from lo. */
static size_t gallop(const uint64_t *k, size_t n, size_t lo, uint64_t x)
{
    size_t step = 1, hi = lo;
    while (hi < n && k[hi] < x) {
        lo = hi + 1;
        hi = lo + step;
        step *= 2;
    }
    if (hi > n)
        hi = n;
    while (lo < hi) { /* k[lo-1] < x, and hi == n or k[hi] >= x */
        size_t mid = lo + (hi - lo) / 2;
        if (k[mid] < x)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void nx_map_lookup(const uint64_t *k, const uint64_t *v, size_t n,
                   const uint64_t *q, size_t nq, uint64_t *out_v, uint8_t *out_found)
{
    size_t pos = 0;
    for (size_t i = 0; i < nq; i++) {
        if (i > 0 && q[i] < q[i - 1])
            pos = 0; /* out of order: restart the gallop from the beginning */
        pos = gallop(k, n, pos, q[i]);
        if (pos < n && k[pos] == q[i]) {
            out_v[i] = v[pos];
            out_found[i] = 1;
        } else {
            out_v[i] = 0;
            out_found[i] = 0;
        }
    }
}

size_t nx_map_fill_range(const uint64_t *k, const uint64_t *v, size_t n, uint64_t lo,
                         size_t count, uint64_t *out_v, uint8_t *out_found)
{
    size_t set = 0;
    /* k[i] >= lo from the gallop on, so k[i] - lo cannot wrap */
    for (size_t i = gallop(k, n, 0, lo); i < n && k[i] - lo < count; i++) {
        size_t at = (size_t)(k[i] - lo);
        if (!out_found[at]) {
            out_v[at] = v[i];
            out_found[at] = 1;
            set++;
        }
    }
    return set;
}

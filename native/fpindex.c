/*
 * fpindex.c - see fpindex.h for the contract and the table layout.
 *
 * Lookups over a batch prefetch the home slot of the key NX_PREFETCH places
 * ahead, so that a batch keeps several cache misses in flight instead of
 * waiting for each one in turn.
 */
#include "fpindex.h"

#include <stdlib.h>
#include <string.h>

#define FP_BYTES 16
#define NX_PREFETCH 12

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch((p), 0, 1)
#else
#define PREFETCH(p) ((void)(p))
#endif

typedef struct {
    uint8_t fp[FP_BYTES];
    uint64_t id;
} slot_t;

struct nx_index {
    slot_t *slots;
    uint64_t capacity; /* power of two */
    uint64_t count;
    unsigned shift;    /* 64 - log2(capacity) */
};

/* C99 compile-time check: the slot layout is part of the persisted format. */
typedef char slot_is_24_bytes[(sizeof(slot_t) == NX_INDEX_SLOT_BYTES) ? 1 : -1];

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t home_of(const uint8_t *fp, unsigned shift)
{
    return ((le64(fp) ^ le64(fp + 8)) * UINT64_C(0x9E3779B97F4A7C15)) >> shift;
}

static unsigned log2u(uint64_t pow2)
{
    unsigned r = 0;
    while ((UINT64_C(1) << r) < pow2)
        r++;
    return r;
}

static int over_load(uint64_t count, uint64_t capacity)
{
    return count * NX_INDEX_LOAD_DEN > capacity * NX_INDEX_LOAD_NUM;
}

static slot_t *alloc_slots(uint64_t capacity)
{
    if (capacity > SIZE_MAX / sizeof(slot_t))
        return NULL;
    return calloc((size_t)capacity, sizeof(slot_t));
}

/* Position of fp: its slot if present (*found = 1), else the empty slot
 * where it would go (*found = 0). The table always has an empty slot. */
static uint64_t probe(const nx_index *ix, const uint8_t *fp, int *found)
{
    uint64_t mask = ix->capacity - 1;
    uint64_t p = home_of(fp, ix->shift);
    for (;;) {
        const slot_t *s = &ix->slots[p];
        if (s->id == 0) {
            *found = 0;
            return p;
        }
        if (memcmp(s->fp, fp, FP_BYTES) == 0) {
            *found = 1;
            return p;
        }
        p = (p + 1) & mask;
    }
}

/* Rebuild into a table of new_capacity slots. */
static int resize(nx_index *ix, uint64_t new_capacity)
{
    slot_t *fresh = alloc_slots(new_capacity);
    if (fresh == NULL)
        return NX_ENOMEM;
    unsigned shift = 64 - log2u(new_capacity);
    uint64_t mask = new_capacity - 1;
    for (uint64_t i = 0; i < ix->capacity; i++) {
        const slot_t *s = &ix->slots[i];
        if (s->id == 0)
            continue;
        uint64_t p = home_of(s->fp, shift);
        while (fresh[p].id != 0)
            p = (p + 1) & mask;
        fresh[p] = *s;
    }
    free(ix->slots);
    ix->slots = fresh;
    ix->capacity = new_capacity;
    ix->shift = shift;
    return NX_OK;
}

/* Make room for one more entry. */
static int reserve_one(nx_index *ix)
{
    if (!over_load(ix->count + 1, ix->capacity))
        return NX_OK;
    if (ix->capacity > UINT64_MAX / 2)
        return NX_ENOMEM;
    return resize(ix, ix->capacity * 2);
}

/* Remove the entry at p, shifting later entries of the cluster back. */
static void delete_at(nx_index *ix, uint64_t p)
{
    uint64_t mask = ix->capacity - 1;
    uint64_t q = p;
    for (;;) {
        q = (q + 1) & mask;
        if (ix->slots[q].id == 0)
            break;
        uint64_t h = home_of(ix->slots[q].fp, ix->shift);
        /* The entry at q may fill the hole at p iff its home is not in (p, q]. */
        if (((q - h) & mask) >= ((q - p) & mask)) {
            ix->slots[p] = ix->slots[q];
            p = q;
        }
    }
    memset(&ix->slots[p], 0, sizeof(slot_t));
    ix->count--;
}

nx_index *nx_index_new(uint64_t capacity_hint)
{
    uint64_t cap = NX_INDEX_MIN_CAPACITY;
    while (over_load(capacity_hint, cap)) {
        if (cap > UINT64_MAX / 4)
            return NULL;
        cap *= 2;
    }
    nx_index *ix = malloc(sizeof(*ix));
    if (ix == NULL)
        return NULL;
    ix->slots = alloc_slots(cap);
    if (ix->slots == NULL) {
        free(ix);
        return NULL;
    }
    ix->capacity = cap;
    ix->count = 0;
    ix->shift = 64 - log2u(cap);
    return ix;
}

void nx_index_free(nx_index *ix)
{
    if (ix == NULL)
        return;
    free(ix->slots);
    free(ix);
}

uint64_t nx_index_count(const nx_index *ix) { return ix->count; }
uint64_t nx_index_capacity(const nx_index *ix) { return ix->capacity; }

uint64_t nx_index_memory_bytes(const nx_index *ix)
{
    return sizeof(*ix) + ix->capacity * sizeof(slot_t);
}

void nx_index_lookup(const nx_index *ix, const uint8_t *fps, size_t n, uint64_t *out_ids)
{
    int found;
    for (size_t i = 0; i < n; i++) {
        if (i + NX_PREFETCH < n)
            PREFETCH(&ix->slots[home_of(fps + (i + NX_PREFETCH) * FP_BYTES, ix->shift)]);
        uint64_t p = probe(ix, fps + i * FP_BYTES, &found);
        out_ids[i] = found ? ix->slots[p].id : 0;
    }
}

int64_t nx_index_lookup_or_insert(nx_index *ix, const uint8_t *fps, size_t n, uint64_t next_id,
                                  uint64_t *out_ids, uint8_t *out_new)
{
    if (next_id == 0 || (uint64_t)n > UINT64_MAX - next_id)
        return NX_EINVAL;
    uint64_t id = next_id;
    int found;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *fp = fps + i * FP_BYTES;
        if (i + NX_PREFETCH < n)
            PREFETCH(&ix->slots[home_of(fps + (i + NX_PREFETCH) * FP_BYTES, ix->shift)]);
        uint64_t p = probe(ix, fp, &found);
        if (found) {
            out_ids[i] = ix->slots[p].id;
            out_new[i] = 0;
            continue;
        }
        if (over_load(ix->count + 1, ix->capacity)) {
            if (reserve_one(ix) != NX_OK) {
                for (size_t j = 0; j < i; j++)
                    if (out_new[j])
                        delete_at(ix, probe(ix, fps + j * FP_BYTES, &found));
                return NX_ENOMEM;
            }
            p = probe(ix, fp, &found);
        }
        memcpy(ix->slots[p].fp, fp, FP_BYTES);
        ix->slots[p].id = id;
        ix->count++;
        out_ids[i] = id++;
        out_new[i] = 1;
    }
    return (int64_t)(id - next_id);
}

int nx_index_insert(nx_index *ix, const uint8_t *fps, const uint64_t *ids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] == 0)
            return NX_EINVAL;
    int found;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *fp = fps + i * FP_BYTES;
        uint64_t p = probe(ix, fp, &found);
        if (!found) {
            if (over_load(ix->count + 1, ix->capacity)) {
                if (reserve_one(ix) != NX_OK)
                    return NX_ENOMEM;
                p = probe(ix, fp, &found);
            }
            memcpy(ix->slots[p].fp, fp, FP_BYTES);
            ix->count++;
        }
        ix->slots[p].id = ids[i];
    }
    return NX_OK;
}

uint64_t nx_index_remove(nx_index *ix, const uint8_t *fps, size_t n)
{
    uint64_t removed = 0;
    int found;
    for (size_t i = 0; i < n; i++) {
        uint64_t p = probe(ix, fps + i * FP_BYTES, &found);
        if (found) {
            delete_at(ix, p);
            removed++;
        }
    }
    return removed;
}

void nx_index_raw(const nx_index *ix, const uint8_t **slots, size_t *nbytes)
{
    *slots = (const uint8_t *)ix->slots;
    *nbytes = (size_t)ix->capacity * sizeof(slot_t);
}

/* Check the invariants listed in fpindex.h. Occupied slots are counted
 * first so that the probing pass runs only on a table with empty slots. */
static int check(const nx_index *ix, uint64_t count)
{
    static const slot_t empty;
    uint64_t seen = 0;
    int found;
    for (uint64_t i = 0; i < ix->capacity; i++) {
        const slot_t *s = &ix->slots[i];
        if (s->id != 0)
            seen++;
        else if (memcmp(s, &empty, sizeof(empty)) != 0)
            return NX_ECORRUPT;
    }
    if (seen != count)
        return NX_ECORRUPT;
    for (uint64_t i = 0; i < ix->capacity; i++)
        if (ix->slots[i].id != 0 && probe(ix, ix->slots[i].fp, &found) != i)
            return NX_ECORRUPT;
    return NX_OK;
}

int nx_index_from_raw(const uint8_t *slots, size_t nbytes, uint64_t capacity, uint64_t count,
                      nx_index **out)
{
    if (capacity < NX_INDEX_MIN_CAPACITY || (capacity & (capacity - 1)) != 0 ||
        capacity > SIZE_MAX / sizeof(slot_t) || nbytes != capacity * sizeof(slot_t))
        return NX_EINVAL;
    if (over_load(count, capacity))
        return NX_ECORRUPT;
    nx_index *ix = malloc(sizeof(*ix));
    if (ix == NULL)
        return NX_ENOMEM;
    ix->slots = malloc(nbytes);
    if (ix->slots == NULL) {
        free(ix);
        return NX_ENOMEM;
    }
    memcpy(ix->slots, slots, nbytes);
    ix->capacity = capacity;
    ix->count = count;
    ix->shift = 64 - log2u(capacity);
    int rc = check(ix, count);
    if (rc != NX_OK) {
        nx_index_free(ix);
        return rc;
    }
    *out = ix;
    return NX_OK;
}

/*
 * fpindex.h - the fingerprint index: 16-byte fingerprint -> nonzero uint64 id.
 *
 * An open-addressing hash table with linear probing and backward-shift
 * deletion (no tombstones). The table is one array of `capacity` slots
 * (capacity a power of two, >= NX_INDEX_MIN_CAPACITY) of NX_INDEX_SLOT_BYTES:
 *
 *     bytes 0..15   fingerprint (as given)
 *     bytes 16..23  id, uint64 in host byte order; 0 marks an empty slot
 *
 * Empty slots are all zero bytes. A key's home slot is
 *     ((le64(fp[0..7]) ^ le64(fp[8..15])) * 0x9E3779B97F4A7C15) >> (64 - log2(capacity))
 * (le64 = little-endian load, multiplication modulo 2^64). Because the slot
 * array is the whole state, persisting is a copy of it (nx_index_raw) and
 * loading is a copy back plus a check (nx_index_from_raw).
 *
 * The table doubles whenever an insertion would push count above
 * 7/10 of capacity; it never shrinks. Calls on one index must not run
 * concurrently (no internal locking); different indexes are independent.
 * Error codes are the negative NX_E* values of nxerr.h.
 */
#ifndef NX_FPINDEX_H
#define NX_FPINDEX_H

#include <stddef.h>
#include <stdint.h>

#include "nxerr.h" /* NX_EINVAL: id 0, id overflow, bad sizes; NX_ECORRUPT: bad raw slots */

#define NX_INDEX_SLOT_BYTES 24
#define NX_INDEX_MIN_CAPACITY 16
#define NX_INDEX_LOAD_NUM 7 /* max load factor = NUM / DEN */
#define NX_INDEX_LOAD_DEN 10

typedef struct nx_index nx_index;

/* A new empty index able to hold `capacity_hint` entries without growing.
 * Returns NULL when allocation fails or the hint is impossibly large. */
nx_index *nx_index_new(uint64_t capacity_hint);

/* Release the index and its table. NULL is allowed. */
void nx_index_free(nx_index *ix);

uint64_t nx_index_count(const nx_index *ix);        /* entries held */
uint64_t nx_index_capacity(const nx_index *ix);     /* slots in the table */
uint64_t nx_index_memory_bytes(const nx_index *ix); /* heap bytes owned */

/* For i < n: out_ids[i] = id of fingerprint fps[16*i .. 16*i+15], 0 if absent. */
void nx_index_lookup(const nx_index *ix, const uint8_t *fps, size_t n, uint64_t *out_ids);

/* For i < n in order: if fingerprint i is present, out_ids[i] = its id and
 * out_new[i] = 0; otherwise it is inserted with the next unused id of the
 * sequence next_id, next_id + 1, ... and out_new[i] = 1. A fingerprint that
 * repeats inside the batch gets the id of its first occurrence (not new).
 * Returns the number of new entries (ids next_id .. next_id + ret - 1),
 * NX_EINVAL if next_id == 0 or next_id + n overflows (nothing done), or
 * NX_ENOMEM if growing failed (every insertion of this call is undone). */
int64_t nx_index_lookup_or_insert(nx_index *ix, const uint8_t *fps, size_t n, uint64_t next_id,
                                  uint64_t *out_ids, uint8_t *out_new);

/* Insert or overwrite: fingerprint i -> ids[i], in order (a later duplicate
 * wins). Returns NX_OK, NX_EINVAL if some ids[i] == 0 (nothing done), or
 * NX_ENOMEM if growing failed (a prefix of the batch has been applied; the
 * index is consistent and the call may be retried). */
int nx_index_insert(nx_index *ix, const uint8_t *fps, const uint64_t *ids, size_t n);

/* Remove the given fingerprints; absent ones are ignored. Returns how many
 * entries were removed. Never fails, never shrinks the table. */
uint64_t nx_index_remove(nx_index *ix, const uint8_t *fps, size_t n);

/* The slot array: *slots points at capacity * NX_INDEX_SLOT_BYTES bytes
 * (*nbytes) owned by the index, valid until the next modifying call. */
void nx_index_raw(const nx_index *ix, const uint8_t **slots, size_t *nbytes);

/* Build an index from a copy of a slot array produced by nx_index_raw.
 * Checks: capacity is a power of two >= NX_INDEX_MIN_CAPACITY, nbytes ==
 * capacity * NX_INDEX_SLOT_BYTES, count within the max load, empty slots are
 * all zero, every entry is found from its home slot without crossing an empty
 * slot or an equal key, and exactly `count` entries are present.
 * Returns NX_OK and sets *out, NX_ECORRUPT (or NX_EINVAL for bad sizes), or
 * NX_ENOMEM; *out is set only on NX_OK. */
int nx_index_from_raw(const uint8_t *slots, size_t nbytes, uint64_t capacity, uint64_t count,
                      nx_index **out);

#endif /* NX_FPINDEX_H */

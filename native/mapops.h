/*
 * mapops.h - operations on block maps.
 *
 * A block map is two parallel uint64 arrays of length n: keys (block
 * numbers), sorted strictly ascending, and values (extent ids; the value has
 * no reserved meaning here). Inputs are read-only; outputs are caller-owned
 * arrays of the stated size and must not overlap the inputs. None of these
 * functions allocates or fails; behaviour on unsorted keys is unspecified
 * (but memory-safe), except for the query keys of nx_map_lookup.
 */
#ifndef NX_MAPOPS_H
#define NX_MAPOPS_H

#include <stddef.h>
#include <stdint.h>

/* Union of two maps; where a key is in both, the top value wins.
 * out_k / out_v need room for nt + nb entries. Returns the entries written
 * (sorted strictly ascending). */
size_t nx_map_merge(const uint64_t *top_k, const uint64_t *top_v, size_t nt,
                    const uint64_t *bot_k, const uint64_t *bot_v, size_t nb,
                    uint64_t *out_k, uint64_t *out_v);

/* Keys present in exactly one map, or in both with different values.
 * out_k needs room for na + nb keys. Returns the keys written (ascending). */
size_t nx_map_diff(const uint64_t *a_k, const uint64_t *a_v, size_t na,
                   const uint64_t *b_k, const uint64_t *b_v, size_t nb, uint64_t *out_k);

/* For i < nq: if q[i] is a key of the map, out_v[i] = its value and
 * out_found[i] = 1, else out_v[i] = 0 and out_found[i] = 0. Queries may be in
 * any order and repeat; ascending runs are answered by galloping forward from
 * the previous answer, so a sorted batch costs O(nq log(n / nq)). */
void nx_map_lookup(const uint64_t *k, const uint64_t *v, size_t n,
                   const uint64_t *q, size_t nq, uint64_t *out_v, uint8_t *out_found);

/* Fill what the map says about the contiguous block range [lo, lo + count):
 * for each key in that range whose slot at = key - lo has out_found[at] == 0,
 * set out_v[at] = its value and out_found[at] = 1. Slots already found (by a
 * newer map) are left alone, so calling this newest map first resolves a
 * chain. Returns the slots it set. Costs O(log n + entries in range): a
 * sequential read asks for a range, and answering it needs no query array.
 * out_v and out_found need room for count entries; no overflow for any lo. */
size_t nx_map_fill_range(const uint64_t *k, const uint64_t *v, size_t n, uint64_t lo,
                         size_t count, uint64_t *out_v, uint8_t *out_found);

#endif /* NX_MAPOPS_H */

/*
 * plan.h - the read plan of a batch of extent records: runs and iovecs.
 *
 * The extent store reads records with nx_preadv_runs (readv.h). Each record
 * becomes three iovecs and the records that lie close together in one group
 * file share a run; this lays both out in one pass instead of ~25 numpy
 * operations per read. The iovecs point into four buffers, by index:
 */
#ifndef NX_PLAN_H
#define NX_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "nxerr.h"

#define NX_PLAN_SINK 0 /* gap bytes between the records of a run (discarded) */
#define NX_PLAN_HDRS 1 /* record headers, 64 bytes each, in record order */
#define NX_PLAN_OUT 2  /* uncompressed payloads, at their output rows */
#define NX_PLAN_CBUF 3 /* compressed payloads, packed in record order */
#define NX_PLAN_HEADER_BYTES 64

/*
 * nx_plan_runs: for n records sorted by key = group << 32 | file offset
 * (strictly ascending), with stored payload lengths lens[i] (>= 0), comp[i]
 * != 0 for a compressed payload and dest[i] the output row of an
 * uncompressed one, write to iovs (9 int64 per record: three (buffer,
 * offset, length) rows as nx_preadv_runs takes them)
 *   - the header: NX_PLAN_HDRS at 64 i, 64 bytes;
 *   - the payload: NX_PLAN_OUT at dest[i] * block_size, block_size bytes, or
 *     if compressed NX_PLAN_CBUF just after the previous compressed payload,
 *     lens[i] bytes;
 *   - the gap: NX_PLAN_SINK at 0, next key - (key + 64 + lens[i]) bytes when
 *     the next record is in the same group and that gap is 0..max_gap (the
 *     two then share a run), else 0 bytes.
 * Each run is written to runs as 4 int64: (0, file offset of its first
 * record, first iovec row, iovec rows); the fd is left to the caller.
 * Returns the number of runs (at most n). Never fails; no allocation.
 */
size_t nx_plan_runs(const int64_t *keys, const int64_t *lens, const uint8_t *comp,
                    const int64_t *dest, size_t n, int64_t block_size, int64_t max_gap,
                    int64_t *iovs, int64_t *runs);

/*
 * nx_gather_records: what nx_plan_runs needs of n extents, from the extent
 * table's columns (table_rows rows each; row r describes extent id r):
 * keys[i] = group[ids[i]] << 32 | offset[ids[i]], lens[i] = slen[ids[i]],
 * comp[i] = flags[ids[i]] & NX_RECORD_FLAG_COMPRESSED (headers.h). One pass
 * instead of a dozen numpy gathers and casts per read. Returns 1 if the keys
 * are strictly ascending (the records are in file order and none repeats,
 * as a sequential read's are: the plan can take them as they are), 0 if
 * not, or NX_EINVAL (outputs unspecified) if some ids[i] >= table_rows.
 */
int nx_gather_records(const uint32_t *group, const uint32_t *offset, const uint32_t *slen,
                      const uint8_t *flags, uint64_t table_rows, const uint64_t *ids, size_t n,
                      int64_t *keys, int64_t *lens, uint8_t *comp);

#endif /* NX_PLAN_H */

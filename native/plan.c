/* plan.c - see plan.h. One pass; a run stays open while the next record joins it. */
#include "plan.h"

#include "headers.h"

size_t nx_plan_runs(const int64_t *keys, const int64_t *lens, const uint8_t *comp,
                    const int64_t *dest, size_t n, int64_t block_size, int64_t max_gap,
                    int64_t *iovs, int64_t *runs)
{
    size_t nruns = 0;
    int64_t *run = runs;
    int64_t cpos = 0; /* where the next compressed payload goes in NX_PLAN_CBUF */
    int joined = 0;   /* record i continues the current run */
    for (size_t i = 0; i < n; i++) {
        int64_t *v = iovs + 9 * i;
        if (!joined) {
            run = runs + 4 * nruns++;
            run[0] = 0;
            run[1] = keys[i] & INT64_C(0xFFFFFFFF);
            run[2] = 3 * (int64_t)i;
            run[3] = 0;
        }
        run[3] += 3;
        v[0] = NX_PLAN_HDRS;
        v[1] = NX_PLAN_HEADER_BYTES * (int64_t)i;
        v[2] = NX_PLAN_HEADER_BYTES;
        if (comp[i]) {
            v[3] = NX_PLAN_CBUF;
            v[4] = cpos;
            v[5] = lens[i];
            cpos += lens[i];
        } else {
            v[3] = NX_PLAN_OUT;
            v[4] = dest[i] * block_size;
            v[5] = block_size;
        }
        int64_t gap = i + 1 < n ? keys[i + 1] - (keys[i] + NX_PLAN_HEADER_BYTES + lens[i]) : -1;
        joined = gap >= 0 && gap <= max_gap && keys[i + 1] >> 32 == keys[i] >> 32;
        v[6] = NX_PLAN_SINK;
        v[7] = 0;
        v[8] = joined ? gap : 0;
    }
    return nruns;
}

int nx_gather_records(const uint32_t *group, const uint32_t *offset, const uint32_t *slen,
                      const uint8_t *flags, uint64_t table_rows, const uint64_t *ids, size_t n,
                      int64_t *keys, int64_t *lens, uint8_t *comp)
{
    int ascending = 1;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = ids[i];
        if (r >= table_rows)
            return NX_EINVAL;
        keys[i] = (int64_t)group[r] << 32 | offset[r];
        lens[i] = slen[r];
        comp[i] = flags[r] & NX_RECORD_FLAG_COMPRESSED;
        ascending &= i == 0 || keys[i] > keys[i - 1];
    }
    return ascending;
}

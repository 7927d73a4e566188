/* readv.c - see readv.h. */
#define _DEFAULT_SOURCE /* preadv under -std=c99 */
#define _FILE_OFFSET_BITS 64
#include "readv.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>

static int iovecs_valid(const uint64_t *buf_sizes, size_t nbufs, const int64_t *iovs, size_t niov)
{
    for (size_t i = 0; i < niov; i++) {
        const int64_t *v = iovs + 3 * i;
        if (v[0] < 0 || (uint64_t)v[0] >= nbufs || v[1] < 0 || v[2] < 0)
            return 0;
        uint64_t size = buf_sizes[v[0]], off = (uint64_t)v[1], len = (uint64_t)v[2];
        if (off > size || len > size - off)
            return 0;
    }
    return 1;
}

static int runs_valid(const int64_t *runs, size_t nruns, size_t niov)
{
    for (size_t r = 0; r < nruns; r++) {
        const int64_t *u = runs + 4 * r;
        if (u[0] < 0 || u[0] > INT_MAX || u[1] < 0 || u[2] < 0 || u[3] < 0)
            return 0;
        if ((uint64_t)u[2] > niov || (uint64_t)u[3] > niov - (uint64_t)u[2])
            return 0;
    }
    return 1;
}

/* One run: preadv from a cursor (iovec v, `skip` bytes of it already filled)
 * until the iovecs are full, the file ends or a read fails. */
static int64_t read_run(uint8_t *const *bufs, const int64_t *iovs, const int64_t *run,
                        int iov_limit)
{
    struct iovec vec[NX_READV_MAX_IOV];
    const int64_t *v = iovs + 3 * run[2], *end = v + 3 * run[3];
    int fd = (int)run[0];
    off_t pos = (off_t)run[1];
    uint64_t skip = 0;
    int64_t done = 0;
    for (;;) {
        int n = 0;
        for (const int64_t *w = v; w < end && n < iov_limit; w += 3) {
            uint64_t from = w == v ? skip : 0;
            if ((uint64_t)w[2] == from)
                continue;
            vec[n].iov_base = bufs[w[0]] + w[1] + from;
            vec[n++].iov_len = (size_t)((uint64_t)w[2] - from);
        }
        if (n == 0)
            return done;
        ssize_t got = preadv(fd, vec, n, pos);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -(int64_t)errno;
        }
        if (got == 0)
            return done; /* end of file */
        done += got;
        pos += got;
        /* Move the cursor past `got` bytes; it stays within the iovecs just read. */
        for (uint64_t left = (uint64_t)got; left > 0;) {
            uint64_t room = (uint64_t)v[2] - skip;
            if (left < room) {
                skip += left;
                left = 0;
            } else {
                left -= room;
                v += 3;
                skip = 0;
            }
        }
    }
}

int nx_preadv_runs(uint8_t *const *bufs, const uint64_t *buf_sizes, size_t nbufs,
                   const int64_t *iovs, size_t niov, const int64_t *runs, size_t nruns,
                   int iov_limit, int64_t *result)
{
    if (iov_limit < 1 || iov_limit > NX_READV_MAX_IOV || !iovecs_valid(buf_sizes, nbufs, iovs, niov)
        || !runs_valid(runs, nruns, niov))
        return NX_EINVAL;
    for (size_t r = 0; r < nruns; r++)
        result[r] = read_run(bufs, iovs, runs + 4 * r, iov_limit);
    return NX_OK;
}

int nx_copy_runs(const uint8_t *src, uint64_t src_size, uint8_t *dst, uint64_t dst_size,
                 const int64_t *src_off, const int64_t *dst_off, const int64_t *len, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (src_off[i] < 0 || dst_off[i] < 0 || len[i] < 0)
            return NX_EINVAL;
        uint64_t a = (uint64_t)src_off[i], b = (uint64_t)dst_off[i], l = (uint64_t)len[i];
        if (a > src_size || l > src_size - a || b > dst_size || l > dst_size - b)
            return NX_EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        memcpy(dst + dst_off[i], src + src_off[i], (size_t)len[i]);
    return NX_OK;
}

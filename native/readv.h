/*
 * readv.h - a batch of positional vectored reads in one call.
 *
 * The extent store reads many records per request, each as a header and a
 * payload that land in different buffers, grouped into *runs*: a run is a
 * stretch of one file read from one offset into a list of iovecs. Done from
 * Python each run costs a syscall plus the building of its iovec list; here
 * a whole batch costs one call, and the iovecs are plain numbers.
 *
 * An iovec is described relative to a caller-owned buffer, never as a raw
 * address, so every one is checked against its buffer before anything is
 * read: a wrong description yields NX_EINVAL, never a stray write.
 */
#ifndef NX_READV_H
#define NX_READV_H

#include <stddef.h>
#include <stdint.h>

#include "nxerr.h"

/* The most iovecs one preadv may be given (Linux UIO_MAXIOV). */
#define NX_READV_MAX_IOV 1024

/*
 * nx_preadv_runs: read `nruns` runs.
 *   bufs, buf_sizes  nbufs writable buffers and their sizes in bytes.
 *   iovs   niov iovecs, 3 int64 each: (buffer index, offset in that buffer,
 *          length); zero-length iovecs are allowed and skipped.
 *   runs   nruns runs, 4 int64 each: (fd, file offset, first iovec, iovec
 *          count). Run r reads from fd at the file offset into its iovecs in
 *          order, with preadv calls of at most `iov_limit` non-empty iovecs,
 *          continuing after a short read until the iovecs are full or the
 *          file ends.
 *   result nruns int64: bytes run r read (less than its iovecs' total only
 *          when the file ended), or -errno if a preadv failed (the bytes of
 *          that run are then unspecified). EINTR is retried.
 * Returns NX_OK, or NX_EINVAL with nothing read and `result` untouched when
 * iov_limit is not in 1..NX_READV_MAX_IOV, an iovec lies outside its buffer
 * or names no buffer, or a run has a negative fd, offset or count or names
 * iovecs past niov. Runs are read in order; iovecs of different runs (or of
 * one run) may overlap, in which case the later read wins.
 */
int nx_preadv_runs(uint8_t *const *bufs, const uint64_t *buf_sizes, size_t nbufs,
                   const int64_t *iovs, size_t niov, const int64_t *runs, size_t nruns,
                   int iov_limit, int64_t *result);

/*
 * nx_copy_runs: the in-memory counterpart: copy `n` runs of bytes from `src`
 * to `dst`, run i being len[i] bytes from src + src_off[i] to dst + dst_off[i]
 * (a gather of variable-length records into one buffer, without a Python loop).
 * Returns NX_OK, or NX_EINVAL with nothing copied when a run has a negative
 * offset or length or lies outside its buffer. Runs are copied in order; when
 * destinations overlap the later run wins. src and dst must not overlap.
 */
int nx_copy_runs(const uint8_t *src, uint64_t src_size, uint8_t *dst, uint64_t dst_size,
                 const int64_t *src_off, const int64_t *dst_off, const int64_t *len, size_t n);

#endif /* NX_READV_H */

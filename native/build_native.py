"""cffi build script for `nxstore._native` (API mode, out-of-line).

The only glue between the C in native/ and Python. Used by setup.py
(`cffi_modules=["native/build_native.py:ffibuilder"]`) and runnable directly:
`python native/build_native.py` builds it in a temporary directory and copies
the extension into nxstore/.

Flags: `-O3 -march=native` by default (XXH3 then uses the host's vector
units); `NXSTORE_PORTABLE=1` builds with plain `-O3` for binaries that must run
on other CPUs. The GIL is released around every call (cffi's default for
functions declared in the cdef and called through `lib`).
"""

from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = ["fingerprint.c", "fpindex.c", "headers.c", "mapops.c", "plan.c", "readv.c"]

CDEF = """
#define NX_OK 0
#define NX_ENOMEM -1
#define NX_EINVAL -2
#define NX_ECORRUPT -3
#define NX_INDEX_SLOT_BYTES 24
#define NX_INDEX_MIN_CAPACITY 16

void nx_fingerprint_blocks(const uint8_t *buf, size_t nblocks, size_t block_size,
                           uint8_t *fps_out, uint8_t *zero_out);
void nx_checksum_rows(const uint8_t *buf, size_t nrows, size_t stride, size_t len,
                      uint64_t *out);
size_t nx_verify_blocks(const uint8_t *buf, size_t nblocks, size_t block_size,
                        const uint8_t *table, uint64_t table_rows, const uint64_t *ids);

typedef struct nx_index nx_index;
nx_index *nx_index_new(uint64_t capacity_hint);
void nx_index_free(nx_index *ix);
uint64_t nx_index_count(const nx_index *ix);
uint64_t nx_index_capacity(const nx_index *ix);
uint64_t nx_index_memory_bytes(const nx_index *ix);
void nx_index_lookup(const nx_index *ix, const uint8_t *fps, size_t n, uint64_t *out_ids);
int64_t nx_index_lookup_or_insert(nx_index *ix, const uint8_t *fps, size_t n, uint64_t next_id,
                                  uint64_t *out_ids, uint8_t *out_new);
int nx_index_insert(nx_index *ix, const uint8_t *fps, const uint64_t *ids, size_t n);
uint64_t nx_index_remove(nx_index *ix, const uint8_t *fps, size_t n);
void nx_index_raw(const nx_index *ix, const uint8_t **slots, size_t *nbytes);
int nx_index_from_raw(const uint8_t *slots, size_t nbytes, uint64_t capacity, uint64_t count,
                      nx_index **out);

size_t nx_map_merge(const uint64_t *top_k, const uint64_t *top_v, size_t nt,
                    const uint64_t *bot_k, const uint64_t *bot_v, size_t nb,
                    uint64_t *out_k, uint64_t *out_v);
size_t nx_map_diff(const uint64_t *a_k, const uint64_t *a_v, size_t na,
                   const uint64_t *b_k, const uint64_t *b_v, size_t nb, uint64_t *out_k);
void nx_map_lookup(const uint64_t *k, const uint64_t *v, size_t n,
                   const uint64_t *q, size_t nq, uint64_t *out_v, uint8_t *out_found);
size_t nx_map_fill_range(const uint64_t *k, const uint64_t *v, size_t n, uint64_t lo,
                         size_t count, uint64_t *out_v, uint8_t *out_found);

#define NX_RECORD_HEADER_BYTES 64
#define NX_RECORD_CHECKED_BYTES 56
#define NX_RECORD_MAGIC 0x5845584E
#define NX_RECORD_FLAG_COMPRESSED 1
void nx_check_headers(const uint8_t *hdrs, size_t n, const uint64_t *ids, const uint32_t *slens,
                      const uint8_t *flags, uint32_t block_size, uint8_t *bad);

#define NX_PLAN_SINK 0
#define NX_PLAN_HDRS 1
#define NX_PLAN_OUT 2
#define NX_PLAN_CBUF 3
size_t nx_plan_runs(const int64_t *keys, const int64_t *lens, const uint8_t *comp,
                    const int64_t *dest, size_t n, int64_t block_size, int64_t max_gap,
                    int64_t *iovs, int64_t *runs);
int nx_gather_records(const uint32_t *group, const uint32_t *offset, const uint32_t *slen,
                      const uint8_t *flags, uint64_t table_rows, const uint64_t *ids, size_t n,
                      int64_t *keys, int64_t *lens, uint8_t *comp);

#define NX_READV_MAX_IOV 1024
int nx_preadv_runs(uint8_t *const *bufs, const uint64_t *buf_sizes, size_t nbufs,
                   const int64_t *iovs, size_t niov, const int64_t *runs, size_t nruns,
                   int iov_limit, int64_t *result);
"""


def compile_args() -> list[str]:
    """Compiler flags: host-tuned unless NXSTORE_PORTABLE=1."""
    base = ["-O3", "-std=c99", "-Wall", "-Wextra"]
    if os.environ.get("NXSTORE_PORTABLE") == "1":
        return base
    return [*base, "-march=native"]


def make_builder(relative: bool = True) -> FFI:
    """The FFI builder; source paths relative to the project root (setuptools wants
    that, and builds from the root) or absolute (for a direct compile())."""

    def path(name: str) -> str:
        full = os.path.join(HERE, name)
        return os.path.relpath(full, ROOT) if relative else full

    builder = FFI()
    builder.cdef(CDEF)
    builder.set_source(
        "nxstore._native",
        "".join(f'#include "{name[:-2]}.h"\n' for name in SOURCES),
        sources=[path(s) for s in SOURCES],
        include_dirs=[path("")],
        libraries=["xxhash"],
        extra_compile_args=compile_args(),
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    import glob
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = make_builder(relative=False).compile(tmpdir=tmp, verbose=True)
        for so in glob.glob(os.path.join(ROOT, "nxstore", "_native.*.so")):
            os.unlink(so)
        shutil.copy(built, os.path.join(ROOT, "nxstore", os.path.basename(built)))

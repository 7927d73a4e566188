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
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = ["fingerprint.c", "fpindex.c", "framemac.c", "headers.c", "lz4batch.c", "mapops.c", "plan.c",
           "readv.c"]

HEADERS = ["nxerr.h", *(f"{name[:-2]}.h" for name in SOURCES)]
# `#define NAME <integer>` (parentheses and a U suffix allowed): the constants cffi can take
_DEFINE = re.compile(r"#define\s+(NX_\w+)\s+\(?(-?(?:0x[0-9A-Fa-f]+|\d+))[uU]?\)?(?:\s|/\*|$)")


def header_cdef() -> str:
    """The cdef: the declarations of native/*.h as written there (one source of truth),
    less the preprocessor lines but their integer constants (cffi parses no more)."""
    lines = []
    for name in HEADERS:
        with open(os.path.join(HERE, name)) as f:
            for line in f:
                if not line.startswith("#"):
                    lines.append(line)
                elif m := _DEFINE.match(line):
                    lines.append(f"#define {m[1]} {m[2]}\n")
    return "".join(lines)


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
    builder.cdef(header_cdef())
    builder.set_source(
        "nxstore._native",
        "".join(f'#include "{name[:-2]}.h"\n' for name in SOURCES),
        sources=[path(s) for s in SOURCES],
        include_dirs=[path("")],
        libraries=["xxhash", "lz4", "crypto"],
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

"""Image transfer: import a file into a vDisk, export a vDisk or snapshot.

Raw images are copied here; other formats (qcow2, vmdk, vhdx...) go through qemu-img
and an NBD export of the vDisk (nxstore.nbd.images).

Raw images:

Both stream in CHUNK-sized pieces at CHUNK-aligned offsets (whole blocks for
every block size, so aligned writes bypass the OpLog) and are sparse-aware:
import skips the holes of the source file (SEEK_DATA/SEEK_HOLE) and every
all-zero chunk; export leaves every all-zero 64 KiB piece as a hole in the
output file (it is truncated to the image size first, then written piecewise).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import time
from collections.abc import Iterator

from ..errors import NxError
from .common import CliError, human, open_cluster, split_ref
from .progress import Progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes; transfer unit and alignment (a multiple of every block size)
HOLE_GRAIN = 64 << 10  # bytes; zero runs this aligned and long stay holes in exported files
_ZERO = bytes(CHUNK)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="copy a disk image (raw, qcow2, vmdk, vhdx...) into a vDisk")
    p.add_argument("path", metavar="PATH")
    p.add_argument("vdisk", metavar="VDISK")
    p.add_argument("file", metavar="FILE", help="image file (or block device)")
    p.add_argument("--create", action="store_true",
                   help="create VDISK with the image's size (it must not exist yet)")
    p.add_argument("--format", metavar="FMT",
                   help="image format (default: probed by qemu-img; give it for untrusted "
                   "raw images)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="copy a vDisk or snapshot into an image file "
                       "(raw and sparse, or qcow2, vmdk, vhdx...)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("source", metavar="VDISK[@SNAP]")
    p.add_argument("file", metavar="FILE", help="output file (created or truncated)")
    p.add_argument("--format", metavar="FMT",
                   help="image format (default: by FILE's extension: .qcow2, .vmdk, .vhdx, "
                   ".vhd, .vdi; raw otherwise)")
    p.set_defaults(func=cmd_export)


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / max(seconds, 1e-9) / 1e6:.0f} MB/s"


# -- import -------------------------------------------------------------------------
def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """CHUNK-aligned [start, end) ranges covering every data extent of the file;
    the whole file when the file system cannot tell holes from data."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from pos to the end
                return
            yield pos, size  # SEEK_DATA unsupported here
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        start = max(pos, start // CHUNK * CHUNK)
        end = min(size, -(-end // CHUNK) * CHUNK)
        if start >= end:
            return
        yield start, end
        pos = end


def _source_size(fd: int, name: str) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise CliError(f"{name} is not a regular file or block device")


def cmd_import(args: argparse.Namespace) -> int:
    from ..nbd import images

    fmt = args.format or images.probe(args.file)[0]
    if fmt != "raw":
        return _import_converted(args, fmt)
    fd = os.open(args.file, os.O_RDONLY)
    try:
        size = _source_size(fd, args.file)
        with open_cluster(args.path, background=True) as c:
            if args.create:
                if size == 0:
                    raise CliError(f"{args.file} is empty: cannot create a vDisk of size 0")
                vd = c.create_vdisk(args.vdisk, size)
            else:
                vd = c.vdisk(args.vdisk)
                if size > vd.size:
                    raise CliError(f"{args.file} ({size:,} bytes) does not fit in vDisk "
                                   f"{vd.name} ({vd.size:,} bytes); resize it first")
            try:
                written, seconds = _copy_in(fd, size, vd, fresh=args.create)
            except BaseException:
                if args.create:  # do not leave a half-imported disk behind
                    _remove_partial(c, args.vdisk)
                raise
    finally:
        os.close(fd)
    print(f"imported {args.file} into vDisk {args.vdisk}: {human(size)} in {seconds:.2f} s "
          f"({_rate(size, seconds)}); {human(written)} of data written, "
          f"{human(size - written)} of zeros skipped")
    return 0


def _remove_partial(c, vdisk: str) -> None:
    log.info("removing partially imported vDisk %s", vdisk)
    try:
        c.delete_vdisk(vdisk)
    except NxError as exc:
        log.warning("could not remove vDisk %s: %s", vdisk, exc)


def _copy_in(fd: int, size: int, vd, *, fresh: bool) -> tuple[int, float]:
    """Stream the file into the vDisk; returns (bytes written, seconds).

    Zero chunks and holes are not written; on an existing vDisk (not `fresh`)
    they are trimmed, so the vDisk reads exactly as the image afterwards.
    """
    t0 = time.perf_counter()
    written = 0
    zero_from: int | None = None  # start of a pending run of zeros to trim

    def zeros_until(end: int) -> None:
        nonlocal zero_from
        if zero_from is not None and not fresh and end > zero_from:
            vd.trim(zero_from, end - zero_from)
        zero_from = None

    pos = 0
    with Progress(size, f"import {vd.name}") as bar:
        for start, end in data_ranges(fd, size):
            if start > pos and zero_from is None:
                zero_from = pos
            bar.update(start - pos)
            for off in range(start, end, CHUNK):
                n = min(CHUNK, end - off)
                data = os.pread(fd, n, off)
                if len(data) != n:
                    raise CliError(f"short read at offset {off}: the image changed while importing")
                if data == _ZERO[:n]:
                    if zero_from is None:
                        zero_from = off
                else:
                    zeros_until(off)
                    vd.write(off, data)
                    written += n
                bar.update(n)
            pos = end
        if pos < size and zero_from is None:
            zero_from = pos
        zeros_until(size)
        bar.update(size - pos)
        vd.flush()
    return written, time.perf_counter() - t0


def _import_converted(args: argparse.Namespace, fmt: str) -> int:
    """Import an image of another format than raw: qemu-img through an NBD export."""
    from ..nbd import images

    fmt, size = images.probe(args.file, fmt)
    t0 = time.perf_counter()
    with open_cluster(args.path, background=True) as c:
        if args.create:
            c.create_vdisk(args.vdisk, size)
        try:
            with Progress(size, f"import {args.vdisk}") as bar:
                images.import_image(c, args.vdisk, args.file, fmt, fresh=args.create,
                                    progress=bar.set)
        except BaseException:
            if args.create:
                _remove_partial(c, args.vdisk)
            raise
    seconds = time.perf_counter() - t0
    print(f"imported {args.file} ({fmt}) into vDisk {args.vdisk}: {human(size)} in "
          f"{seconds:.2f} s ({_rate(size, seconds)})")
    return 0


def _export_converted(args: argparse.Namespace, fmt: str) -> int:
    """Export to an image of another format than raw: qemu-img through an NBD export."""
    from ..nbd import images

    split_ref(args.source, need_snap=False)
    t0 = time.perf_counter()
    with open_cluster(args.path) as c, Progress(None, f"export {args.source}") as bar:
        size = images.export_image(c, args.source, args.file, fmt, progress=bar.set)
    seconds = time.perf_counter() - t0
    print(f"exported {args.source} to {args.file} ({fmt}): {human(size)} in {seconds:.2f} s "
          f"({_rate(size, seconds)})")
    return 0


# -- export -------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from ..nbd import images

    fmt = args.format or images.output_format(args.file)
    if fmt != "raw":
        return _export_converted(args, fmt)
    vdisk, snap = split_ref(args.source, need_snap=False)
    with open_cluster(args.path) as c:
        src = c.snapshot(vdisk, snap) if snap else c.vdisk(vdisk)
        size = src.size
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT, 0o644)
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        try:
            if regular:
                os.ftruncate(fd, 0)  # holes are zeros only in a fresh file
                os.ftruncate(fd, size)
            written, seconds = _copy_out(src, size, fd, sparse=regular, label=args.source)
            if regular:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            if regular:
                log.info("removing incomplete %s", args.file)
                os.unlink(args.file)
            raise
        os.close(fd)
    sparse_note = f"; {human(size - written)} of zeros left as holes" if regular else ""
    print(f"exported {args.source} to {args.file}: {human(size)} in {seconds:.2f} s "
          f"({_rate(size, seconds)}){sparse_note}")
    return 0


def _copy_out(src, size: int, fd: int, *, sparse: bool, label: str) -> tuple[int, float]:
    """Stream the image into fd; returns (bytes written, seconds)."""
    t0 = time.perf_counter()
    written = 0
    with Progress(size, f"export {label}") as bar:
        for off in range(0, size, CHUNK):
            n = min(CHUNK, size - off)
            data = src.read(off, n)
            if not sparse:
                _pwrite_all(fd, memoryview(data), off)
                written += n
            elif data != _ZERO[:n]:
                for lo, hi in _data_runs(data):
                    _pwrite_all(fd, memoryview(data)[lo:hi], off + lo)
                    written += hi - lo
            bar.update(n)
    return written, time.perf_counter() - t0


def _data_runs(data: bytes) -> list[tuple[int, int]]:
    """[lo, hi) runs of `data` that are not HOLE_GRAIN-aligned all-zero pieces."""
    runs: list[tuple[int, int]] = []
    zero = _ZERO[:HOLE_GRAIN]
    for lo in range(0, len(data), HOLE_GRAIN):
        hi = min(lo + HOLE_GRAIN, len(data))
        if data[lo:hi] == zero[: hi - lo]:
            continue
        if runs and runs[-1][1] == lo:
            runs[-1] = (runs[-1][0], hi)
        else:
            runs.append((lo, hi))
    return runs


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)

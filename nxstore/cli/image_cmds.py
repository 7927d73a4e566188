"""Image transfer: import a file into a vDisk, export a vDisk or snapshot; verify one.

Raw images are copied here; other formats (qcow2, vmdk, vhdx...) go through qemu-img
and an NBD export of the vDisk (nxstore.nbd.images).

Raw images:

Both stream in CHUNK-sized pieces at CHUNK-aligned offsets (whole blocks for
every block size, so aligned writes bypass the OpLog) and are sparse-aware:
import skips the holes of the source file (SEEK_DATA/SEEK_HOLE) and every
all-zero chunk; export leaves every all-zero 64 KiB piece as a hole in the
output file (it is truncated to the image size first, then written piecewise).

`export ... -` (or to a FIFO) writes the image in order, zeros included, reading the next
piece while writing this one. `import --update` compares each block's fingerprint with
the vDisk's and writes (or trims) only those that differ. `verify` re-reads every
allocated block (nxstore.store.verify) and lists every damaged one.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import stat
import sys
import time
from collections.abc import Iterator

from ..errors import NxError
from .common import CliError, ClusterBusy, human, open_cluster, plural, report_blocks, split_ref
from .progress import Progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes; transfer unit and alignment (a multiple of every block size)
UPDATE_CHUNK = 8 << 20  # bytes; import --update compares this much at a time (whole blocks)
STREAM_CHUNK = 4 << 20  # bytes; export to a pipe reads this much at a time (one ahead)
STREAM_PIPE_BYTES = 1 << 20  # bytes; the pipe buffer export asks for (best effort)
HOLE_GRAIN = 64 << 10  # bytes; zero runs this aligned and long stay holes in exported files
_ZERO = bytes(CHUNK)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="copy a disk image (raw, qcow2, vmdk, vhdx...) into a vDisk")
    p.add_argument("path", metavar="PATH")
    p.add_argument("vdisk", metavar="VDISK")
    p.add_argument("file", metavar="FILE", help="image file (or block device)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--create", action="store_true",
                     help="create VDISK with the image's size (it must not exist yet)")
    how.add_argument("--update", action="store_true",
                     help="VDISK holds an older version of the image (same size): compare "
                     "block fingerprints and write only the blocks that differ (raw images)")
    p.add_argument("--format", metavar="FMT",
                   help="image format (default: probed by qemu-img; give it for untrusted "
                   "raw images)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="copy a vDisk or snapshot into an image file "
                       "(raw and sparse, or qcow2, vmdk, vhdx...)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("source", metavar="VDISK[@SNAP]")
    p.add_argument("file", metavar="FILE",
                   help="output file (created or truncated); '-': the raw image to standard "
                   "output (a pipe: zeros are written out, the summary goes to stderr)")
    p.add_argument("--format", metavar="FMT",
                   help="image format (default: by FILE's extension: .qcow2, .vmdk, .vhdx, "
                   ".vhd, .vdi; raw otherwise)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="re-read and check every allocated block of a vDisk or "
                       "snapshot; exit 1 listing every damaged block")
    p.add_argument("path", metavar="PATH")
    p.add_argument("source", metavar="VDISK[@SNAP]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)


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
    if fmt != "raw" and args.update:
        raise CliError(f"--update reads raw images only and {args.file} is {fmt}: convert it "
                       "first (qemu-img convert -O raw)")
    if fmt != "raw":
        return _import_converted(args, fmt)
    if args.update:
        return _import_update(args)
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


def _import_update(args: argparse.Namespace) -> int:
    """`import --update`: write only the blocks of the image that differ from the vDisk."""
    fd = os.open(args.file, os.O_RDONLY)
    try:
        size = _source_size(fd, args.file)
        with open_cluster(args.path, background=True) as c:
            vd = c.vdisk(args.vdisk)
            if size != vd.size:
                raise CliError(f"{args.file} ({size:,} bytes) is not the size of vDisk "
                               f"{vd.name} ({vd.size:,} bytes): --update needs the same size")
            r = update_blocks(fd, size, vd, c.block_size)
    finally:
        os.close(fd)
    changed = r.written + r.trimmed
    print(f"updated vDisk {args.vdisk} from {args.file}: {r.compared} blocks compared, "
          f"{changed} differed ({r.written} written, {r.trimmed} trimmed to zeros) in "
          f"{r.seconds:.2f} s ({_rate(size, r.seconds)})")
    return 0


@dataclasses.dataclass(frozen=True)
class UpdateResult:
    compared: int  # blocks of the image compared with the vDisk's
    written: int  # blocks written (they differed and hold data)
    trimmed: int  # blocks trimmed (they differed and are zeros in the image)
    seconds: float


def update_blocks(fd: int, size: int, vd, block_size: int) -> UpdateResult:
    """Make vDisk `vd` (of `size` bytes) read as the first `size` bytes of file `fd`,
    writing only the blocks whose fingerprint differs from the vDisk's (zero blocks that
    differ are trimmed). Reads the file in UPDATE_CHUNK pieces, the next one read and
    fingerprinted (C, GIL released) in a helper thread while this one is compared (one map
    lookup a piece) and its differing blocks written as one batch. Durable on return."""
    import numpy as np  # here, not at the top: `nxstore import --help` stays fast

    from ..store import native
    from ..store.vdisk import block_ranges

    t0 = time.perf_counter()
    compared = written = trimmed = 0
    pieces = [(off, min(UPDATE_CHUNK, size - off)) for off in range(0, size, UPDATE_CHUNK)]
    buffers = [np.zeros(UPDATE_CHUNK, np.uint8) for _ in range(2)]  # one read ahead

    def load(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        off, n = pieces[k]
        piece = buffers[k % 2][: -(-n // block_size) * block_size]
        if os.preadv(fd, [piece[:n]], off) != n:
            raise CliError(f"short read at offset {off}: the image changed while importing")
        piece[n:] = 0  # a partial last block reads as zeros past the vDisk's end
        return (piece, *native.fingerprint_blocks(piece, block_size))

    with Progress(size, f"update {vd.name}") as bar, \
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nxstore-update") as pool:
        ahead = pool.submit(load, 0) if pieces else None
        for k, (off, n) in enumerate(pieces):
            assert ahead is not None
            piece, fps, zero = ahead.result()
            # the buffer read next is the other one: this piece's stays as it is
            ahead = pool.submit(load, k + 1) if k + 1 < len(pieces) else None
            first = off // block_size
            differ = (fps != vd.block_fingerprints(first, len(fps)).fps).any(axis=1)
            data, zeros = np.flatnonzero(differ & ~zero), np.flatnonzero(differ & zero)
            # whole blocks in one batch, straight to the extent store; a partial last
            # block (an image size that is not a multiple of the block size) as a write
            whole = data[(data + first + 1) * block_size <= size]
            rows = piece.reshape(-1, block_size)
            vd.write_blocks(whole + first, rows[whole])
            for lo, length in block_ranges(data[len(whole):] + first, block_size, size):
                vd.write(lo, piece[lo - off : lo - off + length])
            for lo, length in block_ranges(zeros + first, block_size, size):
                vd.trim(lo, length)
            compared += len(fps)
            written += int(data.size)
            trimmed += int(zeros.size)
            bar.update(n)
        vd.flush()
    return UpdateResult(compared, written, trimmed, time.perf_counter() - t0)


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
STDOUT = "-"  # the FILE argument of export that names standard output


def cmd_export(args: argparse.Namespace) -> int:
    if args.file == STDOUT:
        return _export_stdout(args)
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
            if _seekable(fd):
                written, seconds = _copy_out(src, size, fd, sparse=regular, label=args.source)
            else:  # a FIFO, a socket
                written, seconds = size, _stream_out(src, size, fd, label=args.source)
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


def _export_stdout(args: argparse.Namespace) -> int:
    """`export PATH SOURCE -`: the raw image, in order, on standard output (a pipe or a
    file); the summary goes to stderr so that stdout holds the image only."""
    if args.format not in (None, "raw"):
        raise CliError(f"only raw images can be written to standard output, not {args.format}")
    vdisk, snap = split_ref(args.source, need_snap=False)
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        raise CliError("standard output is not a file descriptor here") from None
    if os.isatty(fd):
        raise CliError("standard output is a terminal: redirect it to a file or a pipe")
    try:
        with open_cluster(args.path) as c:
            src = c.snapshot(vdisk, snap) if snap else c.vdisk(vdisk)
            size = src.size
            seconds = _stream_out(src, size, fd, label=args.source)
    except ClusterBusy as exc:
        # The daemon answers a forwarded command with one reply frame: it cannot stream.
        raise CliError(f"{exc}; its daemon cannot stream an image to standard output: export "
                       "to a FILE there instead, e.g. a named pipe made with mkfifo "
                       "and read from while the export runs") from None
    sys.stderr.write(f"exported {args.source} to standard output: {human(size)} in "
                     f"{seconds:.2f} s ({_rate(size, seconds)})\n")
    return 0


def _seekable(fd: int) -> bool:
    """Whether pwrite works on fd (not on pipes, FIFOs, sockets and terminals)."""
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError as exc:
        if exc.errno == errno.ESPIPE:
            return False
        raise
    return True


def _stream_out(src, size: int, fd: int, *, label: str) -> float:
    """Write the whole image to fd in order from its current position (a pipe: zeros
    included, no seeking); returns the seconds taken. The next STREAM_CHUNK is read (and
    verified) in a helper thread while this one is written: both release the GIL."""
    t0 = time.perf_counter()
    with contextlib.suppress(OSError, AttributeError):  # a bigger pipe: fewer wake-ups
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, STREAM_PIPE_BYTES)
    pieces = [(off, min(STREAM_CHUNK, size - off)) for off in range(0, size, STREAM_CHUNK)]
    with Progress(size, f"export {label}") as bar, \
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="nxstore-export") as pool:
        ahead = pool.submit(src.read, *pieces[0]) if pieces else None
        for k in range(len(pieces)):
            assert ahead is not None
            data = ahead.result()
            ahead = pool.submit(src.read, *pieces[k + 1]) if k + 1 < len(pieces) else None
            _write_all(fd, memoryview(data))
            bar.update(len(data))
    return time.perf_counter() - t0


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


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])


# -- verify -------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    vdisk, snap = split_ref(args.source, need_snap=False)
    with open_cluster(args.path) as c, Progress(None, f"verify {args.source}") as bar:
        src = c.snapshot(vdisk, snap) if snap else c.vdisk(vdisk)
        r = src.verify(progress=bar.set)
    doc = {"source": args.source, "size": r.size, "blocks_checked": r.blocks_checked,
           "bytes_checked": r.bytes_checked, "seconds": round(r.seconds, 3), "clean": r.clean,
           "damaged": [dataclasses.asdict(d) for d in r.damaged]}
    return report_blocks(
        args.source, r.damaged, json_doc=doc if args.json else None,
        clean=f"verified {args.source}: {r.blocks_checked} allocated blocks "
              f"({human(r.bytes_checked)}) in {r.seconds:.2f} s "
              f"({_rate(r.bytes_checked, r.seconds)}): no damage",
        error=f"verify found {plural(len(r.damaged), 'damaged block', 'damaged blocks')} of "
              f"{r.blocks_checked} in {args.source}")

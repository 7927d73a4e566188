"""Disk image files of any format qemu-img knows (qcow2, vmdk, vhdx, vpc, vdi, raw) copied into
and out of vDisks: qemu-img converts between the file and an NBD export of the vDisk on a
private Unix socket, so every byte goes through the same path as a live client's.

qemu-img probes the format of an input file unless it is given. Probing trusts the file:
a raw image whose first bytes look like a qcow2 header (with a backing file) is read as
qcow2, so give the format of images from untrusted sources (`fmt="raw"`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator

from ..cluster import Cluster
from ..errors import FormatError, NotFound, NxError, OutOfRange
from .server import NbdServer, serve

QEMU_IMG = "qemu-img"
PROBE_TIMEOUT_S = 60.0  # qemu-img info on a local file
OUTPUT_FORMATS = {".qcow2": "qcow2", ".qcow": "qcow2", ".vmdk": "vmdk", ".vhdx": "vhdx",
                  ".vhd": "vpc", ".vpc": "vpc", ".vdi": "vdi"}  # any other name: raw
_PERCENT_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


def _qemu_img() -> str:
    path = shutil.which(QEMU_IMG)
    if path is None:
        raise NotFound(f"{QEMU_IMG} is not installed (Debian: apt-get install qemu-utils)")
    return path


def probe(path: str, fmt: str | None = None) -> tuple[str, int]:
    """(format, virtual size in bytes) of an image file, as qemu-img reads it (`fmt`
    forces the format). Raises FileNotFoundError, NotFound (no qemu-img), FormatError."""
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    cmd = [_qemu_img(), "info", "--output=json", *(["-f", fmt] if fmt else []), path]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                          check=False)
    if done.returncode != 0:
        raise FormatError(f"qemu-img cannot read {path}: {_last_line(done.stderr)}")
    info = json.loads(done.stdout)
    return str(info["format"]), int(info["virtual-size"])


def output_format(path: str) -> str:
    """The format an output file's name asks for: by extension (.qcow2, .vmdk, .vhdx,
    .vhd, .vdi), raw for anything else."""
    return OUTPUT_FORMATS.get(os.path.splitext(path)[1].lower(), "raw")


def import_image(cluster: Cluster, vdisk: str, path: str, fmt: str, *, fresh: bool,
                 progress: Progress | None = None) -> int:
    """Copy image file `path` of format `fmt` into vDisk `vdisk` so that the vDisk reads
    as the image (bytes past the image's end untouched); `fresh`: the vDisk was just
    created (reads as zeros), so zeros are not written. Durable on return. Returns the
    image's virtual size. Raises OutOfRange (image larger than the vDisk), FormatError,
    NotFound, NxError (qemu-img failed: its message)."""
    fmt, size = probe(path, fmt)
    if size > cluster.vdisk(vdisk).size:
        raise OutOfRange(f"{path} ({size:,} bytes) does not fit in vDisk {vdisk} "
                         f"({cluster.vdisk(vdisk).size:,} bytes); resize it first")
    with _private_export(cluster, vdisk) as server:
        _convert(["-n", *(["--target-is-zero"] if fresh else []), "-f", fmt, "-O", "raw",
                  path, server.uri], size, progress)
    return size


def export_image(cluster: Cluster, target: str, path: str, fmt: str,
                 progress: Progress | None = None) -> int:
    """Write the image of `target` (VDISK or VDISK@SNAPSHOT) to a new file `path` of
    format `fmt` (replaced if it exists). Returns the image size. Raises NotFound,
    NxError (qemu-img failed: its message; no partial file is left)."""
    with _private_export(cluster, target, read_only=True) as server:
        size = server.export.size
        try:
            _convert(["-f", "raw", "-O", fmt, server.uri, path], size, progress)
        except BaseException:
            if os.path.exists(path):
                os.unlink(path)
            raise
    return size


@contextlib.contextmanager
def _private_export(cluster: Cluster, target: str, *, read_only: bool = False
                    ) -> Iterator[NbdServer]:
    """An export of `target` on an owner-only Unix socket in a fresh temporary directory."""
    where = tempfile.mkdtemp(prefix="nxstore-nbd-")
    try:
        with serve(cluster, target, unix=os.path.join(where, "nbd.sock"),
                   read_only=read_only) as server:
            yield server
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _convert(args: list[str], size: int, progress: Progress | None) -> None:
    """Run `qemu-img convert -p ARGS`, reporting its progress; NxError if it fails."""
    proc = subprocess.Popen([_qemu_img(), "convert", "-p", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None and proc.stderr is not None
    with proc:
        while chunk := proc.stdout.read1(4096):
            found = _PERCENT_RE.findall(chunk)
            if found and progress is not None:
                progress(int(size * float(found[-1]) / 100), size)
        stderr = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise NxError(f"qemu-img convert failed: {_last_line(stderr)}")
    if progress is not None:
        progress(size, size)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"

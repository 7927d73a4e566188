"""What one NBD export serves: a vDisk (read-write unless asked otherwise) or a snapshot
(always read-only), and how its errors become errno values for the client."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from ..cluster import Cluster
from ..errors import (
    ClosedError,
    InvalidArgument,
    NoSpace,
    NotFound,
    OutOfRange,
    ReadOnly,
)
from ..store.snapshot import Snapshot
from ..store.vdisk import VDisk


def split_target(target: str) -> tuple[str, str | None]:
    """'db@snap' -> ('db', 'snap'); 'db' -> ('db', None). InvalidArgument if malformed."""
    vdisk, sep, snap = target.partition("@") if isinstance(target, str) else ("", "", "")
    if not vdisk or (sep and not snap):
        raise InvalidArgument(f"bad export target {target!r}: expected VDISK or VDISK@SNAPSHOT")
    return vdisk, (snap or None)


def errno_of(exc: BaseException) -> int:
    """The errno an I/O error of the engine reaches an NBD client as (before wire_errno)."""
    if isinstance(exc, NoSpace):
        return errno.ENOSPC
    if isinstance(exc, ReadOnly):
        return errno.EROFS
    if isinstance(exc, (OutOfRange, InvalidArgument)):
        return errno.EINVAL
    if isinstance(exc, (ClosedError, NotFound)):  # the cluster closed, the source was deleted
        return errno.ESHUTDOWN
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO  # Corruption (a block failed verification) and anything unexpected


@dataclass
class Export:
    """One exported image. `read_only` is true for a snapshot, a replica vDisk, or when
    asked. Methods raise nxstore.errors (see errno_of); each returns once done."""

    name: str
    source: VDisk | Snapshot
    read_only: bool
    block_size: int

    @classmethod
    def of(cls, cluster: Cluster, target: str, *, read_only: bool = False) -> Export:
        """The export of `target` ('VDISK' or 'VDISK@SNAPSHOT') of an open cluster.
        Raises NotFound, InvalidArgument."""
        vdisk, snap = split_target(target)
        source: VDisk | Snapshot = cluster.snapshot(vdisk, snap) if snap else cluster.vdisk(vdisk)
        read_only = bool(read_only or snap or source.read_only)
        return cls(target, source, read_only, cluster.block_size)

    @property
    def size(self) -> int:
        return self.source.size

    def pread(self, offset: int, length: int) -> bytes:
        return self.source.read(offset, length)

    def allocation(self, offset: int, length: int) -> list[tuple[int, int, bool]]:
        """(offset, length, allocated) runs covering [offset, offset+length) exactly:
        allocated False where the image was never written or was trimmed (reads as
        zeros); the contract of VDisk.allocated_ranges."""
        return self.source.allocated_ranges(offset, length)

    def pwrite(self, offset: int, data: memoryview, fua: bool) -> None:
        self._writable().write(offset, data)
        if fua:
            self.flush()

    def zero(self, offset: int, length: int, fua: bool) -> None:
        """Make [offset, offset+length) read as zeros by trimming it: zeros take no
        space (the block map points nowhere), so this is also the fast zero."""
        self.trim(offset, length, fua)

    def trim(self, offset: int, length: int, fua: bool) -> None:
        self._writable().trim(offset, length)
        if fua:
            self.flush()

    def flush(self) -> None:
        """Every write and trim acknowledged before is durable (on any connection)."""
        if isinstance(self.source, VDisk):
            self.source.flush()

    def _writable(self) -> VDisk:
        if self.read_only or not isinstance(self.source, VDisk):
            raise ReadOnly(f"export {self.name!r} is read-only")
        return self.source


"""The write mirror: how a layer above copies every write of a vDisk somewhere else.

`Engine.set_mirror(name, mirror)` installs a `WriteMirror` on a vDisk (kept in RAM only:
the layer that installs it installs it again after every open). The vDisk then calls it:

- `write` / `trim` under the vDisk's lock, after the local write or trim is applied, in the
  order the vDisk applies them (the bytes of a write exactly as written, for both write
  paths: OpLog and bypass). They may block (back-pressure). If one raises, `VDisk.write` /
  `trim` raises it: the local change is applied but nothing is acknowledged (a write is
  acknowledged only by a returned `flush`).
- `prepare_flush` from `VDisk.flush` before it makes the local writes durable, without the
  vDisk's lock: a hint that `flush` follows, so the mirror can start making its copy durable
  meanwhile (the two overlap); it must not block for long and may do nothing.
- `flush` from `VDisk.flush` after the local writes are durable, without the vDisk's lock:
  it returns once every write and trim of the vDisk mirrored before the call is durable at
  the mirror; it may block or raise (then `VDisk.flush` raises: nothing acknowledged).
- `check_change` before a restore or resize of the vDisk (`what` is "restore" or
  "resize"), under its lock: raise (InUse) to refuse the change.

A vDisk without a mirror pays one attribute check per call. The writes a mirror receives
are applied at the other end with `VDisk.apply_mirrored_write` / `apply_mirrored_trim`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .vdisk import VDisk


class WriteMirror(Protocol):
    """Receives every write of the vDisks it is installed on (module docstring)."""

    def write(self, vd: VDisk, offset: int, data: memoryview) -> None:
        """`data` was written at `offset` of `vd` (copy it to keep it)."""

    def trim(self, vd: VDisk, offset: int, length: int) -> None:
        """[offset, offset+length) of `vd` was trimmed."""

    def prepare_flush(self, vd: VDisk) -> None:
        """`flush(vd)` follows soon (unless the local sync fails): start it if that helps."""

    def flush(self, vd: VDisk) -> None:
        """Return once every write and trim of `vd` given before this call is durable."""

    def check_change(self, vd: VDisk, what: str) -> None:
        """Raise to refuse `what` ("restore", "resize") on `vd`."""

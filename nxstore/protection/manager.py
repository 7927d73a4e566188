"""The per-cluster state of the protection layer and the checks shared by its objects.

One `ProtectionManager` per open cluster (made on first use by the Engine glue):
it serialises protection operations (one RLock), holds the hooks registered as
Python callables and the category users of the layers above (runtime only), and at
creation finishes what a crash interrupted: PD snapshots left incomplete have their
vDisk snapshots removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import NotFound
from ..store.catalog import SnapshotRow, VDiskRow
from ..store.lockorder import Level, ordered_lock
from .rows import PDEntityRow, PDSnapshotRow, ProtectionDomainRow, VMRow

if TYPE_CHECKING:
    from ..store.engine import Engine
    from ..store.vdisk import VDisk
    from .modes import ReplicationMode, SynchronousReplication

log = logging.getLogger(__name__)


class ProtectionManager:
    """Protection state of one open cluster (see module docstring)."""

    def __init__(self, cluster: Engine, modes: Sequence[ReplicationMode] = (),
                 synchronous: SynchronousReplication | None = None) -> None:
        self.cluster = cluster
        #: the replication modes above protection (NearSync), consulted in this order
        self.modes: tuple[ReplicationMode, ...] = tuple(modes)
        #: Metro (synchronous replication with a witness), when the layer is attached
        self.synchronous = synchronous
        self.catalog = cluster._ctx.catalog
        self.lock = ordered_lock(Level.PROTECTION, "protection", reentrant=True)
        #: VM name -> {"pre-freeze": callable, "post-thaw": callable} (not persisted)
        self.callable_hooks: dict[str, dict[str, Callable[[Any], object]]] = {}
        #: checks the layers above register (runtime only): each returns what uses a
        #: category key, e.g. "protection policy 'gold'", or None (categories.delete_category)
        self.category_users: list[Callable[[str], str | None]] = []
        self._finish_incomplete()

    def now(self) -> float:
        return float(self.cluster._ctx.clock())

    # -- lookups ------------------------------------------------------------------
    def vm_row(self, name: str) -> VMRow:
        rows = self.catalog.rows(VMRow, "name = ?", (name,)) if isinstance(name, str) else []
        if not rows:
            raise NotFound(f"no VM {name!r}")
        return rows[0]

    def pd_row(self, name: str) -> ProtectionDomainRow:
        rows = (self.catalog.rows(ProtectionDomainRow, "name = ?", (name,))
                if isinstance(name, str) else [])
        if not rows:
            raise NotFound(f"no protection domain {name!r}")
        return rows[0]

    def pd_row_by_id(self, pd_id: int) -> ProtectionDomainRow:
        rows = self.catalog.rows(ProtectionDomainRow, "id = ?", (pd_id,))
        if not rows:
            raise NotFound(f"protection domain id {pd_id} was deleted")
        return rows[0]

    def vdisk(self, name: str) -> VDisk:
        return self.cluster.vdisk(name)

    def vm_of_vdisk(self, vdisk_name: str) -> str | None:
        """The VM that owns vDisk `vdisk_name`, if any."""
        for row in self.catalog.rows(VMRow):
            if vdisk_name in json.loads(row.vdisks):
                return row.name
        return None

    def container_vdisks(self, container: str) -> list[str]:
        """The vDisks a "container" PD entity covers now (see protection.domain): those in
        `container` that are writable (no replica), belong to no VM and are no PD's
        "vdisk" entity; sorted by name."""
        owned = {vd for row in self.catalog.rows(VMRow) for vd in json.loads(row.vdisks)}
        owned |= {e.name for e in self.catalog.rows(PDEntityRow, "kind = 'vdisk'")}
        return [vd.name for vd in self.cluster.vdisks()
                if vd.container == container and not vd.read_only and vd.name not in owned]

    def container_pd(self, container: str) -> str | None:
        """Name of the PD protecting `container` (a "container" entity), if any."""
        rows = self.catalog.rows(PDEntityRow, "kind = 'container' AND name = ?", (container,))
        return self.pd_row_by_id(rows[0].pd_id).name if rows else None

    def protecting_pd(self, kind: str, name: str) -> str | None:
        """Name of the PD protecting entity (kind, name), counting a vDisk as protected
        when the VM it belongs to is (and a VM when one of its vDisks is)."""
        pairs = [(kind, name)]
        if kind == "vdisk" and (owner := self.vm_of_vdisk(name)):
            pairs.append(("vm", owner))
        if kind == "vm":
            pairs += [("vdisk", vd) for vd in json.loads(self.vm_row(name).vdisks)]
        for k, n in pairs:
            rows = self.catalog.rows(PDEntityRow, "kind = ? AND name = ?", (k, n))
            if rows:
                return self.pd_row_by_id(rows[0].pd_id).name
        return None

    # -- crash recovery -------------------------------------------------------------
    def _finish_incomplete(self) -> None:
        """Remove the vDisk snapshots of PD snapshots a crash left half taken."""
        for row in self.catalog.rows(PDSnapshotRow, "complete = 0"):
            names = [m["vdisk"] for e in json.loads(row.manifest) for m in e["members"]]
            removed = 0
            for vd_name in names:
                vds = self.catalog.rows(VDiskRow, "name = ?", (vd_name,))
                if not vds:
                    continue
                for snap in self.catalog.rows(SnapshotRow, "vdisk_id = ? AND name = ?",
                                              (vds[0].id, row.name)):
                    with self.catalog.transaction():
                        self.catalog.delete(SnapshotRow, snap.id)
                    removed += 1
            with self.catalog.transaction():
                self.catalog.delete(PDSnapshotRow, row.id)
            log.info("removed incomplete PD snapshot %s (%d vDisk snapshots)", row.name, removed)
            self.cluster._ctx.prune()

"""What protection forbids the engine to do to a vDisk it uses (an Engine vDisk guard)."""

from __future__ import annotations

import json

from ..errors import InUse
from ..store.catalog import Catalog
from .rows import PDEntityRow, VMRow


def check_unprotected(catalog: Catalog, vdisk_name: str) -> None:
    """InUse if a VM or a protection domain still names the vDisk. A vDisk a PD's
    container entity covers is not held: deleting it takes it out of the PD from the
    next PD snapshot on (see protection.domain)."""
    for vm in catalog.rows(VMRow):
        if vdisk_name in json.loads(vm.vdisks):
            raise InUse(f"vDisk {vdisk_name!r} belongs to VM {vm.name!r}; delete the VM first")
    if catalog.rows(PDEntityRow, "kind = 'vdisk' AND name = ?", (vdisk_name,)):
        raise InUse(f"vDisk {vdisk_name!r} is protected by a protection domain; "
                    "remove it from the domain first")

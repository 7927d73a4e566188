"""nxstore: thin vDisks on a deduplicating, compressing extent store, with
zero-copy snapshots and clones, a durable OpLog, and replication between sites.

    import nxstore
    with nxstore.Cluster.create("/srv/site-a") as c:
        vd = c.create_vdisk("db", size=8 << 30)
        vd.write(0, b"hello")
        vd.flush()

The public names are imported on first use (PEP 562), so `import nxstore.store.engine`
or the `nxstore` command line do not pay for every layer above the one they use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import errors, fsck
    from .cluster import Cluster
    from .protection import VM, PDSnapshot, ProtectionDomain, Schedule, ScheduleRun
    from .store.catalog import ContainerRow as Container
    from .store.snapshot import Snapshot
    from .store.vdisk import VDisk

__all__ = [
    "VM",
    "Cluster",
    "Container",
    "PDSnapshot",
    "ProtectionDomain",
    "Schedule",
    "ScheduleRun",
    "Snapshot",
    "VDisk",
    "errors",
    "fsck",
]
__version__ = "0.1.0"

# public name -> (module, attribute in it; "" for the module itself)
_LAZY: dict[str, tuple[str, str]] = {
    "VM": (".protection", "VM"),
    "Cluster": (".cluster", "Cluster"),
    "Container": (".store.catalog", "ContainerRow"),
    "PDSnapshot": (".protection", "PDSnapshot"),
    "ProtectionDomain": (".protection", "ProtectionDomain"),
    "Schedule": (".protection", "Schedule"),
    "ScheduleRun": (".protection", "ScheduleRun"),
    "Snapshot": (".store.snapshot", "Snapshot"),
    "VDisk": (".store.vdisk", "VDisk"),
    "errors": (".errors", ""),
    "fsck": (".fsck", ""),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    module = importlib.import_module(module_name, __name__)
    value = getattr(module, attr) if attr else module
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

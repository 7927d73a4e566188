"""nxstore: thin vDisks on a deduplicating, compressing extent store, with
zero-copy snapshots and clones, a durable OpLog, and replication between sites.

    import nxstore
    with nxstore.Cluster.create("/srv/site-a") as c:
        vd = c.create_vdisk("db", size=8 << 30)
        vd.write(0, b"hello")
        vd.flush()
"""

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

"""NearSync: light-weight snapshots (LWS) in the OpLog, shipped as episodes and composed remotely.

An LWS is a MARKER record in the cluster's OpLog (taken in O(1), no drain); the records of a
vDisk between two markers form an *episode*. A PD whose schedule runs every
NEARSYNC_MAX_INTERVAL_S or more often replicates in NearSync mode: a seed vDisk snapshot is
replicated, then LWS are taken every interval and their episodes shipped to each remote, which
stores them durably, lists them as restore points and composes a vDisk snapshot from the
previous one plus the episodes once per compose interval.

Modules, one concept each:

    lws.py        taking markers (alone or atomically with vDisk snapshots); the source catalogue
    episode.py    reading and coalescing the records between two markers into block changes
    shipping.py   the source side of the wire: one episode = LWS_BEGIN .. LWS_COMMIT
    receive.py    the target side of the wire: verify, store the episode durably, acknowledge
    episode_file.py  the episode file format at the target
    compose.py    the remote side: restore points, composing vDisk snapshots, restoring at an LWS
    activate.py   failover at an LWS: choosing the point, composing it into a PD snapshot
    retention.py  what the source keeps for NearSync: the OpLog release floor and gc roots
    state.py      the per-(PD, site) state machine: seeding -> nearsync -> fallback -> seeding
    driver.py     one NearSync schedule run (called by the protection scheduler)
"""

from . import rows  # noqa: F401  (registers this layer's catalogue tables)
from .lws import LWS
from .state import NearSyncConfig

__all__ = ["LWS", "NearSyncConfig"]

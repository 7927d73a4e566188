"""The directory of a new cluster (docs/format.md has the byte-level formats):

    LOCK          flock()ed by the process that has the cluster open
    catalog.db    SQLite catalogue: meta, containers, vDisks, layers, snapshots, and the
                  tables the layers above register (sites, replicas, VMs, PDs, NearSync)
    catalog.gen   the catalogue's committed generation, two checksummed slots
    oplog/        OpLog segments (write-ahead log of small writes)
    extents/      extent groups, the extent-table checkpoint, the fingerprint index
    maps/         block-map layers (base + delta per layer)
"""

from __future__ import annotations

import os
import time
import uuid

from ..constants import CATALOG_FILE, CLUSTER_FORMAT_VERSION, EXTENT_DIR, MAP_DIR, OPLOG_DIR
from .catalog import Catalog, ContainerRow
from .extent_store import ExtentStore
from .fileutil import fsync_dir, make_private_dirs, open_private
from .group_backend import BackendConfig


def build_cluster_dir(directory: str, block_size: int, site_name: str,
                      backend: BackendConfig | None = None) -> None:  # fmt: skip
    """Lay out an empty cluster in `directory` (made here, owner-only), durably: every
    file and directory is fsynced before this returns; `backend`: where its extent store
    keeps sealed groups (None: local). The caller renames it into place."""
    make_private_dirs(directory)
    for sub in (OPLOG_DIR, EXTENT_DIR, MAP_DIR):
        make_private_dirs(os.path.join(directory, sub))
    # SQLite creates a new database 0644, then its -wal and -shm with the database's mode.
    os.close(open_private(os.path.join(directory, CATALOG_FILE), os.O_WRONLY))
    catalog = Catalog(os.path.join(directory, CATALOG_FILE), create=True)
    catalog.init_meta({
        "format_version": CLUSTER_FORMAT_VERSION,
        "block_size": block_size,
        "cluster_id": uuid.uuid4().hex,
        "site_name": site_name,
        "created_at": time.time(),
    })
    with catalog.transaction():
        catalog.insert(ContainerRow(0, "default", True, True, False))
    catalog.close()
    ExtentStore.open(os.path.join(directory, EXTENT_DIR), block_size, create=True,
                     backend=backend).close()
    for sub in (OPLOG_DIR, EXTENT_DIR, MAP_DIR, "."):
        fsync_dir(os.path.join(directory, sub))

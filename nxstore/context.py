"""The shared parts of one open cluster, handed to the objects that need them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .catalog import Catalog, ContainerRow
from .extent_store import ExtentStore
from .layers import LayerTree
from .oplog import OpLog


@dataclass
class ClusterContext:
    """Components of an open cluster.

    Lock order, always: a VDisk's lock, then `map_lock`. `map_lock` guards every
    block-map and layer-tree change and every ingest into the extent store, so
    gc (which holds it) sees a stable set of references.
    """

    path: str
    block_size: int
    catalog: Catalog
    oplog: OpLog
    store: ExtentStore
    tree: LayerTree
    containers: dict[int, ContainerRow]
    clock: Callable[[], float]
    map_lock: threading.RLock = field(default_factory=threading.RLock)
    #: drops layers no head or snapshot needs any more (set by the Cluster)
    prune: Callable[[], None] = lambda: None
    #: blocks a writer while undrained blocks hold more RAM than allowed (set by the Cluster)
    throttle: Callable[[], None] = lambda: None
    #: OpLog seq the drain may release up to at most (None = no limit): NearSync keeps the
    #: episodes not yet held by every target (set by nxstore.nearsync.retention)
    release_floor: Callable[[], int | None] = lambda: None
    #: extent ids gc must keep besides the block maps' (unshipped or uncomposed episodes)
    gc_roots: Callable[[], np.ndarray] = lambda: np.zeros(0, dtype=np.uint64)
    #: damage found while opening (recovery went on around it); scrub and fsck report it
    problems: list[str] = field(default_factory=list)

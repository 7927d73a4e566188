"""The shared parts of one open cluster, handed to the objects that need them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .catalog import Catalog, ContainerRow
from .extent_store import ExtentStore
from .layers import LayerTree
from .lockorder import Level, OrderedLock, ordered_lock
from .oplog import OpLog


@dataclass
class ClusterContext:
    """Components of an open cluster.

    `map_lock` guards every block-map and layer-tree change, every ingest into the
    extent store and every change of the cluster's set of vDisks, so gc and prune
    (which hold it) see a stable set of references. Its place in the lock
    hierarchy (after the registry and vDisk locks, before the catalogue's):
    nxstore.lockorder.
    """

    path: str
    block_size: int
    catalog: Catalog
    oplog: OpLog
    store: ExtentStore
    tree: LayerTree
    containers: dict[int, ContainerRow]
    clock: Callable[[], float]
    map_lock: OrderedLock = field(
        default_factory=lambda: ordered_lock(Level.MAP, "map_lock", reentrant=True))
    #: drops layers no head or snapshot needs any more (set by the Engine)
    prune: Callable[[], None] = lambda: None
    #: blocks a writer while undrained blocks hold more RAM than allowed (set by the Engine)
    throttle: Callable[[], None] = lambda: None
    #: OpLog seq the drain may release up to at most (None = no limit): the lowest of the
    #: floors registered with Engine.add_release_floor (NearSync keeps unshipped episodes)
    release_floor: Callable[[], int | None] = lambda: None
    #: extent ids gc must keep besides the block maps' (Engine.add_gc_roots: NearSync's
    #: unshipped or uncomposed episodes)
    gc_roots: Callable[[], np.ndarray] = lambda: np.zeros(0, dtype=np.uint64)
    #: damage found while opening (recovery went on around it); scrub and fsck report it
    problems: list[str] = field(default_factory=list)

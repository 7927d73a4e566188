"""The tree of block-map layers behind vDisks, snapshots and clones.

A vDisk's head is a mutable layer; a snapshot freezes it and the vDisk gets a
new empty head on top (redirect-on-write). A clone is a new head on a frozen
layer, a restore gives the vDisk a new head on the snapshot's layer. So layers
form a tree; this module keeps it (rows in the catalogue, arrays in the
MapStore, MapLayer objects cached in RAM) and keeps it small:

* `prune` deletes layers nothing needs (no vDisk head, no snapshot, no child)
  and folds a frozen layer nobody names into its only frozen child;
* `shortcut_for` bounds read depth: once a read would fall through more than
  CHAIN_COLLAPSE_DEPTH layers, the chain under a frozen layer is flattened into
  a shortcut layer and reads stop there. Frozen layers never change what they
  resolve to, so a shortcut never goes stale.

Callers hold the cluster's map lock around every call.
"""

from __future__ import annotations

import logging

import numpy as np

from ..constants import CHAIN_COLLAPSE_DEPTH
from .block_map import MapLayer, chain_lookup, chain_lookup_range, collapse, flatten
from .catalog import Catalog, LayerRow
from .map_store import MapStore

log = logging.getLogger(__name__)


class LayerTree:
    """Layer rows + their maps; see the module docstring."""

    def __init__(self, catalog: Catalog, store: MapStore, collapse_depth: int = CHAIN_COLLAPSE_DEPTH):
        self.catalog = catalog
        self.store = store
        self.collapse_depth = collapse_depth
        self.rows: dict[int, LayerRow] = {row.id: row for row in catalog.rows(LayerRow)}
        self._maps: dict[int, MapLayer] = {}
        self._applied: dict[int, int] = {}

    # -- access -------------------------------------------------------------
    def layer(self, layer_id: int) -> MapLayer:
        """The MapLayer of a layer (loaded on first use; Corruption if its files are bad)."""
        layer = self._maps.get(layer_id)
        if layer is None:
            layer, applied = self.store.load(layer_id)
            row = self.rows.get(layer_id)
            if row is None or row.frozen:
                layer.freeze()
            self._maps[layer_id] = layer
            self._applied[layer_id] = applied
        return layer

    def applied_seq(self, layer_id: int) -> int:
        """OpLog seq up to which the layer's persisted map is complete."""
        self.layer(layer_id)
        return max(self._applied[layer_id], self.rows[layer_id].created_seq)

    def path(self, top: int) -> list[int]:
        """Layer ids from `top` down to the root (no shortcuts)."""
        ids = []
        while top:
            ids.append(top)
            top = self.rows[top].parent
        return ids

    def chain(self, top: int) -> list[MapLayer]:
        """Layers a read of `top` consults, top first, ending at a shortcut if any."""
        layers = []
        while top:
            row = self.rows[top]
            if row.shortcut and layers:
                layers.append(self.layer(row.shortcut))
                return layers
            layers.append(self.layer(top))
            top = row.parent
        return layers

    def lookup(self, top: int, blocks: np.ndarray) -> np.ndarray:
        """Extent ids of `blocks` as seen from layer `top` (0 = zero block)."""
        return chain_lookup(self.chain(top), blocks)

    def lookup_range(self, top: int, first: int, count: int) -> np.ndarray:
        """lookup(top, blocks first .. first + count - 1), as a sequential read asks."""
        return chain_lookup_range(self.chain(top), first, count)

    def children(self, layer_id: int) -> list[int]:
        return [row.id for row in self.rows.values() if row.parent == layer_id]

    # -- changes (inside a catalogue transaction) ------------------------------
    def create(self, parent: int, created_seq: int) -> int:
        """A new empty mutable layer on `parent` (0 = root); returns its id."""
        row = self.catalog.insert(LayerRow(0, parent, False, 0, created_seq))
        self.rows[row.id] = row
        self._maps[row.id] = MapLayer()
        self._applied[row.id] = created_seq
        return row.id

    def freeze(self, layer_id: int) -> None:
        row = self.rows[layer_id]
        row.frozen = True
        self.catalog.update(row)
        self.layer(layer_id).freeze()
        self.store.seal(layer_id)  # no append will persist its watermark any more

    def persist(self, layer_id: int, blocks: np.ndarray, vals: np.ndarray, applied_seq: int) -> None:
        """Durably record map entries already applied to the in-memory layer."""
        self.store.append(layer_id, blocks, vals, applied_seq)
        self._applied[layer_id] = applied_seq
        self.store.maybe_compact(layer_id, self.layer(layer_id), applied_seq)

    def rewrite(self, layer_id: int, layer: MapLayer, applied_seq: int) -> None:
        """Replace a layer's whole map (durable on return)."""
        if self.rows[layer_id].frozen:
            layer.freeze()
        self.store.write_base(layer_id, layer, applied_seq)
        self._maps[layer_id] = layer
        self._applied[layer_id] = applied_seq

    # -- upkeep ---------------------------------------------------------------
    def prune(self, named: set[int]) -> list[tuple[int, int]]:
        """Drop layers nothing needs and fold unnamed frozen layers into their only
        frozen child. `named` = layers that are vDisk heads or snapshots.

        Returns (head, parent) pairs where an unnamed parent could be folded into
        a vDisk head; the VDisk does that itself because it owns the head's state.
        """
        foldable_heads = []
        changed = True
        while changed:
            changed = False
            for layer_id in sorted(self.rows):
                row = self.rows.get(layer_id)
                if row is None or layer_id in named or self._is_shortcut(layer_id):
                    continue
                kids = self.children(layer_id)
                if not kids:
                    self._drop(layer_id)
                    changed = True
                elif len(kids) == 1 and self.rows[kids[0]].frozen:
                    self._fold_into(layer_id, kids[0])
                    changed = True
                elif len(kids) == 1:
                    foldable_heads.append((kids[0], layer_id))
        return foldable_heads

    def fold_into_head(self, parent: int, head: int, merged: MapLayer, applied_seq: int) -> None:
        """Finish folding `parent` into mutable `head` whose merged map the caller built."""
        self.rewrite(head, merged, applied_seq)
        self._relink(parent, head)

    def _fold_into(self, parent: int, child: int) -> None:
        merged = collapse([self.layer(child), self.layer(parent)])
        # The child's map is rewritten first: with it durable, the child resolves
        # identically whether or not the catalogue still names `parent` below it.
        self.rewrite(child, merged, self.applied_seq(child))
        self._relink(parent, child)

    def _relink(self, parent: int, child: int) -> None:
        with self.catalog.transaction():
            row = self.rows[child]
            row.parent = self.rows[parent].parent
            self.catalog.update(row)
            self._drop(parent)
        log.debug("folded layer %d into %d", parent, child)

    def _drop(self, layer_id: int) -> None:
        row = self.rows.pop(layer_id)
        with self.catalog.transaction():
            self.catalog.delete(LayerRow, layer_id)
            if row.shortcut:
                self.catalog.delete(LayerRow, row.shortcut)
        for lid in (layer_id, row.shortcut):
            if lid:
                self.rows.pop(lid, None)
                self._maps.pop(lid, None)
                self._applied.pop(lid, None)
                # Only once the rows are gone for good: a crash inside an enclosing
                # transaction (a fold's relink) rolls them back, and a row whose
                # files are gone would read as an empty map.
                self.catalog.after_commit(lambda lid=lid: self.store.delete(lid))

    def _is_shortcut(self, layer_id: int) -> bool:
        return any(row.shortcut == layer_id for row in self.rows.values())

    def read_depth(self, top: int) -> int:
        return len(self.chain(top))

    def shortcut_for(self, top: int) -> int | None:
        """If reads of `top` fall through more than the collapse depth, flatten the
        chain below `top` into a shortcut on its parent; return the new shortcut id."""
        if self.read_depth(top) <= self.collapse_depth:
            return None
        target = self.rows[top].parent
        if not target or not self.rows[target].frozen or self.rows[target].shortcut:
            return None
        flat = flatten(self.chain(target), is_root=True)
        with self.catalog.transaction():
            shortcut = self.catalog.insert(LayerRow(0, 0, True, 0, 0))
            self.rows[shortcut.id] = shortcut
            self.rewrite(shortcut.id, flat, 0)
            row = self.rows[target]
            row.shortcut = shortcut.id
            self.catalog.update(row)
        log.info("collapsed the chain under layer %d into shortcut %d", target, shortcut.id)
        return shortcut.id

    def remove_orphans(self) -> int:
        """Delete map files no catalogue row names (left by a crash); return how many."""
        orphans = [lid for lid in self.store.layer_ids() if lid not in self.rows]
        for lid in orphans:
            self.store.delete(lid)
        return len(orphans)

    def all_extent_ids(self) -> np.ndarray:
        """Every extent id any layer references (for gc's mark phase)."""
        parts = [self.layer(lid).items()[1] for lid in self.rows]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)

    def map_bytes(self) -> tuple[int, int]:
        """(RAM bytes of loaded maps, disk bytes of all map files)."""
        return sum(m.nbytes() for m in self._maps.values()), self.store.disk_bytes()

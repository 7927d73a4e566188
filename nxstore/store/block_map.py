"""Block maps: layers of block index -> extent id, and operations on chains of them.

A vDisk's map is a chain of layers (redirect-on-write). In one layer, value 0
means "zero / trimmed here" and masks the layers below; a block absent from a
layer falls through to the next layer down; a block absent from every layer
reads as zero. A snapshot freezes the head layer, so every layer except a
vDisk's head is immutable. Which layer sits on which is the catalogue's
business (`layers.py`); every function here takes a chain as a list of
MapLayer objects, top first.

MapLayer keeps its entries like a small three-level LSM tree, so that small
frequent `set` batches stay cheap on a big layer: the main arrays; L1, a
sorted part of at most ``max(_RECENT_MIN, _RECENT_FACTOR * isqrt(len(main)))``
entries (64k at 1M); L0, a sorted part of at most _L0_MAX (512) entries that
each batch is merged into. L0 is merged into L1 when it overflows, L1 into
the main arrays when it does. Per 32-entry batch into a 1M-entry layer that
amortises to a few thousand element copies instead of a million; a lookup
checks the newest part first in effect (L0 over L1 over main). `freeze` and
`items` fold everything into the main arrays, so frozen layers are one pair
of sorted arrays.

The map primitives (merge, diff, lookup) are `nxstore.store.native`; there are no
per-block Python loops in this module. MapLayer is not thread-safe: the
caller serialises access (the cluster's map lock).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import isqrt

import numpy as np

from ..errors import InvalidArgument, ReadOnly
from . import native

_L0_MAX = 512  # entries; L0 is merged into L1 past this
_RECENT_MIN = 4096  # entries; L1 is never folded into the main arrays below this
_RECENT_FACTOR = 64  # L1 bound = 64 * isqrt(len(main)): 64k entries at 1M
_EMPTY = np.zeros(0, dtype=np.uint64)
_EMPTY.flags.writeable = False


def as_u64(a: object, what: str = "array") -> np.ndarray:
    """`a` as a contiguous 1-D uint64 array (no copy when it already is one)."""
    try:
        arr = np.asarray(a)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{what}: not an array of integers") from e
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype != np.uint64:
        if arr.size and arr.dtype.kind not in "iu":
            raise InvalidArgument(f"{what}: dtype {arr.dtype} is not an integer type")
        if arr.size and arr.dtype.kind == "i" and arr.min() < 0:
            raise InvalidArgument(f"{what}: negative entries")
        arr = arr.astype(np.uint64)
    return np.ascontiguousarray(arr)


def sorted_last_wins(blocks: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort a batch by block, keeping the last value given for a repeated block."""
    n = len(blocks)
    if n < 2 or bool(np.all(blocks[1:] > blocks[:-1])):
        return blocks, vals
    order = np.argsort(blocks, kind="stable")
    sb = blocks[order]
    last = np.empty(n, dtype=bool)
    last[-1] = True
    np.not_equal(sb[1:], sb[:-1], out=last[:-1])
    return sb[last], vals[order][last]


def _lookup(keys: np.ndarray, vals: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if not len(keys):
        return np.zeros(len(query), dtype=np.uint64), np.zeros(len(query), dtype=bool)
    v, f = native.map_lookup(keys, vals, query)
    return v, f.view(bool) if f.dtype == np.uint8 else f.astype(bool, copy=False)


def _merge(top: tuple[np.ndarray, np.ndarray], bot: tuple[np.ndarray, np.ndarray]):
    if not len(top[0]):
        return bot
    if not len(bot[0]):
        return top
    return native.map_merge(top[0], top[1], bot[0], bot[1])


def _merge_all(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Union of maps given top first, the upper one winning: a balanced pairwise
    merge, O(total entries * log(len(parts)))."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return _EMPTY, _EMPTY
    while len(parts) > 1:
        merged = [_merge(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        if len(parts) % 2:
            merged.append(parts[-1])
        parts = merged
    return parts[0]


class MapLayer:
    """One layer: sorted unique uint64 block indices -> uint64 extent ids.

    Value 0 is an entry like any other here ("zero / trimmed in this layer");
    the chain functions give it its masking meaning.
    """

    __slots__ = ("_keys", "_vals", "_parts", "_len", "_frozen")

    def __init__(self, keys: np.ndarray | None = None, vals: np.ndarray | None = None):
        """A mutable layer holding (keys, vals).

        Raises InvalidArgument unless keys are strictly ascending and as many as vals.
        The arrays are kept, not copied: do not modify them afterwards.
        """
        k = _EMPTY if keys is None else as_u64(keys, "keys")
        v = _EMPTY if vals is None else as_u64(vals, "vals")
        if len(k) != len(v):
            raise InvalidArgument(f"{len(k)} keys but {len(v)} values")
        if len(k) > 1 and not bool(np.all(k[1:] > k[:-1])):
            raise InvalidArgument("keys are not strictly ascending")
        self._set_main(k, v)
        self._frozen = False

    @classmethod
    def _trusted(cls, keys: np.ndarray, vals: np.ndarray) -> MapLayer:
        """A layer on arrays already known sorted, unique and uint64 (no checks)."""
        layer = cls.__new__(cls)
        layer._set_main(keys, vals)
        layer._frozen = False
        return layer

    def _set_main(self, keys: np.ndarray, vals: np.ndarray) -> None:
        self._keys, self._vals = keys, vals
        # recent parts: [L1 (medium), L0 (small, newest)]; a newer part wins
        self._parts = [(_EMPTY, _EMPTY), (_EMPTY, _EMPTY)]
        self._len: int | None = len(keys)  # None = not known since the last set

    # -- reads ----------------------------------------------------------------
    def lookup(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vals, found) for `blocks` (any order, repeats allowed).

        vals[i] is 0 where found[i] is False. Both arrays are new.
        """
        q = as_u64(blocks, "blocks")
        v, f = _lookup(self._keys, self._vals, q)
        for pk, pv in self._parts:
            if len(pk):
                rv, rf = _lookup(pk, pv, q)
                v = np.where(rf, rv, v)
                f |= rf
        return v, f

    def _lookup_in_range(self, q: np.ndarray, bounds: np.ndarray | None):
        """lookup(q) given bounds[0] <= q < bounds[1], or None when no key lies
        in that range: a folded (e.g. frozen) layer answers that from one
        vectorised binary search."""
        if bounds is None or len(self._parts[0][0]) or len(self._parts[1][0]):
            return self.lookup(q) if not self.is_empty() else None
        i, j = np.searchsorted(self._keys, bounds)
        if i == j:
            return None
        return _lookup(self._keys[i:j], self._vals[i:j], q)

    def fill_range(self, first: int, out: np.ndarray, found: np.ndarray) -> int:
        """For blocks first .. first + len(out) - 1 not yet `found` (bool, same
        length as `out`, uint64), set out[block - first] to this layer's entry
        and found, if it has one. Returns how many it set. A layer's parts are
        asked newest first, so a newer entry wins as in `lookup`."""
        n, end = 0, first + len(out)
        for k, v in (self._parts[1], self._parts[0], (self._keys, self._vals)):
            # a part whose keys all lie outside the range (often the recent ones) costs no call
            if len(k) and int(k[0]) < end and int(k[-1]) >= first:
                n += native.map_fill_range(k, v, first, out, found)
        return n

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, vals): every entry, keys strictly ascending. Read-only views."""
        self._fold()
        k, v = self._keys.view(), self._vals.view()
        k.flags.writeable = False
        v.flags.writeable = False
        return k, v

    def __len__(self) -> int:
        if self._len is None:
            self._push_l0()
            rk = self._parts[0][0]
            _, in_main = _lookup(self._keys, self._vals, rk)
            self._len = len(self._keys) + len(rk) - int(np.count_nonzero(in_main))
        return self._len

    def is_empty(self) -> bool:
        """len(self) == 0, in O(1)."""
        return not (len(self._keys) or len(self._parts[0][0]) or len(self._parts[1][0]))

    def nbytes(self) -> int:
        """RAM held by the entry arrays (16 bytes per entry, plus the recent parts)."""
        return (
            self._keys.nbytes + self._vals.nbytes + sum(k.nbytes + v.nbytes for k, v in self._parts)
        )

    @property
    def frozen(self) -> bool:
        return self._frozen

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "mutable"
        return f"<MapLayer {len(self)} entries, {state}>"

    # -- writes ---------------------------------------------------------------
    def set(self, blocks: np.ndarray, vals: np.ndarray) -> None:
        """Upsert a batch; where a block repeats in the batch the later entry wins.

        Raises ReadOnly if the layer is frozen, InvalidArgument on mismatched
        lengths or non-integer/negative input. Amortised cost: see the module
        docstring.
        """
        if self._frozen:
            raise ReadOnly("block map layer is frozen")
        b0 = as_u64(blocks, "blocks")
        v0 = as_u64(vals, "vals")
        if len(b0) != len(v0):
            raise InvalidArgument(f"{len(b0)} blocks but {len(v0)} values")
        if not len(b0):
            return
        b, v = sorted_last_wins(b0, v0)
        if b is b0:
            b, v = b.copy(), v.copy()  # never alias the caller's arrays
        if self.is_empty() and len(b) > _RECENT_MIN:
            self._set_main(b, v)  # bulk load of an empty layer
            return
        self._len = None
        if len(b) <= _L0_MAX:
            self._parts[1] = _merge((b, v), self._parts[1])
            if len(self._parts[1][0]) > _L0_MAX:
                self._push_l0()
        else:
            self._push_l0()
            self._parts[0] = _merge((b, v), self._parts[0])
        if len(self._parts[0][0]) > max(_RECENT_MIN, _RECENT_FACTOR * isqrt(len(self._keys))):
            self._fold()

    def _push_l0(self) -> None:
        """Merge L0 into L1."""
        if len(self._parts[1][0]):
            self._parts = [_merge(self._parts[1], self._parts[0]), (_EMPTY, _EMPTY)]

    def _fold(self) -> None:
        """Merge the recent parts into the main arrays."""
        self._push_l0()
        if len(self._parts[0][0]):
            self._set_main(*_merge(self._parts[0], (self._keys, self._vals)))

    def freeze(self) -> None:
        """Make the layer immutable (idempotent); later `set` raises ReadOnly. O(1):
        the recent parts are folded lazily, by the first `items()` (reads handle
        unfolded parts), so a snapshot of a vDisk with a million mapped blocks costs
        what one with ten does."""
        self._frozen = True


Chain = Sequence[MapLayer]


def chain_lookup(layers: Chain, blocks: np.ndarray) -> np.ndarray:
    """Extent ids of `blocks` (any order, repeats allowed) as the chain resolves
    them, top layer first; 0 = zero block (masked by a 0 entry, or unmapped).
    Layers below the point where every block is found are not consulted."""
    q = as_u64(blocks, "blocks")
    if len(layers) == 1:  # nothing to fall through to: no bounds, no pending set
        return layers[0].lookup(q)[0]
    out = np.zeros(len(q), dtype=np.uint64)
    if not len(q):
        return out
    hi = int(q.max())
    # [min, max + 1): lets a layer with no key in range be skipped (None: no bound)
    bounds = np.array([q.min(), hi + 1], dtype=np.uint64) if hi < 2**64 - 1 else None
    pending = None  # indices of q still unresolved; None = all of them
    for layer in layers:
        sub = q if pending is None else q[pending]
        found = layer._lookup_in_range(sub, bounds)
        if found is None:
            continue
        v, f = found
        if pending is None:
            out[f] = v[f]
            pending = np.flatnonzero(~f)
        else:
            out[pending[f]] = v[f]
            pending = pending[~f]
        if not len(pending):
            break
    return out


def chain_lookup_range(layers: Chain, first: int, count: int) -> np.ndarray:
    """chain_lookup(layers, blocks first .. first + count - 1), the query of a
    contiguous read: each layer fills in the blocks still unresolved, with no
    query array, bounds or index arrays. Raises InvalidArgument for a range
    outside 0 .. 2**64 - 1."""
    if first < 0 or count < 0 or first + count > 2**64:
        raise InvalidArgument(f"block range {first} + {count} is outside 0 .. 2**64 - 1")
    out = np.zeros(count, dtype=np.uint64)
    found = np.zeros(count, dtype=bool)
    left = count
    for layer in layers:
        if not left:
            break
        left -= layer.fill_range(first, out, found)
    return out


def flatten(layers: Chain, *, is_root: bool) -> MapLayer:
    """One new mutable layer that resolves every block as the chain does.

    is_root=True: the chain ends at the root, so 0 entries are dropped (absent
    reads as zero too). is_root=False: the result will sit on a further parent,
    so 0 entries are kept because they mask it. Cost O(entries * log(depth)).
    """
    k, v = _merge_all([layer.items() for layer in layers])
    if is_root and len(k):
        keep = v != 0
        if not bool(keep.all()):
            k, v = k[keep], v[keep]
    return MapLayer._trusted(k, v)


def collapse(layers: Chain, *, is_root: bool = False) -> MapLayer:
    """Merge a run of adjacent layers (top first) into one new mutable layer that,
    put in their place, resolves every block exactly as the run did.

    0 entries are kept (the run may sit on a parent) unless is_root=True says
    the run ends at the root. The caller freezes the result if the run's top
    layer was frozen.
    """
    return flatten(layers, is_root=is_root)


def written_blocks(layers: Chain) -> np.ndarray:
    """Sorted union of the keys of `layers`: every block written (or trimmed)
    in them, i.e. "written since" the layer below the run."""
    parts = [layer.items()[0] for layer in layers]
    k, _ = _merge_all([(p, p) for p in parts])
    return k


def changed_blocks(
    chain_a: Chain, chain_b: Chain, common: int, *, exact: bool = True
) -> np.ndarray:
    """Blocks that may differ between two chains sharing their bottom `common` layers.

    chain_a and chain_b are top first; their last `common` layers must be the
    very same MapLayer objects (the common ancestor and everything below it).
    Only the layers above the common part are scanned, so the cost is
    proportional to the entries written above it, never to the disk size.

    exact=True: returns the sorted blocks whose resolved value (chain_lookup)
    differs between the two chains -- precisely those: applying chain_b's value
    of every returned block onto chain_a's resolved map reproduces chain_b's,
    and no returned block resolves equally on both sides. Blocks written on
    one side only are checked against the common part (one lookup per such
    block), so rewriting a block with its old extent id, or trimming a block
    that already read as zero, is not a change.

    exact=False: "written since" -- the sorted union of the keys of every layer
    above the common part on either side (no lookups at all). A superset of
    the exact answer.

    Raises InvalidArgument if `common` is out of range or the common layers
    are not identical objects.
    """
    if not 0 <= common <= min(len(chain_a), len(chain_b)):
        raise InvalidArgument(f"common={common} for chains of {len(chain_a)} and {len(chain_b)}")
    above_a = list(chain_a[: len(chain_a) - common])
    above_b = list(chain_b[: len(chain_b) - common])
    shared = list(chain_a[len(chain_a) - common :])
    if any(x is not y for x, y in zip(shared, chain_b[len(chain_b) - common :], strict=True)):
        raise InvalidArgument("the common layers of the two chains are not the same layers")
    if not exact:
        return written_blocks(above_a + above_b)
    fa = _merge_all([layer.items() for layer in above_a])
    fb = _merge_all([layer.items() for layer in above_b])
    if not len(fa[0]) and not len(fb[0]):
        return _EMPTY.copy()
    d = native.map_diff(fa[0], fa[1], fb[0], fb[1])
    if not len(d):
        return d
    va, in_a = _lookup(fa[0], fa[1], d)
    vb, in_b = _lookup(fb[0], fb[1], d)
    one_sided = ~(in_a & in_b)
    if bool(one_sided.any()) and shared:
        base = chain_lookup(shared, d[one_sided])
        va = va.copy()
        vb = vb.copy()
        va[one_sided & ~in_a] = base[~in_a[one_sided]]
        vb[one_sided & ~in_b] = base[~in_b[one_sided]]
    return d[va != vb]

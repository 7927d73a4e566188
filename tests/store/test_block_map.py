"""MapLayer and the chain operations against plain dict models."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nxstore.errors import InvalidArgument, ReadOnly
from nxstore.store import block_map
from nxstore.store.block_map import (
    MapLayer,
    chain_lookup,
    chain_lookup_range,
    changed_blocks,
    collapse,
    flatten,
    written_blocks,
)

U64 = np.uint64
SPACE = 80  # block indices the chain tests draw from


def arr(xs) -> np.ndarray:
    return np.asarray(list(xs), dtype=U64)


def layer_of(d: dict[int, int]) -> MapLayer:
    ks = sorted(d)
    return MapLayer(arr(ks), arr(d[k] for k in ks))


def resolve(model: list[dict[int, int]], block: int) -> int:
    for d in model:
        if block in d:
            return d[block]
    return 0


def resolved_map(model: list[dict[int, int]]) -> dict[int, int]:
    """Every block the chain maps to a non-zero extent."""
    out = {}
    for b in range(SPACE):
        v = resolve(model, b)
        if v:
            out[b] = v
    return out


def check_layer(layer: MapLayer, model: dict[int, int], queries: list[int]) -> None:
    k, v = layer.items()
    assert k.tolist() == sorted(model)
    assert v.tolist() == [model[x] for x in sorted(model)]
    assert len(layer) == len(model)
    vals, found = layer.lookup(arr(queries))
    assert found.dtype == bool
    assert found.tolist() == [q in model for q in queries]
    assert vals.tolist() == [model.get(q, 0) for q in queries]


# -- MapLayer -------------------------------------------------------------------

batches = st.lists(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 2**64 - 1)), min_size=0, max_size=40),
    max_size=25,
)


@pytest.fixture
def small_recent(monkeypatch):
    """Fold the recent part after a handful of entries so tests cross the threshold."""
    monkeypatch.setattr(block_map, "_L0_MAX", 2)
    monkeypatch.setattr(block_map, "_RECENT_MIN", 3)
    monkeypatch.setattr(block_map, "_RECENT_FACTOR", 1)


def _run_batches(data, queries):
    layer = MapLayer()
    model: dict[int, int] = {}
    for batch in data:
        layer.set(arr(b for b, _ in batch), arr(v for _, v in batch))
        for b, v in batch:
            model[b] = v  # later entries in the batch win
        vals, found = layer.lookup(arr(queries))
        assert vals.tolist() == [model.get(q, 0) for q in queries]
        assert found.tolist() == [q in model for q in queries]
        assert len(layer) == len(model)
        out, found = np.zeros(290, U64), np.zeros(290, bool)  # blocks 5..294, parts unfolded
        assert layer.fill_range(5, out, found) == sum(5 <= b < 295 for b in model)
        assert out.tolist() == [model.get(b, 0) for b in range(5, 295)]
        assert found.tolist() == [b in model for b in range(5, 295)]
    check_layer(layer, model, queries)


@given(batches, st.lists(st.integers(0, 310), max_size=50))
def test_layer_matches_dict(data, queries):
    _run_batches(data, queries)


@given(batches, st.lists(st.integers(0, 310), max_size=50))
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_layer_matches_dict_across_folds(small_recent, data, queries):  # fixture is stateless
    _run_batches(data, queries)


def test_large_layer_many_small_batches():
    rng = np.random.default_rng(7)
    keys = np.unique(rng.integers(0, 4_000_000, 300_000, dtype=np.uint64))
    vals = rng.integers(1, 2**63, len(keys), dtype=np.uint64)
    layer = MapLayer(keys, vals)
    model = dict(zip(keys.tolist(), vals.tolist(), strict=True))
    for i in range(3000):  # 96k entries: crosses the fold threshold many times
        b = rng.integers(0, 4_000_000, 32, dtype=np.uint64)
        v = rng.integers(0, 2**63, 32, dtype=np.uint64) if i % 7 else np.zeros(32, U64)
        layer.set(b, v)
        model.update(zip(b.tolist(), v.tolist(), strict=True))
    assert len(layer) == len(model)
    q = rng.integers(0, 4_000_000, 20_000, dtype=np.uint64)
    got, found = layer.lookup(q)
    assert got.tolist() == [model.get(x, 0) for x in q.tolist()]
    assert found.tolist() == [x in model for x in q.tolist()]
    k, v = layer.items()
    assert k.tolist() == sorted(model)
    assert v.tolist() == [model[x] for x in k.tolist()]


def test_bulk_set_into_empty_layer_and_aliasing():
    b = np.arange(10_000, dtype=U64)[::-1].copy()
    v = b + U64(1)
    layer = MapLayer()
    layer.set(b, v)
    b[:] = 0  # the layer must not alias the caller's arrays
    v[:] = 0
    k, vals = layer.items()
    assert k.tolist() == list(range(10_000))
    assert (vals == k + U64(1)).all()
    small = arr([5, 6])
    layer.set(small, arr([1, 2]))
    small[:] = 9
    assert layer.lookup(arr([5, 6]))[0].tolist() == [1, 2]


def test_freeze_and_read_only():
    layer = layer_of({1: 2})
    layer.set(arr([3]), arr([4]))
    layer.freeze()
    layer.freeze()  # idempotent
    assert layer.frozen
    with pytest.raises(ReadOnly):
        layer.set(arr([5]), arr([6]))
    k, v = layer.items()
    assert k.tolist() == [1, 3] and v.tolist() == [2, 4]
    with pytest.raises(ValueError):
        k[0] = 7  # items() are read-only views
    assert layer.nbytes() == 32


def test_bad_input():
    with pytest.raises(InvalidArgument):
        MapLayer(arr([2, 1]), arr([1, 1]))
    with pytest.raises(InvalidArgument):
        MapLayer(arr([1, 1]), arr([1, 1]))
    with pytest.raises(InvalidArgument):
        MapLayer(arr([1]), arr([1, 2]))
    layer = MapLayer()
    with pytest.raises(InvalidArgument):
        layer.set(arr([1, 2]), arr([1]))
    with pytest.raises(InvalidArgument):
        layer.set(np.array([-1]), np.array([1]))
    with pytest.raises(InvalidArgument):
        layer.set(np.array([1.5]), np.array([1]))
    layer.set(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    assert len(layer) == 0
    assert layer.lookup(np.array([], dtype=U64))[0].shape == (0,)


# -- chains ---------------------------------------------------------------------

layer_dicts = st.dictionaries(
    st.integers(0, SPACE - 1), st.sampled_from([0, 0, 1, 2, 3, 2**64 - 1]), max_size=30
)
chains = st.lists(layer_dicts, min_size=0, max_size=7)
ALL = arr(range(SPACE))


def build(model):
    layers = [layer_of(d) for d in model]
    for layer in layers[1:]:
        layer.freeze()
    return layers


@given(chains, st.lists(st.integers(0, SPACE + 5), max_size=60))
def test_chain_lookup(model, queries):
    got = chain_lookup(build(model), arr(queries))
    assert got.tolist() == [resolve(model, q) for q in queries]


@given(chains, st.integers(0, SPACE + 5), st.integers(0, SPACE))
def test_chain_lookup_range_matches_chain_lookup(model, first, count):
    layers = build(model)
    want = chain_lookup(layers, arr(range(first, first + count)))
    assert chain_lookup_range(layers, first, count).tolist() == want.tolist()


@given(chains, layer_dicts)
def test_flatten(model, parent):
    layers = build(model)
    root = flatten(layers, is_root=True)
    k, v = root.items()
    assert dict(zip(k.tolist(), v.tolist(), strict=True)) == resolved_map(model)
    # not at the root: 0 entries must still mask the parent
    kept = flatten(layers, is_root=False)
    assert not kept.frozen
    on_parent = chain_lookup([kept, layer_of(parent)], ALL)
    assert on_parent.tolist() == [resolve([*model, parent], b) for b in range(SPACE)]


@given(chains, st.integers(0, 7), st.integers(0, 7))
def test_collapse_run(model, i, j):
    i, j = sorted((min(i, len(model)), min(j, len(model))))
    layers = build(model)
    merged = collapse(layers[i:j]) if j > i else None
    new_chain = layers[:i] + ([merged] if merged is not None else []) + layers[j:]
    assert chain_lookup(new_chain, ALL).tolist() == chain_lookup(layers, ALL).tolist()
    whole = collapse(layers, is_root=True)
    assert chain_lookup([whole], ALL).tolist() == [resolve(model, b) for b in range(SPACE)]


@given(chains)
def test_written_blocks(model):
    got = written_blocks(build(model))
    assert got.tolist() == sorted(set().union(*model))


@given(chains, chains, chains)
@settings(max_examples=300)
def test_changed_blocks(common_m, above_a_m, above_b_m):
    common = build(common_m)
    chain_a = build(above_a_m) + common
    chain_b = build(above_b_m) + common
    model_a, model_b = above_a_m + common_m, above_b_m + common_m
    n = len(common)
    got = changed_blocks(chain_a, chain_b, n)
    got_list = got.tolist()
    assert got_list == sorted(set(got_list))
    # every returned block really differs
    for b in got_list:
        assert resolve(model_a, b) != resolve(model_b, b)
    # applying B's values of the returned blocks onto A reproduces B
    patched = {b: resolve(model_a, b) for b in range(SPACE)}
    patched.update({b: resolve(model_b, b) for b in got_list})
    assert patched == {b: resolve(model_b, b) for b in range(SPACE)}
    # symmetric
    assert changed_blocks(chain_b, chain_a, n).tolist() == got_list
    # "written since": the union of the keys above the common part, a superset
    since = changed_blocks(chain_a, chain_b, n, exact=False).tolist()
    assert since == sorted(set().union(*above_a_m, *above_b_m))
    assert set(got_list) <= set(since)


def test_changed_blocks_ignores_rewrites_of_the_same_value():
    base = layer_of({1: 10, 2: 20})
    base.freeze()
    a = layer_of({1: 10, 3: 0, 4: 7})  # same value, trim of an unmapped block, real write
    b = layer_of({})
    assert changed_blocks([a, base], [b, base], 1).tolist() == [4]
    assert changed_blocks([a, base], [b, base], 1, exact=False).tolist() == [1, 3, 4]
    assert changed_blocks([a, base], [base], 1).tolist() == [4]


def test_changed_blocks_bad_common():
    base = layer_of({1: 1})
    other = layer_of({1: 1})
    with pytest.raises(InvalidArgument):
        changed_blocks([base], [other], 1)
    with pytest.raises(InvalidArgument):
        changed_blocks([base], [base], 2)
    with pytest.raises(InvalidArgument):
        changed_blocks([base], [base], -1)


def test_extreme_block_indices():
    top = MapLayer()
    top.set(arr([2**64 - 1, 0]), arr([5, 6]))
    base = layer_of({2**64 - 2: 7, 2**64 - 1: 8})
    base.freeze()
    q = arr([2**64 - 1, 2**64 - 2, 0, 1])
    assert chain_lookup([top, base], q).tolist() == [5, 7, 6, 0]
    assert chain_lookup([top, base], q[1:2]).tolist() == [7]
    assert chain_lookup([base], arr([])).tolist() == []
    assert chain_lookup_range([top, base], 2**64 - 3, 3).tolist() == [0, 7, 5]
    assert chain_lookup_range([top, base], 0, 2).tolist() == [6, 0]
    with pytest.raises(InvalidArgument):
        chain_lookup_range([top, base], 2**64 - 1, 2)

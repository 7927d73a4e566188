"""Hypothesis: random writes, trims, bypass writes, vDisk snapshots and drains interleaved with
NearSync runs (one LWS each, composed snapshots now and then); every restore point the remote
lists reads exactly as the source did at that point."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings
from ns_helpers import BS, InProcessDaemon, protect, tick

import nxstore

SIZE = 64 * BS
op = st.one_of(
    st.tuples(st.just("write"), st.integers(0, SIZE - 1), st.integers(1, 3 * BS),
              st.integers(0, 255)),
    st.tuples(st.just("bypass"), st.integers(0, 40), st.integers(64, 80), st.integers(0, 255)),
    st.tuples(st.just("trim"), st.integers(0, SIZE - 1), st.integers(1, 4 * BS), st.just(0)),
    st.tuples(st.just("lws"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("snapshot"), st.just(0), st.just(0), st.just(0)),
    st.tuples(st.just("drain"), st.just(0), st.just(0), st.just(0)),
)


def fill(seed: int, n: int) -> bytes:
    return bytes((seed + i * 31) % 251 for i in range(n))


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(op, min_size=5, max_size=25))
def test_every_restore_point_equals_the_model(tmp_path_factory, clock, ops):
    # The fake clock is shared by the examples: it only moves forward.
    tmp = tmp_path_factory.mktemp("ns")
    with nxstore.Cluster.create(str(tmp / "b"), block_size=BS, background=False) as b:
        target = InProcessDaemon(b)
        try:
            with nxstore.Cluster.create(str(tmp / "a"), block_size=BS, background=False,
                                        clock=clock) as a:
                a.configure_nearsync(compose_every=4.0)
                v, w = a.create_vdisk("v", SIZE), a.create_vdisk("w", 8 * BS)
                pd = protect(a, "b", target.address, [v, w])
                images = {}  # source time -> (image of v, image of w)
                for kind, x, n, seed in [("lws", 0, 0, 0), *ops, ("lws", 0, 0, 0)]:
                    if kind == "write":
                        v.write(x, fill(seed, min(n, SIZE - x)))
                        w.write(x % (8 * BS), fill(seed + 1, min(n, 8 * BS - x % (8 * BS))))
                    elif kind == "bypass":
                        v.write(x * BS // 2, fill(seed, min(n * BS, SIZE - x * BS // 2)))
                    elif kind == "trim":
                        v.trim(x, min(n, SIZE - x))
                    elif kind == "snapshot":
                        v.snapshot(f"s{len(v.snapshots())}")
                    elif kind == "drain":
                        a.drain()
                    else:
                        images[clock() + 1] = (v.read(0, SIZE), w.read(0, 8 * BS))
                        runs = tick(a, clock)
                        assert all(r.ok for r in runs), runs
                assert pd.replication_state()["b"].state == "nearsync"
            points = b.restore_points("pd")
            kinds = {p.kind for p in points}
            assert kinds == {"snapshot", "lws"}
            for i, point in enumerate(points):
                if point.created_at not in images:
                    continue  # the first seed snapshot: before the model starts
                made = {vd.name: vd for vd in b.restore_point(point, f"r{i}-")}
                want_v, want_w = images[point.created_at]
                assert made[f"r{i}-v"].read(0, SIZE) == want_v, point
                assert made[f"r{i}-w"].read(0, 8 * BS) == want_w, point
            assert b.scrub() == []
        finally:
            target.close()

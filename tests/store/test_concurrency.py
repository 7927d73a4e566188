"""Several threads on one cluster: different vDisks, one vDisk, with drains, gc and
snapshots running at the same time. Final images must equal what each thread wrote."""

from __future__ import annotations

import random
import threading

import nxstore

DISK = 4 << 20
THREADS = 4


def _writer(vd: nxstore.VDisk, lane: int, lanes: int, seed: int, image: bytearray,
            errors: list[BaseException]) -> None:
    """Write random sizes (small, unaligned, large aligned) inside this thread's lane."""
    rng = random.Random(seed)
    lane_size = len(image) // lanes
    base = lane * lane_size
    try:
        for i in range(120):
            length = rng.choice([1, 100, 4096, 5000, 300_000])
            length = min(length, lane_size)
            off = base + rng.randrange(0, lane_size - length + 1)
            if length >= 262_144:
                off -= off % 4096
            data = rng.randbytes(length)
            vd.write(off, data)
            image[off:off + length] = data
            if i % 10 == 9:
                vd.flush()
            if i % 17 == 0:
                vd.trim(off, min(length, 8192))
                image[off:off + min(length, 8192)] = bytes(min(length, 8192))
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def _upkeep(c: nxstore.Cluster, vds: list[nxstore.VDisk], stop: threading.Event,
            errors: list[BaseException]) -> None:
    n = 0
    try:
        while not stop.is_set():
            c.drain()
            c.gc()
            vds[n % len(vds)].snapshot(f"s{n}")
            n += 1
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def test_threads_on_one_and_several_vdisks(make_cluster) -> None:
    c = make_cluster(block_size=4096, background=True)
    shared = c.create_vdisk("shared", DISK)
    own = [c.create_vdisk(f"own{i}", DISK) for i in range(2)]
    shared_image = bytearray(DISK)
    own_images = [bytearray(DISK) for _ in own]
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_writer, args=(shared, i, THREADS, i, shared_image, errors))
               for i in range(THREADS)]
    threads += [threading.Thread(target=_writer, args=(vd, 0, 1, 100 + i, img, errors))
                for i, (vd, img) in enumerate(zip(own, own_images, strict=True))]
    stop = threading.Event()
    upkeep = threading.Thread(target=_upkeep, args=(c, [shared, *own], stop, errors))
    upkeep.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    upkeep.join()
    assert not errors, errors
    assert shared.read(0, DISK) == bytes(shared_image)
    for vd, img in zip(own, own_images, strict=True):
        assert vd.read(0, DISK) == bytes(img)
    for vd in (shared, *own):
        vd.flush()
    path = c.path
    c.close()
    with nxstore.Cluster.open(path, background=False) as c2:
        assert c2.vdisk("shared").read(0, DISK) == bytes(shared_image)
        for i, img in enumerate(own_images):
            assert c2.vdisk(f"own{i}").read(0, DISK) == bytes(img)
        assert c2.scrub() == []


def test_dirty_ram_is_capped(make_cluster) -> None:
    for background in (False, True):
        c = make_cluster(name=f"c{background}", block_size=4096, background=background)
        c._dirty_cap = 64 * 4096  # tiny, so writers must wait for (or do) drains
        vd = c.create_vdisk("v", DISK)
        rng = random.Random(3)
        image = bytearray(DISK)
        peak = 0
        for _ in range(2000):
            off = rng.randrange(0, DISK - 100)
            data = rng.randbytes(100)
            vd.write(off, data)
            image[off:off + 100] = data
            peak = max(peak, vd.dirty_bytes)
        assert peak <= c._dirty_cap + 2 * 2 * 4096  # one write may overshoot by its blocks
        assert vd.read(0, DISK) == bytes(image)

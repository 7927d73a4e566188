"""NBD export benchmarks of issue 16 (run: pytest benchmarks/bench_nbd.py --benchmark-only).

The same clients against two servers in the same run: `nxstore nbd` (a vDisk of a 4 KiB-block
cluster, in its own process, on a Unix socket) and nbdkit's built-in `memory` plugin (C, RAM
only: the ceiling). Target: >= 50% of the memory plugin on each figure.

1. qemu-img convert of 1 GiB of incompressible data into the export (MB/s);
2. qemu-img convert of the export out to a raw file (MB/s), after 1.;
3. fio --ioengine=nbd 4 KiB random writes at queue depth 16 (IOPS, 10 s);
4. fio 4 KiB random reads at queue depth 16 over the written 1 GiB (IOPS, 10 s);
5. for scale, the engine without NBD: VDisk.write of the image in 2 MiB pieces and 4 KiB
   random VDisk.write/read calls in this process, one thread (the figures above cannot beat
   these: the difference is what NBD costs).

nbdkit, fio and qemu-img are required: the benchmark fails if one is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _util import GiB, random_bytes, scaled, scratch_dir
from conftest import report

import nxstore

IMAGE_BYTES = scaled(GiB)
FIO_SECONDS = 10
QUEUE_DEPTH = 16
READY_TIMEOUT_S = 60.0
_CEILING: dict[str, float] = {}  # the memory plugin's figure, per case


class Servers:
    """Both servers and the source image, for the whole module."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.image = os.path.join(root, "image.raw")
        random_bytes(IMAGE_BYTES, seed=16).tofile(self.image)
        path = os.path.join(root, "cl")
        with nxstore.Cluster.create(path, block_size=4096, background=False) as c:
            c.create_vdisk("disk", IMAGE_BYTES)
        self.nx = subprocess.Popen(
            [sys.executable, "-m", "nxstore.cli", "nbd", path, "disk", "--unix",
             os.path.join(root, "nx.sock")], stdout=subprocess.PIPE, text=True)
        self.uris = {"nxstore": self.nx.stdout.readline().strip()}
        assert self.uris["nxstore"].startswith("nbd+unix:"), "nxstore nbd did not start"
        pidfile = os.path.join(root, "nbdkit.pid")
        self.kit = subprocess.Popen(["nbdkit", "-f", "--exit-with-parent", "-U",
                                     os.path.join(root, "kit.sock"), "-P", pidfile, "memory",
                                     str(IMAGE_BYTES)])
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not (os.path.exists(pidfile) and Path(pidfile).read_text().strip()):
            assert self.kit.poll() is None and time.monotonic() < deadline, "nbdkit did not start"
            time.sleep(0.01)
        self.uris["memory"] = f"nbd+unix:///?socket={root}/kit.sock"

    def close(self) -> None:
        self.nx.send_signal(signal.SIGTERM)
        self.nx.wait(READY_TIMEOUT_S)
        self.kit.terminate()
        self.kit.wait(READY_TIMEOUT_S)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with scratch_dir("nbd") as root:
        s = Servers(root)
        try:
            yield s
        finally:
            s.close()


def _convert_in(s: Servers, server: str) -> None:
    subprocess.run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", s.image,
                    s.uris[server]], check=True)


def _convert_out(s: Servers, server: str) -> None:
    out = os.path.join(s.root, "out.raw")
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", s.uris[server], out],
                   check=True)
    os.unlink(out)


def _fio(s: Servers, server: str, rw: str) -> float:
    done = subprocess.run(
        ["fio", "--name=bench", "--ioengine=nbd", f"--uri={s.uris[server]}", f"--rw={rw}",
         "--bs=4k", f"--iodepth={QUEUE_DEPTH}", f"--size={IMAGE_BYTES}", "--time_based",
         f"--runtime={FIO_SECONDS}", "--output-format=json"],
        check=True, capture_output=True, text=True)
    job = json.loads(done.stdout[done.stdout.index("{"):])["jobs"][0]
    return float(job["write" if "write" in rw else "read"]["iops"])


@pytest.mark.parametrize("server", ["memory", "nxstore"])  # the ceiling first
@pytest.mark.parametrize("case", ["convert-in", "convert-out"])
def test_qemu_img_convert(benchmark, servers, case, server):
    fn = _convert_in if case == "convert-in" else _convert_out
    benchmark.pedantic(fn, args=(servers, server), rounds=1, iterations=1)
    rate = report(benchmark, f"qemu-img {case} 1 GiB, {server}", IMAGE_BYTES, "MB/s",
                  _CEILING.get(case), "nbdkit memory", uptime=os.getloadavg()[0])
    if server == "memory" and rate:
        _CEILING[case] = rate


@pytest.mark.parametrize("server", ["memory", "nxstore"])
@pytest.mark.parametrize("rw", ["randwrite", "randread"])
def test_fio_4k_qd16(benchmark, servers, rw, server):
    iops: list[float] = []
    benchmark.pedantic(lambda: iops.append(_fio(servers, server, rw)), rounds=1, iterations=1)
    report(benchmark, f"fio 4k {rw} QD{QUEUE_DEPTH}, {server}", iops[0], "IOPS",
           _CEILING.get(rw), "nbdkit memory", seconds=1, load=os.getloadavg()[0])
    if server == "memory":
        _CEILING[rw] = iops[0]


def _engine_run(vd: nxstore.VDisk, data: memoryview, case: str) -> int:
    """One timed run of `case` on `vd`: bytes written, or calls made in FIO_SECONDS."""
    piece = 2 << 20
    if case == "write 2 MiB":
        for off in range(0, IMAGE_BYTES, piece):
            vd.write(off, data[off:off + piece])
        vd.flush()
        return IMAGE_BYTES
    offsets = (np.random.default_rng(5).integers(0, IMAGE_BYTES // 4096, 1 << 16)
               * 4096).tolist()
    deadline, n = time.perf_counter() + FIO_SECONDS, 0
    while time.perf_counter() < deadline:
        for off in offsets[n % len(offsets):][:1024]:
            if case == "randwrite 4k":
                vd.write(off, data[off:off + 4096])
            else:
                vd.read(off, 4096)
        n += 1024
    return n


@pytest.mark.parametrize("case", ["write 2 MiB", "randwrite 4k", "randread 4k"])
def test_engine_without_nbd(benchmark, case):
    with scratch_dir("nbd-engine") as root, \
            nxstore.Cluster.create(os.path.join(root, "c"), block_size=4096) as c:
        vd = c.create_vdisk("disk", IMAGE_BYTES)
        data = memoryview(random_bytes(IMAGE_BYTES, seed=16))
        if case == "randread 4k":
            _engine_run(vd, data, "write 2 MiB")
        done: list[int] = []
        benchmark.pedantic(lambda: done.append(_engine_run(vd, data, case)), rounds=1,
                           iterations=1)
    if case == "write 2 MiB":
        report(benchmark, "engine VDisk.write 1 GiB (2 MiB pieces)", done[0], "MB/s",
               load=os.getloadavg()[0])
    else:
        report(benchmark, f"engine VDisk {case} (1 thread)", done[0], "ops/s",
               seconds=FIO_SECONDS, load=os.getloadavg()[0])

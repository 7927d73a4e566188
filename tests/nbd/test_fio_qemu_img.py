"""fio (libnbd engine) random writes verified by crc32c, and qemu-img convert in and out of an
export: byte-identical raw round trips, qcow2 in and raw out, `nxstore import/export` of
qcow2/vmdk/vhdx. Both client tests also run against the nbdkit reference."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from nbd_helpers import NXSTORE, MiB, need, run

from nxstore.errors import FormatError, OutOfRange

GiB = 1 << 30


def sample_image(path, size: int, seed: int = 7) -> None:
    """An image with random data, compressible text, repeated (dedupable) blocks and holes."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        piece = 4 * MiB
        for i, off in enumerate(range(0, size, piece * 2)):  # every other piece stays a hole
            n = min(piece, size - off)
            if i % 3 == 0:
                data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            elif i % 3 == 1:
                data = (b"line of text %d\n" % i * (n // 16 + 1))[:n]
            else:
                data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes() * (n // 4096)
            f.seek(off)
            f.write(data)


def test_fio_random_writes_verify_crc32c(any_server, tmp_path):
    need("fio")
    uri = any_server(64 * MiB)
    done = run("fio", "--name=verify", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite",
               "--bs=4k", "--iodepth=16", "--size=64M", "--verify=crc32c", "--do_verify=1",
               "--verify_fatal=1", "--output-format=json", cwd=tmp_path)  # its state file
    out = json.loads(done.stdout[done.stdout.index("{"):])
    job = out["jobs"][0]
    assert job["error"] == 0
    assert job["write"]["total_ios"] == 64 * MiB // 4096
    assert job["read"]["total_ios"] == 64 * MiB // 4096  # every block read back and verified


def _round_trip(uri: str, tmp_path, size: int) -> None:
    src, back = tmp_path / "in.raw", tmp_path / "out.raw"
    sample_image(src, size)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", uri, back)
    run("cmp", src, back)
    os.unlink(back)


def test_qemu_img_round_trip_of_1_gib_is_byte_identical(any_server, tmp_path):
    need("qemu-img", "cmp")
    _round_trip(any_server(GiB), tmp_path, GiB)


def test_qcow2_in_raw_out_through_the_cli(tmp_path):
    """`nxstore import` probes qcow2 and converts it through an export; `nxstore export`
    writes raw (and qcow2, vmdk, vhdx by the file's extension); qemu-img compares."""
    need("qemu-img", "cmp")
    size = 48 * MiB
    raw = tmp_path / "src.raw"
    sample_image(raw, size)
    qcow = tmp_path / "src.qcow2"
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
    cl = str(tmp_path / "cl")
    run(*NXSTORE, "create", cl)
    done = run(*NXSTORE, "import", cl, "vm", qcow, "--create")
    assert "(qcow2)" in done.stdout
    run(*NXSTORE, "snapshot", "create", cl, "vm", "s1")
    run(*NXSTORE, "export", cl, "vm@s1", tmp_path / "out.raw")
    run("cmp", raw, tmp_path / "out.raw")
    for ext, fmt in ((".qcow2", "qcow2"), (".vmdk", "vmdk"), (".vhdx", "vhdx")):
        out = tmp_path / f"out{ext}"
        done = run(*NXSTORE, "export", cl, "vm", out)
        assert f"({fmt})" in done.stdout
        info = json.loads(run("qemu-img", "info", "--output=json", out).stdout)
        assert info["format"] == fmt
        run("qemu-img", "compare", "-f", fmt, "-F", "raw", out, raw)
    # Into an existing vDisk: zeros of the image replace older data.
    run(*NXSTORE, "vdisk", "create", cl, "old", str(size))
    ones = tmp_path / "ones.raw"
    ones.write_bytes(b"\xff" * size)
    run(*NXSTORE, "import", cl, "old", ones)
    run(*NXSTORE, "import", cl, "old", tmp_path / "out.vmdk")
    run(*NXSTORE, "export", cl, "old", tmp_path / "old.raw")
    run("cmp", raw, tmp_path / "old.raw")
    bad = run(*NXSTORE, "import", cl, "x", tmp_path / "missing.qcow2", "--create", ok=False)
    assert bad.returncode == 1 and "No such file" in bad.stderr


def test_library_image_conversion_reports_progress(cluster, tmp_path):
    """nxstore.nbd.images: qcow2 in and vhdx out with a progress callback; probe and the
    output format guessed from the name."""
    need("qemu-img")
    from nxstore.nbd import images

    raw, qcow = tmp_path / "a.raw", tmp_path / "a.qcow2"
    sample_image(raw, 24 * MiB)
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, qcow)
    assert images.probe(str(qcow)) == ("qcow2", 24 * MiB)
    assert images.output_format("x.VHDX") == "vhdx" and images.output_format("x.img") == "raw"
    cluster.create_vdisk("d", 32 * MiB)
    seen: list[tuple[int, int]] = []
    assert images.import_image(cluster, "d", str(qcow), "qcow2", fresh=True,
                               progress=lambda done, total: seen.append((done, total))) == 24 * MiB
    assert seen[-1] == (24 * MiB, 24 * MiB)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert cluster.vdisk("d").read(0, 24 * MiB) == raw.read_bytes()
    out = tmp_path / "d.vhdx"
    seen.clear()
    assert images.export_image(cluster, "d", str(out), "vhdx",
                               progress=lambda done, total: seen.append((done, total))) == 32 * MiB
    assert seen[-1] == (32 * MiB, 32 * MiB)
    run("qemu-img", "compare", "-f", "vhdx", "-F", "raw", out, raw)  # zeros past 24 MiB
    cluster.create_vdisk("small", 8 * MiB)
    with pytest.raises(OutOfRange):
        images.import_image(cluster, "small", str(qcow), "qcow2", fresh=False)
    with pytest.raises(FormatError):
        images.probe(str(qcow), "vmdk")

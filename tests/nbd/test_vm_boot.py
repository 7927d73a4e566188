"""A VM on an export: qemu-system-x86_64 (TCG; NXSTORE_VM_ACCEL=kvm for KVM) boots a Debian
cloud kernel and a busybox initramfs whose /init reads the host's marker from its virtio
disk (the export), writes its own marker there, syncs and powers off; the vDisk then holds
the guest's marker. Takes ~5 s under TCG. TCG is the default because KVM inside a container
or a nested VM can hang at boot (it did on the machine this was written on, /dev/kvm present).

The kernel comes from the distribution's linux-image-cloud-amd64 package, downloaded with
`apt-get download` once and kept under the venv (sys.prefix); busybox must be static
(Debian busybox-static)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from nbd_helpers import MiB, need, run

KERNEL_CACHE = Path(sys.prefix) / "share" / "nxstore-test-vm"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
MODULES = ("virtio", "virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
           "virtio_pci", "virtio_blk")  # in load order: the disk driver and what it needs
BOOT_TIMEOUT_S = 120.0
SECTOR = 512
HOST_MARKER = b"HOST-MARKER-BEFORE-BOOT"
GUEST_MARKER = b"NXSTORE-VM-MARKER"

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {' '.join(MODULES)}; do insmod /m/$m.ko; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
echo "guest read: $(dd if=/dev/vda bs={SECTOR} count=1 2>/dev/null | head -c {len(HOST_MARKER)})"
echo "{GUEST_MARKER.decode()} at uptime $(cut -d' ' -f1 /proc/uptime)" \\
  | dd of=/dev/vda bs={SECTOR} seek=8 conv=fsync 2>/dev/null
sync
echo "guest: marker written"
poweroff -f
"""


def _kernel() -> Path:
    """The cached kernel directory (vmlinuz + MODULES), fetched on first use."""
    if (KERNEL_CACHE / "vmlinuz").exists():
        return KERNEL_CACHE
    deps = run("apt-cache", "depends", KERNEL_PACKAGE).stdout.split()
    package = next((d for d in deps if d.startswith("linux-image-") and d != KERNEL_PACKAGE),
                   None)
    assert package, f"apt-cache knows no kernel behind {KERNEL_PACKAGE}"
    work = KERNEL_CACHE.with_name("nxstore-test-vm.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    run("apt-get", "download", package, cwd=work)
    deb = next(work.glob("*.deb"))
    run("dpkg-deb", "-x", deb, work / "x")
    (work / "out").mkdir()
    shutil.copy(next((work / "x" / "boot").glob("vmlinuz-*")), work / "out" / "vmlinuz")
    for name in MODULES:
        found = next((work / "x" / "lib" / "modules").rglob(f"{name}.ko"))
        shutil.copy(found, work / "out" / f"{name}.ko")
    shutil.rmtree(KERNEL_CACHE, ignore_errors=True)
    os.rename(work / "out", KERNEL_CACHE)
    shutil.rmtree(work, ignore_errors=True)
    return KERNEL_CACHE


def _initramfs(kernel: Path, where: Path) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    static = run("ldd", busybox, ok=False)
    assert static.returncode != 0, "busybox is dynamically linked: install busybox-static"
    root = where / "root"
    for sub in ("bin", "m", "proc", "sys", "dev"):
        (root / sub).mkdir(parents=True)
    shutil.copy(busybox, root / "bin" / "busybox")
    for name in MODULES:
        shutil.copy(kernel / f"{name}.ko", root / "m" / f"{name}.ko")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    image = where / "initrd.cpio"
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with open(image, "wb") as out:
        subprocess.run([busybox, "cpio", "-o", "-H", "newc"], input="\n".join(names).encode(),
                       stdout=out, stderr=subprocess.DEVNULL, cwd=root, check=True)
    return image


def test_vm_boots_and_writes_its_marker_to_the_vdisk(cluster, exported, tmp_path):
    need("qemu-system-x86_64", "busybox", "apt-get", "dpkg-deb", "ldd")
    kernel = _kernel()
    initrd = _initramfs(kernel, tmp_path)
    vd = cluster.create_vdisk("boot", 64 * MiB)
    vd.write(0, HOST_MARKER)
    server = exported(cluster, "boot")
    accel = os.environ.get("NXSTORE_VM_ACCEL", "tcg")
    done = run("qemu-system-x86_64", "-accel", accel, "-m", "256", "-nographic", "-no-reboot",
               "-kernel", kernel / "vmlinuz", "-initrd", initrd,
               "-append", "console=ttyS0 panic=-1 quiet",
               "-drive", f"file={server.uri},format=raw,if=virtio,cache=none",
               timeout=BOOT_TIMEOUT_S)
    assert f"guest read: {HOST_MARKER.decode()}" in done.stdout, done.stdout[-2000:]
    assert "guest: marker written" in done.stdout, done.stdout[-2000:]
    server.close()
    sector = vd.read(8 * SECTOR, SECTOR)
    assert sector.startswith(GUEST_MARKER + b" at uptime "), sector[:80]

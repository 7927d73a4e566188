"""vDisk commands: vdisk create|list|delete|resize|write."""

from __future__ import annotations

import argparse
import json
import os
import stat

from ..errors import OutOfRange
from .common import CliError, human, open_cluster, size_arg, table

WRITE_CHUNK = 1 << 20  # bytes read from FILE and written per VDisk.write call


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vdisk", help="thin virtual disks")
    vsub = p.add_subparsers(dest="vdisk_cmd", metavar="COMMAND", required=True)

    q = vsub.add_parser("create", help="create a thin vDisk (costs no space until written)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("size", metavar="SIZE", type=size_arg, help="e.g. 10G, 512M, 4096")
    q.add_argument("--container", default="default", metavar="C",
                   help="storage container (default: default)")
    q.set_defaults(func=cmd_create)

    q = vsub.add_parser("list", help="list vDisks")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_list)

    q = vsub.add_parser("delete", help="delete a vDisk")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--with-snapshots", action="store_true",
                   help="delete its snapshots too (clones of them are kept)")
    q.set_defaults(func=cmd_delete)

    q = vsub.add_parser("resize", help="grow a vDisk")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("size", metavar="SIZE", type=size_arg, help="new size (grow only)")
    q.set_defaults(func=cmd_resize)

    q = vsub.add_parser("write", help="write the bytes of a file at an offset, then flush "
                        "(returns once they are durable)")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="VDISK")
    q.add_argument("offset", metavar="OFFSET", type=offset_arg, help="bytes, e.g. 0, 4096, 1M")
    q.add_argument("file", metavar="FILE", help="regular file whose bytes are written")
    q.set_defaults(func=cmd_write)


def offset_arg(text: str) -> int:
    """argparse `type=`: a byte offset, 0 or a SIZE."""
    if text.strip() == "0":
        return 0
    return size_arg(text)


def cmd_create(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vd = c.create_vdisk(args.name, args.size, container=args.container)
        print(f"created vDisk {vd.name} ({human(vd.size)}, container {vd.container})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        rows = [(vd.name, vd.size, vd.container, len(vd.snapshots())) for vd in c.vdisks()]
    if args.json:
        print(json.dumps([{"name": n, "size": s, "container": ct, "snapshots": k}
                          for n, s, ct, k in rows], indent=2))
        return 0
    print(table([(n, human(s), ct, str(k)) for n, s, ct, k in rows],
                ("NAME", "SIZE", "CONTAINER", "SNAPSHOTS")))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.delete_vdisk(args.name, with_snapshots=args.with_snapshots)
    print(f"deleted vDisk {args.name}")
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        vd = c.vdisk(args.name)
        old = vd.size
        vd.resize(args.size)
    print(f"resized vDisk {args.name}: {human(old)} -> {human(args.size)}")
    return 0


def cmd_write(args: argparse.Namespace) -> int:
    """Write FILE's bytes at OFFSET, then flush: the bytes are durable when it returns 0.
    Nothing is written when the range does not fit or the vDisk is read-only."""
    with open(args.file, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CliError(f"{args.file} is not a regular file")
        size = st.st_size
        with open_cluster(args.path) as c:
            vd = c.vdisk(args.name)
            if args.offset + size > vd.size:
                raise OutOfRange(f"write to {vd.name}: range [{args.offset}, "
                                 f"{args.offset + size}) is outside [0, {vd.size})")
            done = 0
            while done < size:
                chunk = f.read(min(WRITE_CHUNK, size - done))
                if not chunk:
                    raise CliError(f"{args.file} shrank while being written "
                                   f"({done:,} of {size:,} bytes written, not flushed)")
                vd.write(args.offset + done, chunk)
                done += len(chunk)
            vd.flush()
    return 0

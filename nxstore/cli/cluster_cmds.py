"""Cluster-wide commands: create, info, container create|list, drain, gc, defrag, scrub, fsck."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from ..constants import DEFAULT_BLOCK_SIZE, DEFRAG_MAX_BYTES
from .common import CliError, human, open_cluster, open_engine, size_arg, table
from .progress import Progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("create", help="create a new cluster directory")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--block-size", type=size_arg, default=DEFAULT_BLOCK_SIZE, metavar="N",
                   help=f"block size, a power of two from 4K to 64K (default {DEFAULT_BLOCK_SIZE // 1024}K)")
    p.add_argument("--extent-store", metavar="s3://BUCKET[/PREFIX]",
                   help="keep sealed extent groups in this S3 bucket (default: the local disk); "
                        "keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --s3-credentials-file")
    p.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint, e.g. http://127.0.0.1:8333")
    p.add_argument("--s3-credentials-file", metavar="FILE",
                   help="AWS-style INI file ([default] aws_access_key_id, aws_secret_access_key)")
    p.add_argument("--s3-cache-size", type=size_arg, metavar="SIZE",
                   help="bound of the local read cache of S3 groups (default 1G)")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("info", help="space statistics: logical vs stored bytes, dedup and compression")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("container", help="storage containers (dedup/compression policy)")
    csub = p.add_subparsers(dest="container_cmd", metavar="COMMAND", required=True)
    q = csub.add_parser("create", help="create a container")
    q.add_argument("path", metavar="PATH")
    q.add_argument("name", metavar="NAME")
    q.add_argument("--no-dedup", dest="dedup", action="store_false", help="turn dedup off")
    q.add_argument("--no-compression", dest="compression", action="store_false",
                   help="turn compression off")
    q.add_argument("--verify-dedup", action="store_true",
                   help="compare bytes on every dedup hit")
    q.set_defaults(func=cmd_container_create)
    q = csub.add_parser("list", help="list containers")
    q.add_argument("path", metavar="PATH")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_container_list)

    p = sub.add_parser("drain", help="move all OpLog data into the extent store")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_drain)

    p = sub.add_parser("gc", help="reclaim the space of unreferenced extents")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser("defrag", help="rewrite fragmented vDisk data contiguously (faster reads)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("vdisk", metavar="VDISK", nargs="?", help="only this vDisk (default: all)")
    p.add_argument("--max-bytes", type=size_arg, default=DEFRAG_MAX_BYTES, metavar="SIZE",
                   help=f"move at most this much data (default {human(DEFRAG_MAX_BYTES)})")
    p.set_defaults(func=cmd_defrag)

    p = sub.add_parser("scrub", help="verify every extent, map and record; exit 1 on problems")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_scrub)

    p = sub.add_parser("fsck", help="check a stopped cluster, also one that does not open; "
                                    "exit 1 on problems (--repair salvages)")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--repair", action="store_true",
                   help="cut a damaged OpLog at the damage (listing every write lost; the bytes "
                        "are kept in oplog/salvaged/), rewrite damaged redundant files")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_fsck)


def cmd_create(args: argparse.Namespace) -> int:
    from ..cluster import Cluster

    with Cluster.create(args.path, block_size=args.block_size, background=False,
                        extent_store=args.extent_store, s3_endpoint=args.s3_endpoint,
                        s3_credentials_file=args.s3_credentials_file,
                        s3_cache_bytes=args.s3_cache_size):  # fmt: skip
        pass
    where = f", sealed extent groups in {args.extent_store}" if args.extent_store else ""
    print(f"created cluster {args.path} (block size {human(args.block_size)}{where})")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with open_engine(args.path) as c:
        stats = c.stats()
        block_size = getattr(c, "block_size", None)
        containers = len(c.containers())
        vdisks = c.vdisks()
        snapshots = sum(len(vd.snapshots()) for vd in vdisks)
    if args.json:
        out = {"path": args.path, "block_size": block_size, "containers": containers,
               "snapshots": snapshots, **stats}
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    saved = stats["logical_bytes"] - stats["stored_bytes"]
    lines = [
        ("cluster", args.path),
        ("block size", human(block_size) if block_size else "?"),
        ("containers", str(containers)),
        ("vDisks", str(len(vdisks))),
        ("snapshots", str(snapshots)),
        ("logical data", human(stats["logical_bytes"])),
        ("unique data", human(stats["unique_bytes"])),
        ("stored data", human(stats["stored_bytes"])),
        ("space saved", human(max(saved, 0))),
        ("dedup ratio", f"{stats['dedup_ratio']:.2f}x"),
        ("compression ratio", f"{stats['compression_ratio']:.2f}x"),
        ("data reduction", _ratio(stats["logical_bytes"], stats["stored_bytes"])),
        ("OpLog", human(stats["oplog_bytes"])),
        ("extents", f"{stats['extents']:,}"),
        ("block maps", f"{human(stats['map_ram_bytes'])} RAM, {human(stats['map_disk_bytes'])} disk"),
        ("fingerprint index", f"{human(stats['index_memory_bytes'])} RAM"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}}  {value}")
    return 0


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def cmd_container_create(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        row = c.create_container(args.name, dedup=args.dedup, compression=args.compression,
                                 verify_dedup=args.verify_dedup)
    print(f"created container {row.name}")
    return 0


def cmd_container_list(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        rows = c.containers()
    if args.json:
        print(json.dumps([{"name": r.name, "dedup": r.dedup, "compression": r.compression,
                           "verify_dedup": r.verify_dedup} for r in rows], indent=2))
        return 0

    def onoff(flag: bool) -> str:
        return "on" if flag else "off"

    print(table([(r.name, onoff(r.dedup), onoff(r.compression), onoff(r.verify_dedup))
                 for r in rows], ("NAME", "DEDUP", "COMPRESSION", "VERIFY-DEDUP")))
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        before = c.stats()["oplog_bytes"]
        c.drain()
        after = c.stats()["oplog_bytes"]
    print(f"drained: OpLog {human(before)} -> {human(after)}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        before = c.stats()["stored_bytes"]
        counters = c.gc()
        after = c.stats()["stored_bytes"]
    details = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                        for k, v in sorted(counters.items()))
    print(f"gc: stored {human(before)} -> {human(after)}" + (f" ({details})" if details else ""))
    return 0


def cmd_defrag(args: argparse.Namespace) -> int:
    # progress: the engine logs each vDisk it measures and moves at INFO (-v)
    with open_cluster(args.path) as c:
        st = c.defragment(args.vdisk, max_bytes=args.max_bytes)
    print(f"defrag: {st['defragmented']} of {st['vdisks']} vDisk(s) rewritten, "
          f"{st['extents_moved']:,} extents ({human(st['bytes_moved'])}) moved; "
          f"read runs {st['runs_before']:,} -> {st['runs_after']:,} "
          f"for {st['windows']:,} 1 MiB windows")
    if st["damaged"]:
        print(f"nxstore: error: {st['damaged']} damaged extent(s) not moved; run scrub",
              file=sys.stderr)
        return 1
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from .. import fsck
    from ..errors import Locked

    for name in ("scrub", "oplog", "extent_store", "catalog", "map_store", "fingerprint_index",
                 "engine", "recovery"):
        quiet = logging.getLogger(f"nxstore.store.{name}")  # the report below says it all once
        if quiet.getEffectiveLevel() > logging.INFO:
            quiet.setLevel(logging.CRITICAL)
    try:
        with Progress(None, "fsck", unit="extent") as bar:
            report = fsck.check(args.path, repair=args.repair, progress=bar.set)
    except Locked as exc:
        raise CliError(f"{exc}: fsck works on a stopped cluster (stop its 'nxstore serve'; "
                       "'nxstore scrub' checks a live one)") from None
    lost = [{"seq": r.seq, "vdisk": report.vdisk_names.get(r.vdisk_id, f"id {r.vdisk_id}"),
             "type": r.type, "offset": r.offset, "length": r.length,
             "acknowledged": r.acknowledged} for r in report.lost]
    if args.json:
        print(json.dumps({"path": args.path, "healthy": report.healthy,
                          "problems": report.problems, "repairs": report.repairs,
                          "lost": lost}, indent=2))
        return 0 if report.healthy else 1
    for line in report.repairs:
        print(f"repaired: {line}")
    for r in lost:
        unit = "blocks" if r["type"] == "MAP" else "bytes"
        print(f"lost: seq {r['seq']} {r['type']} vDisk {r['vdisk']} offset {r['offset']} "
              f"length {r['length']} {unit}{' (acknowledged)' if r['acknowledged'] else ''}")
    for line in report.problems:
        print(f"problem: {line}")
    if report.healthy:
        print(f"{args.path}: clean" + (" after repair" if report.repairs else ""))
        return 0
    print(f"nxstore: error: fsck found {len(report.problems)} problem(s) in {args.path}",
          file=sys.stderr)
    return 1


def cmd_scrub(args: argparse.Namespace) -> int:
    # The engine logs each problem as a warning; the report below lists them
    # once, so keep those log lines for -v.
    scrub_log = logging.getLogger("nxstore.store.scrub")
    if scrub_log.getEffectiveLevel() > logging.INFO:
        scrub_log.setLevel(logging.ERROR)
    with open_cluster(args.path) as c, Progress(None, "scrub", unit="extent") as bar:
        problems = c.scrub(progress=bar.set)
    if problems:
        for line in problems:
            print(line)
        print(f"nxstore: error: scrub found {len(problems)} problem(s) in {args.path}",
              file=sys.stderr)
        return 1
    print(f"scrub: {args.path} is healthy")
    return 0

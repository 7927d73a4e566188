"""fsck: check a cluster, even one that does not open; with repair, salvage what can be.

`check(path)` reports every problem: what stops the cluster from opening (a damaged
OpLog, a catalogue that lost committed transactions, an unverifiable generation file)
and everything `Cluster.scrub` finds once it is open. `check(path, repair=True)`
additionally:

* rewrites a missing or wholly damaged catalogue generation file from the catalogue;
* opens with OpLog salvage: the log is cut at the first damaged record, and every
  record lost with it is listed (intact ones by seq, vDisk, type, offset and length, and
  whether a sync had acknowledged them); the bytes dropped are kept in
  ``oplog/salvaged/``, never deleted;
* rewrites damaged watermark slots (OpLog segments, map delta logs) and, through the
  close that follows, a fresh extent table and fingerprint index.

It never deletes data it cannot prove unreferenced, and it never "repairs" a catalogue
that lost committed transactions (that needs a replica or a backup): such a problem
stays in the report. After a repair the cluster is opened again and scrubbed, so
`problems` is what is still wrong.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from .constants import CATALOG_FILE
from .errors import Corruption, GenerationUnverifiable, NxError
from .store.catalog import Catalog
from .store.oplog import LostRecord

log = logging.getLogger(__name__)


@dataclass
class FsckReport:
    """What `check` found and did."""

    path: str
    problems: list[str] = field(default_factory=list)  # what is (still) wrong
    repairs: list[str] = field(default_factory=list)  # what repair changed or found fixed
    lost: list[LostRecord] = field(default_factory=list)  # OpLog records repair dropped
    vdisk_names: dict[int, str] = field(default_factory=dict)  # vDisk id -> name, for `lost`

    @property
    def healthy(self) -> bool:
        return not self.problems


def check(path: str, *, repair: bool = False,
          progress: Callable[[int, int], None] | None = None) -> FsckReport:
    """Check (and with `repair`, salvage) the cluster at `path`; see the module docstring.

    Raises NotFound (no cluster), Locked (open elsewhere: stop its daemon first)."""
    from .cluster import Cluster  # the facade composes every layer fsck needs

    report = FsckReport(path)
    try:
        try:
            cluster = Cluster.open(path, background=False, salvage=repair)
        except GenerationUnverifiable as exc:
            if not repair:
                raise
            # Open got past the cluster lock before it failed, so no daemon holds it.
            Catalog(os.path.join(os.path.abspath(path), CATALOG_FILE),
                    repair_generation=True).close()
            report.repairs.append(f"{exc}: rewritten from the catalogue")
            cluster = Cluster.open(path, background=False, salvage=repair)
    except Corruption as exc:
        report.problems.append(str(exc))
        if not repair:
            report.problems.append("the cluster does not open; nxstore fsck --repair salvages "
                                   "what can be (and lists what it cannot)")
        return report
    with cluster:
        report.vdisk_names = {vd.id: vd.name for vd in cluster.vdisks()}
        salvaged = cluster.salvaged
        if salvaged is not None:
            report.lost = list(salvaged.lost)
            first = salvaged.last_kept_seq + 1
            upto = salvaged.lost[0].seq - 1 if salvaged.lost else None
            unreadable = f"seq {first}..{'' if upto is None else upto}"
            if upto is not None and upto < first:
                unreadable = "none"
            report.repairs.append(
                f"{salvaged.path}: cut at byte {salvaged.offset} ({salvaged.reason}); the log "
                f"now ends at seq {salvaged.last_kept_seq}; damaged, unreadable records: "
                f"{unreadable}; {len(salvaged.lost)} intact record(s) after the damage dropped"
                + ("; acknowledged writes were lost" if salvaged.acknowledged_lost else "")
                + f"; the dropped bytes are kept in {cluster.salvage_dir}")
        found = cluster.scrub(progress)
        if repair:
            report.repairs += [f"{p}: watermark rewritten" for p in cluster.repair_watermarks()]
    if not repair:
        report.problems = found
        if found:
            report.problems.append("nxstore fsck --repair rewrites what is redundant and "
                                   "salvages the rest")
        return report
    try:  # what is still wrong once open and close have rebuilt what they could
        with Cluster.open(path, background=False) as again:
            remaining = again.scrub(progress)
    except NxError as exc:
        remaining = [str(exc)]
    report.repairs += [f"fixed: {p}" for p in found if p not in remaining]
    report.problems = remaining
    return report

"""File classes, mutations and the oracle of the mutation sweep (test_mutation_sweep.py).

Oracle, per damaged copy of a cluster: open it, read every vDisk and snapshot, scrub,
close, open again and read again. The damage must be *detected* (an nxstore error or a
scrub problem) or *harmless* (every read returns the truth), never wrong data:

    silent       some read returned wrong data (or a vDisk/snapshot is missing or extra)
                 and nothing reported anything
    read-silent  some read returned wrong data, but an error or scrub reported damage
                 elsewhere (still wrong data handed to a reader)
    raw          an exception not from nxstore.errors escaped (open, read, scrub, close)
    hang         a step took longer than HANG_S
    degraded     the first open read everything right, but after close() the reopen or a
                 read raises: open/close turned the damage into lost availability
    detected     an nxstore error or a scrub problem, whose message names the damaged file
    unnamed      the same, but no message names the damaged file
    harmless     every read returned the truth, nothing reported
"""

from __future__ import annotations

import collections
import contextlib
import glob
import json
import os
import random
import re
import signal
import traceback
from dataclasses import asdict, dataclass, field

import xxhash

import nxstore
from nxstore.errors import NotFound, NxError

BS = 4096
HANG_S = 120                 # seconds one check may take before it counts as a hang
CHUNK = 64 * BS              # bytes per read call (a damaged chunk is re-read block by block)
FAILURES = ("silent", "read-silent", "raw", "hang", "degraded")
CATEGORIES = (*FAILURES, "detected", "unnamed", "harmless")
KINDS = ("flip", "bit", "zero", "truncate", "chop")
REGIONS = ("uniform", "uniform", "head", "tail")
CHOPS = (1, 8, 64, 512, 4096, "half")


# -- file classes --------------------------------------------------------------------

def file_classes(root: str, layers: dict[str, str]) -> dict[str, list[str]]:
    """Class name -> sorted paths (relative to `root`) of the non-empty files of that
    class. `layers`: map layer id (str) -> "head" or "frozen"."""
    def rel(pattern: str) -> list[str]:
        return sorted(os.path.relpath(p, root)
                      for p in glob.glob(os.path.join(root, pattern), recursive=True)
                      if os.path.isfile(p) and os.path.getsize(p) > 0)

    out: dict[str, list[str]] = {}
    for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm", "catalog.gen", "LOCK"):
        out[name] = rel(name)
    segs = rel("oplog/*.seg")
    out["oplog-newest"], out["oplog-older"] = segs[-1:], segs[:-1]
    groups = rel("extents/EG*.eg")
    out["eg-newest"], out["eg-older"] = groups[-1:], groups[:-1]
    out["extent_table.bin"] = rel("extents/extent_table.bin")
    out["fpindex.bin"] = rel("extents/fpindex.bin")
    out["idfloor.bin"] = rel("extents/idfloor.bin")
    for suffix in ("base", "delta"):
        for kind in ("head", "frozen"):
            out[f"map-{suffix}-{kind}"] = [
                p for p in rel(f"maps/L*.{suffix}")
                if layers.get(str(layer_of(p)), "frozen") == kind]
    out["nearsync"] = rel("nearsync/**/*")
    known = {p for paths in out.values() for p in paths}
    out["other"] = [p for p in rel("**/*") if p not in known]  # a file kind added later
    return {k: v for k, v in out.items() if v}


def layer_of(path: str) -> int:
    return int(os.path.basename(path)[1:17], 16)


# -- mutations -----------------------------------------------------------------------

@dataclass(frozen=True)
class Mutation:
    """One change to one file. `region` and `where` pick the offset when applied:
    "uniform" (anywhere: `where` seeds a uniform draw), "head" (the first 128 bytes:
    headers), "tail" (the last 4096 bytes: where torn tails are judged). `arg`: bit
    number (bit), byte count (zero), index into CHOPS (chop)."""

    kind: str
    region: str
    where: int
    arg: int

    def offset(self, size: int) -> int:
        if self.region == "head":
            return self.where % min(size, 128)
        if self.region == "tail":
            return size - 1 - self.where % min(size, 4096)
        return random.Random(self.where).randrange(size)

    def apply(self, path: str) -> str:
        """Damage `path`; return what was done, in words."""
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            if self.kind == "chop":
                chop = CHOPS[self.arg]
                n = size // 2 if chop == "half" else min(chop, size)
                f.truncate(size - n)
                return f"chop {n} ({chop}) bytes: {size} -> {size - n}"
            at = self.offset(size)
            if self.kind == "truncate":
                f.truncate(at)
                return f"truncate from {size} to {at}"
            f.seek(at)
            if self.kind == "zero":
                n = min(self.arg, size - at)
                f.write(bytes(n))
                return f"zero {n} bytes at {at} of {size}"
            old = f.read(1)[0]
            new = old ^ (0xFF if self.kind == "flip" else 1 << self.arg)
            f.seek(at)
            f.write(bytes([new]))
            return f"{self.kind} byte {at} of {size}: {old:#04x} -> {new:#04x}"


# -- oracle --------------------------------------------------------------------------

class Hang(BaseException):
    """A check step ran longer than HANG_S (raised by SIGALRM)."""


@contextlib.contextmanager
def time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"no progress in {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Verdict:
    category: str = "harmless"
    reports: list[str] = field(default_factory=list)   # nxstore errors and scrub problems
    wrong: list[str] = field(default_factory=list)     # wrong data, in words
    raw: str = ""


def names_file(message: str, rel: str) -> bool:
    """Does `message` name the damaged file `rel` (relative path)?"""
    base = os.path.basename(rel)
    if base in message:
        return True
    if base.startswith("catalog."):
        return "catalog" in message.lower()
    if base.startswith("L") and base.endswith((".base", ".delta")):
        return re.search(rf"\blayer {layer_of(rel)}\b", message) is not None
    return False


class Checker:
    """Reads a cluster against the truth, collecting wrong data and nxstore errors."""

    def __init__(self, truth: dict, verdict: Verdict) -> None:
        self.images = truth["images"]
        self.v = verdict
        self._where: dict[str, list[str]] | None = None

    def describe(self, key: str, block: bytes) -> str:
        """What a wrong block of image `key` holds: zeros, a block some image holds (stale
        data; one of the same vDisk's images if any), or other bytes."""
        if not any(block):
            return "zeros"
        if self._where is None:
            self._where = collections.defaultdict(list)
            for name, img in self.images.items():
                for b, digests in enumerate(img["blocks"]):
                    for d in digests:
                        self._where[d].append(f"{name} block {b}")
        found = self._where.get(xxhash.xxh3_64_hexdigest(block), [])
        if not found:
            return f"other bytes {block[:8].hex()}..."
        disk = key.split("@")[0]
        same = [f for f in found if f.split("@")[0].split(" ")[0] == disk]
        return f"what {(same or found)[0]} holds"

    def report(self, stage: str, exc: NxError) -> None:
        self.v.reports.append(f"{stage}: {type(exc).__name__}: {exc}")

    def wrong(self, stage: str, what: str) -> None:
        self.v.wrong.append(f"{stage}: {what}")

    def read_all(self, c, stage: str) -> None:
        try:
            present = {vd.name: vd for vd in c.vdisks()}
        except NxError as exc:
            self.report(stage, exc)
            return
        want = {k for k in self.images if "@" not in k}
        for extra in sorted(set(present) - want):
            self.wrong(stage, f"unexpected vDisk {extra}")
        for name in sorted(want):
            vd = present.get(name)
            if vd is None:
                self.wrong(stage, f"vDisk {name} missing")
                continue
            self._check_image(stage, name, vd)
            try:
                snaps = {s.name: s for s in vd.snapshots()}
            except NxError as exc:
                self.report(stage, exc)
                continue
            want_snaps = {k.split("@")[1] for k in self.images if k.startswith(name + "@")}
            for extra in sorted(set(snaps) - want_snaps):
                self.wrong(stage, f"unexpected snapshot {name}@{extra}")
            for snap in sorted(want_snaps):
                if snap not in snaps:
                    self.wrong(stage, f"snapshot {name}@{snap} missing")
                else:
                    self._check_image(stage, f"{name}@{snap}", snaps[snap])

    def _check_image(self, stage: str, key: str, obj) -> None:
        want = self.images[key]
        if obj.size != want["size"]:
            self.wrong(stage, f"{key}: size {obj.size}, expected {want['size']}")
            return
        bad = []
        for off in range(0, want["size"], CHUNK):
            n = min(CHUNK, want["size"] - off)
            try:
                chunks = [(off, obj.read(off, n))]
            except NotFound as exc:  # deleted under us: a catalogue that changed its mind
                self.wrong(stage, f"{key}: {exc}")
                return
            except NxError as exc:
                self.report(stage, exc)
                chunks = []
                for b in range(off, off + n, BS):  # find the wrong blocks next to the bad one
                    with contextlib.suppress(NxError):
                        chunks.append((b, obj.read(b, BS)))
            for at, data in chunks:
                for i in range(0, len(data), BS):
                    blk = data[i : i + BS]
                    if xxhash.xxh3_64_hexdigest(blk) not in want["blocks"][(at + i) // BS]:
                        bad.append(((at + i) // BS, self.describe(key, blk)))
        if bad:
            shown = ", ".join(f"block {b} reads {d}" for b, d in bad[:3])
            self.wrong(stage, f"{key}: {len(bad)} wrong block(s): {shown}")


def _where(exc: BaseException) -> str:
    """The innermost nxstore frame of the traceback (file:line function)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/nxstore/" in f.filename]
    f = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"


def check(root: str, rel: str, truth: dict) -> Verdict:
    """Open, read, scrub, close, reopen and read the (damaged) cluster at `root`."""
    v = Verdict()
    checker = Checker(truth, v)
    stage = "open"
    try:
        with time_limit(HANG_S):
            for stage in ("open", "reopen"):
                try:
                    c = nxstore.Cluster.open(root, background=False)
                except NxError as exc:
                    checker.report(stage, exc)
                    break
                try:
                    checker.read_all(c, stage)
                    if stage == "open":
                        try:
                            v.reports += [f"scrub: {p}" for p in c.scrub()]
                        except NxError as exc:
                            checker.report("scrub", exc)
                    c.close()
                except NxError as exc:
                    checker.report(f"{stage}-close", exc)
                finally:
                    with contextlib.suppress(BaseException):
                        c.close()
    except Hang as exc:
        v.category, v.raw = "hang", f"{stage}: {exc} at {_where(exc)}"
        return v
    except Exception as exc:  # noqa: BLE001 - exactly what the oracle looks for
        v.category, v.raw = "raw", f"{stage}: {type(exc).__name__}: {exc} at {_where(exc)}"
        return v
    if v.wrong:
        v.category = "read-silent" if v.reports else "silent"
    elif (not any(r.startswith("open:") for r in v.reports)
          and any(r.startswith("reopen:") for r in v.reports)):
        v.category = "degraded"
    elif v.reports:
        v.category = "detected" if any(names_file(r, rel) for r in v.reports) else "unnamed"
    return v


# -- tally ---------------------------------------------------------------------------

@dataclass
class Outcome:
    state: str
    file_class: str
    file: str
    kind: str
    mutation: str
    category: str
    detail: str


class Tally:
    """Outcomes by file class (and by mutation kind); a table and a JSON report."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.category in FAILURES]

    def table(self) -> str:
        rows = collections.defaultdict(collections.Counter)
        for o in self.outcomes:
            rows[f"{o.state}:{o.file_class}"][o.category] += 1
            rows[f"{o.state}:{o.file_class}:{o.kind}"][o.category] += 1
            rows["TOTAL"][o.category] += 1
        head = f"{'class (state:class[:mutation])':44} {'tried':>5} " + " ".join(
            f"{c:>11}" for c in CATEGORIES)
        lines = [head]
        for key in sorted(rows, key=lambda k: (k == "TOTAL", k)):
            cnt = rows[key]
            lines.append(f"{key:44} {sum(cnt.values()):5} " + " ".join(
                f"{cnt[c]:11}" for c in CATEGORIES))
        return "\n".join(lines)

    def failure_lines(self) -> str:
        return "\n".join(
            f"[{o.category}] {o.state} {o.file} ({o.file_class}): {o.mutation}\n    {o.detail}"
            for o in self.failures())

    def write(self, path: str) -> None:
        """Write `path` (JSON: table, every outcome) and `path`.txt (table + failures)."""
        with open(path, "w") as f:
            json.dump({"table": self.table(), "outcomes": [asdict(o) for o in self.outcomes]},
                      f, indent=1)
        with open(path + ".txt", "w") as f:
            f.write(self.table() + "\n\nFailures:\n" + self.failure_lines() + "\n")


def summarize(v: Verdict) -> str:
    parts = []
    if v.raw:
        parts.append(v.raw)
    if v.wrong:
        parts.append("WRONG: " + " | ".join(v.wrong[:4]))
    if v.reports:
        parts.append("REPORTED: " + " | ".join(r[:300] for r in v.reports[:3]))
    return " ;; ".join(parts)[:2000]

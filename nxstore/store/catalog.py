"""The cluster catalogue: containers, vDisks, map layers and snapshots in SQLite.

SQLite (WAL, synchronous=FULL) gives atomic multi-row updates: a snapshot,
clone or restore is one transaction, so after a crash it exists completely or
not at all. SQLite has no page checksums, so every row carries `ck`, an XXH3-64
of its other columns; a row whose checksum fails raises Corruption naming the
table and row. Per-block data never lives here (see map_store, extent_store).

SQLite takes a damaged WAL frame for the end of the log and silently drops every
commit after it. So every committing transaction also bumps a generation (table
`generation`), and once the commit is durable the generation is written to a small
file beside the database (`catalog.gen`, two checksummed slots written in turn, so a
torn write leaves the other). Open refuses a catalogue older than that file says.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from typing import Any, TypeVar

import xxhash

from ..constants import CATALOG_GENERATION_FILE, CATALOG_GENERATION_VERSION, CLUSTER_FORMAT_VERSION
from ..errors import (
    AlreadyExists,
    Corruption,
    FormatError,
    GenerationUnverifiable,
    NoSpace,
    NotFound,
    raise_os_error,
)
from ..names import not_utf8
from .fileutil import fsync_dir, open_private
from .lockorder import Level, ordered_lock

log = logging.getLogger(__name__)


@dataclass
class ContainerRow:
    id: int
    name: str
    dedup: bool
    compression: bool
    verify_dedup: bool


@dataclass
class VDiskRow:
    id: int
    name: str
    container_id: int
    size: int
    head_layer: int
    created_at: float
    read_only: bool


@dataclass
class LayerRow:
    """A block-map layer; `parent` 0 means root. `shortcut` is the id of a layer
    holding this layer's whole chain flattened (0 = none): reads stop there.
    `created_seq` is the OpLog sequence number at creation: records up to it
    never apply to this layer (recovery replays only later ones)."""

    id: int
    parent: int
    frozen: bool
    shortcut: int
    created_seq: int


@dataclass
class SnapshotRow:
    id: int
    vdisk_id: int
    name: str
    layer_id: int
    created_at: float
    size: int


@dataclass
class RemoteSiteRow:
    """A peer cluster. Mappings are JSON objects (local name -> remote name)."""

    id: int
    name: str
    address: str
    secret: str
    network_mapping: str
    vstore_mapping: str
    tls_ca: str  # "" = plain TCP; else a PEM file of CAs that must have signed the site's cert


@dataclass
class ReplicaRow:
    """Marks a vDisk as the replica of `source_vdisk` at cluster `source_cluster`."""

    id: int
    vdisk_id: int
    source_cluster: str
    source_site: str
    source_vdisk: str


Row = TypeVar("Row", ContainerRow, VDiskRow, LayerRow, SnapshotRow, RemoteSiteRow, ReplicaRow)

_TABLES: dict[type, str] = {
    ContainerRow: "containers",
    VDiskRow: "vdisks",
    LayerRow: "layers",
    SnapshotRow: "snapshots",
    RemoteSiteRow: "remote_sites",
    ReplicaRow: "replicas",
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY, value INTEGER NOT NULL,
    ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS containers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    dedup INTEGER, compression INTEGER, verify_dedup INTEGER, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vdisks (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    container_id INTEGER, size INTEGER, head_layer INTEGER, created_at REAL,
    read_only INTEGER, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS layers (id INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER,
    frozen INTEGER, shortcut INTEGER, created_seq INTEGER, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER, name TEXT,
    layer_id INTEGER, created_at REAL, size INTEGER, ck INTEGER NOT NULL,
    UNIQUE (vdisk_id, name));
CREATE TABLE IF NOT EXISTS remote_sites (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    address TEXT, secret TEXT, network_mapping TEXT, vstore_mapping TEXT, tls_ca TEXT,
    ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER UNIQUE,
    source_cluster TEXT, source_site TEXT, source_vdisk TEXT, ck INTEGER NOT NULL,
    UNIQUE (source_cluster, source_vdisk));
"""


# --- data protection (nxstore.protection): VMs, protection domains, schedules ------------
# JSON columns hold lists/objects; `state`/`owner_*`/`epoch` of a PD are what failover flips.


@dataclass
class VMRow:
    """A VM: `vdisks` JSON list of vDisk names, `nics` JSON list of {"network": ...},
    `categories` JSON object, `power` "on"/"off"; hook paths "" when unset."""

    id: int
    name: str
    vdisks: str
    nics: str
    categories: str
    power: str
    pre_freeze: str
    post_thaw: str
    hook_timeout: float
    created_at: float


@dataclass
class ProtectionDomainRow:
    """A PD. `state` is "active" where this cluster owns and protects it; `epoch`
    grows with every ownership change (failover fencing)."""

    id: int
    name: str
    state: str
    owner_site: str
    owner_cluster: str
    epoch: int
    created_at: float


@dataclass
class PDEntityRow:
    """An entity protected by PD `pd_id`: kind "vm" or "vdisk"; `cg` "" = no group."""

    id: int
    pd_id: int
    kind: str
    name: str
    cg: str


@dataclass
class PDScheduleRow:
    """A PD schedule: `every` seconds; `keep_remote` JSON {site: count}; `next_due`
    is the slot the scheduler runs next (cluster clock); `last_run` 0 = never."""

    id: int
    pd_id: int
    every: float
    keep_local: int
    keep_remote: str
    app_consistent: bool
    enabled: bool
    next_due: float
    last_run: float
    created_at: float


@dataclass
class PDSnapshotRow:
    """A PD snapshot: one vDisk snapshot called `name` on every member vDisk.
    `schedule_id` 0 = ad hoc; `complete` False while being taken (cleaned up at open);
    `manifest` JSON of the entities (VM configuration included) at snapshot time;
    `hook_failures` JSON list."""

    id: int
    pd_id: int
    name: str
    created_at: float
    schedule_id: int
    consistency: str
    complete: bool
    manifest: str
    hook_failures: str


@dataclass
class PDSnapshotMemberRow:
    """One vDisk snapshot of a PD snapshot, with the entity (and CG) it protects."""

    id: int
    pd_snapshot_id: int
    snapshot_id: int
    vdisk_name: str
    entity_kind: str
    entity_name: str
    cg: str


@dataclass
class PDReplicationRow:
    """PD snapshot `pd_snapshot_id` was fully replicated to remote `site`."""

    id: int
    pd_snapshot_id: int
    site: str
    replicated_at: float


@dataclass
class PDMigrationRow:
    """A failover journal entry (nxstore.protection.failover): `kind` "migrate" |
    "activate" | "demote" | "failback", `step` the last step completed, `status`
    "running" | "failed" | "done" | "rolled_back" | "aborted" (a demotion closed it, the
    reason in `error`), `detail` JSON (what a resume or a rollback needs: prior power
    states, peer cluster, final snapshot...)."""

    id: int
    pd_id: int
    kind: str
    site: str
    step: int
    status: str
    epoch: int
    snapshot: str
    detail: str
    error: str
    started_at: float
    updated_at: float


_TABLES.update({
    VMRow: "vms",
    PDMigrationRow: "pd_migrations",
    ProtectionDomainRow: "protection_domains",
    PDEntityRow: "pd_entities",
    PDScheduleRow: "pd_schedules",
    PDSnapshotRow: "pd_snapshots",
    PDSnapshotMemberRow: "pd_snapshot_members",
    PDReplicationRow: "pd_replications",
})

_SCHEMA += """
CREATE TABLE IF NOT EXISTS vms (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    vdisks TEXT, nics TEXT, categories TEXT, power TEXT, pre_freeze TEXT, post_thaw TEXT,
    hook_timeout REAL, created_at REAL, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS protection_domains (id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE NOT NULL, state TEXT, owner_site TEXT, owner_cluster TEXT, epoch INTEGER,
    created_at REAL, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pd_entities (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    kind TEXT, name TEXT, cg TEXT, ck INTEGER NOT NULL, UNIQUE (kind, name));
CREATE TABLE IF NOT EXISTS pd_schedules (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    every REAL, keep_local INTEGER, keep_remote TEXT, app_consistent INTEGER, enabled INTEGER,
    next_due REAL, last_run REAL, created_at REAL, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pd_snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    name TEXT, created_at REAL, schedule_id INTEGER, consistency TEXT, complete INTEGER,
    manifest TEXT, hook_failures TEXT, ck INTEGER NOT NULL, UNIQUE (pd_id, name));
CREATE TABLE IF NOT EXISTS pd_snapshot_members (id INTEGER PRIMARY KEY AUTOINCREMENT,
    pd_snapshot_id INTEGER, snapshot_id INTEGER, vdisk_name TEXT, entity_kind TEXT,
    entity_name TEXT, cg TEXT, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pd_migrations (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    kind TEXT, site TEXT, step INTEGER, status TEXT, epoch INTEGER, snapshot TEXT, detail TEXT,
    error TEXT, started_at REAL, updated_at REAL, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pd_replications (id INTEGER PRIMARY KEY AUTOINCREMENT,
    pd_snapshot_id INTEGER, site TEXT, replicated_at REAL, ck INTEGER NOT NULL,
    UNIQUE (pd_snapshot_id, site));
"""


# --- NearSync (nxstore.nearsync): light-weight snapshots and their shipping -----------------


@dataclass
class LWSRow:
    """A light-weight snapshot at the source: the MARKER record `seq` of the OpLog.
    `members` JSON {vDisk name: [vdisk id, size, head layer]} at the marker; `snapshot` the
    vDisk snapshot taken atomically with it ("" = none); `pd_id` 0 = ad hoc (never shipped)."""

    id: int
    name: str
    pd_id: int
    seq: int
    created_at: float
    members: str
    snapshot: str


@dataclass
class NearSyncRow:
    """NearSync of PD `pd_id` to remote `site`: `state` (nxstore.nearsync.state), the newest
    LWS fully shipped there (`shipped_seq`, its time `shipped_at`), the vDisk snapshot the
    remote's episode chain starts from (`base_snapshot`, taken with marker `base_seq`) and
    `history` JSON [[time, from, to, reason], ...]."""

    id: int
    pd_id: int
    site: str
    state: str
    since: float
    shipped_seq: int
    shipped_at: float
    base_snapshot: str
    base_seq: int
    history: str


@dataclass
class LWSEpisodeRow:
    """Target side: a received LWS episode of replica vDisk `vdisk_id` (data in `file`,
    under <cluster>/nearsync/). It applies on `base_snapshot` after the episode `prev_seq`
    (or directly on the snapshot when `first`); `compose_as` names the vDisk snapshot to
    compose at this point ("" = none); `group_name` / `members`: the LWS's PD and size."""

    id: int
    vdisk_id: int
    name: str
    group_name: str
    members: int
    seq: int
    prev_seq: int
    first: bool
    created_at: float
    base_snapshot: str
    compose_as: str
    size: int
    file: str


_TABLES.update({LWSRow: "lws", NearSyncRow: "nearsync", LWSEpisodeRow: "lws_episodes"})

_SCHEMA += """
CREATE TABLE IF NOT EXISTS lws (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, pd_id INTEGER,
    seq INTEGER UNIQUE, created_at REAL, members TEXT, snapshot TEXT, ck INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nearsync (id INTEGER PRIMARY KEY AUTOINCREMENT, pd_id INTEGER,
    site TEXT, state TEXT, since REAL, shipped_seq INTEGER, shipped_at REAL, base_snapshot TEXT,
    base_seq INTEGER, history TEXT, ck INTEGER NOT NULL, UNIQUE (pd_id, site));
CREATE TABLE IF NOT EXISTS lws_episodes (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER,
    name TEXT, group_name TEXT, members INTEGER, seq INTEGER, prev_seq INTEGER, first INTEGER,
    created_at REAL, base_snapshot TEXT, compose_as TEXT, size INTEGER, file TEXT,
    ck INTEGER NOT NULL, UNIQUE (vdisk_id, seq));
"""


# --- settings: durable, per-cluster configuration (e.g. nxstore.nearsync.state) --------------


@dataclass
class SettingRow:
    """A named group of settings: `value` JSON (an object of the group's settings)."""

    id: int
    name: str
    value: str


_TABLES[SettingRow] = "settings"

_SCHEMA += """
CREATE TABLE IF NOT EXISTS settings (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    value TEXT, ck INTEGER NOT NULL);
"""


def _disk_full(exc: BaseException) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _row_checksum(table: str, values: tuple) -> int:
    # repr() of ints/floats/str is stable across runs and platforms; SQLite hands
    # booleans back as 0/1, so they are hashed as ints.
    canonical = tuple(int(v) if isinstance(v, bool) else v for v in values)
    digest = xxhash.xxh3_64_intdigest(repr((table, canonical)).encode())
    return digest - (1 << 64) if digest >= 1 << 63 else digest  # SQLite INTEGER is signed


_GEN_MAGIC = b"NXCATGEN"
_GEN_HEAD = struct.Struct("<8sIIQ")  # magic, version, reserved, generation
_GEN_SLOT = _GEN_HEAD.size + 8  # + XXH3-64 of the above: 32 bytes, two slots


def _gen_slot(generation: int) -> bytes:
    head = _GEN_HEAD.pack(_GEN_MAGIC, CATALOG_GENERATION_VERSION, 0, generation)
    return head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))


def _read_gen_slots(data: bytes, path: str) -> list[int | None]:
    """The generation in each of the two slots (None where a slot fails its checks)."""
    out: list[int | None] = []
    for k in range(2):
        slot = data[k * _GEN_SLOT : (k + 1) * _GEN_SLOT]
        if len(slot) < _GEN_SLOT:
            out.append(None)
            continue
        magic, version, _, gen = _GEN_HEAD.unpack_from(slot)
        (check,) = struct.unpack_from("<Q", slot, _GEN_HEAD.size)
        if magic == _GEN_MAGIC and version > CATALOG_GENERATION_VERSION:
            raise FormatError(f"{path}: version {version} is newer than this nxstore reads")
        ok = magic == _GEN_MAGIC and check == xxhash.xxh3_64_intdigest(slot[: _GEN_HEAD.size])
        out.append(gen if ok else None)
    return out


def all_row_types() -> list[type]:
    """Every row type the catalogue holds (for scrub)."""
    return list(_TABLES)


class Catalog:
    """Typed access to the SQLite catalogue. Thread-safe (one connection, one lock).

    Writes happen inside `transaction()`; they are durable when it exits.
    """

    def __init__(self, path: str, *, create: bool = False, repair_generation: bool = False) -> None:
        """Open (or create) the catalogue at `path`. Raises Corruption (a damaged database,
        or one that lost committed transactions), GenerationUnverifiable (the generation
        file is missing or wholly damaged; `repair_generation=True` rewrites it from the
        database instead), FormatError."""
        self.path = path
        self.generation_path = os.path.join(os.path.dirname(path), CATALOG_GENERATION_FILE)
        self.problems: list[str] = []  # harmless damage found at open, for scrub
        self._lock = ordered_lock(Level.CATALOG, f"catalogue {path}", reentrant=True)
        self._after_commit: list[Callable[[], object]] = []
        self._gen_fd = -1
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if create or self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'meta'"
            ).fetchone():
                self._db.executescript(_SCHEMA)  # IF NOT EXISTS: adds tables new in this version
            result = self._db.execute("PRAGMA quick_check").fetchone()[0]
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # damaged schema text
            if _disk_full(exc):
                raise NoSpace(errno.ENOSPC, f"catalogue {path}: {exc}") from exc
            what = "unreadable schema text: " if isinstance(exc, UnicodeDecodeError) else ""
            raise Corruption(f"catalogue {path}: {what}{exc}") from exc
        if result != "ok":
            raise Corruption(f"catalogue {path}: {result}")
        self._check_generation(create or repair_generation)

    # -- generation ---------------------------------------------------------
    @property
    def generation(self) -> int:
        """Number of committed transactions that changed something (0: none yet)."""
        with self._lock:
            try:
                row = self._db.execute("SELECT value, ck FROM generation WHERE id = 1").fetchone()
            except sqlite3.DatabaseError as exc:
                raise Corruption(f"catalogue {self.path}: {exc}") from exc
        if row is None:
            return 0
        if row[1] != _row_checksum("generation", (1, row[0])):
            raise Corruption(f"catalogue {self.path}: generation row fails its checksum")
        return int(row[0])

    def _check_generation(self, trust_db: bool) -> None:
        """Refuse a catalogue that lost committed transactions; see the module docstring.
        `trust_db`: a missing or wholly damaged generation file is rewritten, not refused."""
        gen = self.generation
        path = self.generation_path
        try:
            with open(path, "rb") as f:
                slots = _read_gen_slots(f.read(), path)
        except FileNotFoundError:
            if gen and not trust_db:
                raise GenerationUnverifiable(
                    f"{path} is missing: cannot verify that catalogue {self.path} (generation "
                    f"{gen}) lost no committed transaction (nxstore fsck --repair rewrites it)"
                ) from None
            slots = [None, None]
            fd = open_private(path, os.O_RDWR)
            os.close(fd)
            fsync_dir(os.path.dirname(path) or ".")
        else:
            valid = [g for g in slots if g is not None]
            if not valid and not trust_db:
                raise GenerationUnverifiable(
                    f"{path}: both generation slots are damaged: cannot verify that catalogue "
                    f"{self.path} lost no committed transaction (nxstore fsck --repair "
                    "rewrites it from the catalogue)")
            if valid and max(valid) > gen:
                raise Corruption(
                    f"catalogue {self.path} is at generation {gen} but generation {max(valid)} "
                    f"was committed ({path}): committed transactions were lost, the "
                    f"write-ahead log {self.path}-wal is damaged or truncated")
            if len(valid) == 1:
                self.problems.append(f"{path}: one generation slot is damaged (rewritten)")
                log.warning("%s", self.problems[-1])
        self._gen_fd = os.open(path, os.O_RDWR)
        if slots != [gen, gen]:
            self._write_generation(gen, both=True)

    def _write_generation(self, gen: int, both: bool = False) -> None:
        slot = _gen_slot(gen)
        for k in (0, 1) if both else (gen % 2,):
            os.pwrite(self._gen_fd, slot, k * _GEN_SLOT)
        os.fdatasync(self._gen_fd)

    def rewrite_generation(self) -> None:
        """Make the generation file agree with the catalogue (fsck --repair, after the
        file itself was found damaged)."""
        with self._lock:
            self._write_generation(self.generation, both=True)

    # -- meta ---------------------------------------------------------------
    def init_meta(self, values: dict[str, Any]) -> None:
        """Write the cluster's meta values (create time only); checksummed as a whole."""
        with self.transaction():
            for key, value in values.items():
                self._db.execute("INSERT INTO meta VALUES (?, ?)", (key, repr(value)))
            self._db.execute(
                "INSERT INTO meta VALUES ('ck', ?)", (str(_row_checksum("meta", self._meta_items())),)
            )

    def _meta_items(self) -> tuple:
        rows = self._db.execute("SELECT key, value FROM meta WHERE key != 'ck' ORDER BY key")
        return tuple(rows.fetchall())

    def meta(self) -> dict[str, Any]:
        """The meta values; raises FormatError on a newer format, Corruption on a bad checksum."""
        import ast

        with self._lock:
            try:
                items = self._meta_items()
                ck = self._db.execute("SELECT value FROM meta WHERE key = 'ck'").fetchone()
            except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
                raise Corruption(f"catalogue {self.path}: meta table: {exc}") from exc
        if ck is None or int(ck[0]) != _row_checksum("meta", items):
            raise Corruption(f"catalogue {self.path}: meta table checksum mismatch")
        meta = {key: ast.literal_eval(value) for key, value in items}
        version = meta.get("format_version")
        if not isinstance(version, int) or version > CLUSTER_FORMAT_VERSION:
            raise FormatError(
                f"cluster format version {version} is not supported "
                f"(this nxstore reads up to {CLUSTER_FORMAT_VERSION})"
            )
        return meta

    # -- rows -----------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable catalogue update (nested calls join the outer one)."""
        with self._lock:
            if self._db.in_transaction:
                yield
                return
            self._db.execute("BEGIN IMMEDIATE")
            changes = self._db.total_changes
            try:
                yield
                gen = None
                if self._db.total_changes != changes:
                    gen = self.generation + 1
                    self._db.execute(
                        "INSERT OR REPLACE INTO generation VALUES (1, ?, ?)",
                        (gen, _row_checksum("generation", (1, gen))),
                    )
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:  # SQLite may have rolled back itself
                    self._db.execute("ROLLBACK")
                self._after_commit.clear()
                if _disk_full(exc):
                    raise NoSpace(errno.ENOSPC, f"catalogue {self.path}: {exc}") from exc
                raise
            if gen is not None:  # durable now: from here on, a catalogue without it is damaged
                try:
                    self._write_generation(gen)
                except OSError as exc:
                    raise_os_error(exc, self.generation_path)
            actions, self._after_commit = self._after_commit, []
        for action in actions:
            action()

    def after_commit(self, action: Callable[[], object]) -> None:
        """Run `action` once the current transaction has committed (at once outside
        one; never if it rolls back). For work that must not happen unless the
        catalogue change is durable, such as deleting the files a row names: a crash
        before the commit then still finds every file the surviving rows need."""
        with self._lock:
            if self._db.in_transaction:
                self._after_commit.append(action)
                return
        action()

    def insert(self, row: Row) -> Row:
        """Insert `row`; an id of 0 is replaced by a fresh one. Raises AlreadyExists."""
        table = _TABLES[type(row)]
        names = [f.name for f in fields(row)]
        with self._lock:
            if row.id == 0:
                # AUTOINCREMENT ids are never reused, so OpLog records of a deleted
                # object can never be mistaken for a new one's.
                (seq,) = self._db.execute(
                    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = ?), 0)", (table,)
                ).fetchone()
                (max_id,) = self._db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()
                row.id = max(seq, max_id) + 1
            values = astuple(row)
            marks = ", ".join("?" * (len(names) + 1))
            try:
                self._db.execute(
                    f"INSERT INTO {table} ({', '.join(names)}, ck) VALUES ({marks})",
                    (*values, _row_checksum(table, values)),
                )
            except sqlite3.IntegrityError as exc:
                raise AlreadyExists(f"{table[:-1]} {getattr(row, 'name', row.id)!r} exists") from exc
            except UnicodeEncodeError as exc:
                raise not_utf8(exc) from None
        return row

    def update(self, row: Row) -> None:
        """Rewrite `row` (matched by id)."""
        table = _TABLES[type(row)]
        names = [f.name for f in fields(row)][1:]
        values = astuple(row)
        sets = ", ".join(f"{n} = ?" for n in names)
        with self._lock:
            try:
                cur = self._db.execute(
                    f"UPDATE {table} SET {sets}, ck = ? WHERE id = ?",
                    (*values[1:], _row_checksum(table, values), row.id),
                )
            except UnicodeEncodeError as exc:
                raise not_utf8(exc) from None
        if cur.rowcount != 1:
            raise NotFound(f"{table[:-1]} id {row.id} not found")

    def delete(self, row_type: type[Row], row_id: int) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM {_TABLES[row_type]} WHERE id = ?", (row_id,))

    def rows(self, row_type: type[Row], where: str = "", args: tuple = ()) -> list[Row]:
        """Rows of a table, each verified against its checksum (Corruption otherwise)."""
        table = _TABLES[row_type]
        names = [f.name for f in fields(row_type)]
        sql = f"SELECT {', '.join(names)}, ck FROM {table}"
        if where:
            sql += f" WHERE {where}"
        with self._lock:
            try:
                raw = self._db.execute(sql + " ORDER BY id", args).fetchall()
            except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
                raise Corruption(
                    f"catalogue {self.path}: {table}{self._unreadable_row(table)}: {exc}"
                ) from exc
            except UnicodeEncodeError as exc:  # a name with a lone surrogate: matches nothing
                raise not_utf8(exc) from None
        out = []
        bools = [i for i, f in enumerate(fields(row_type)) if f.type == "bool"]
        for *values, ck in raw:
            for i in bools:
                values[i] = bool(values[i])
            row = row_type(*values)
            typed = astuple(row)
            if ck != _row_checksum(table, typed):
                raise Corruption(f"catalogue {self.path}: {table} row id {values[0]} fails its checksum")
            out.append(row)
        return out

    def _unreadable_row(self, table: str) -> str:
        """' row id N' for the first row of `table` that cannot be read, else ''
        (to name the damage; the caller holds the lock)."""
        try:
            ids = [i for (i,) in self._db.execute(f"SELECT id FROM {table} ORDER BY id")]
            for row_id in ids:
                try:
                    self._db.execute(f"SELECT * FROM {table} WHERE id = ?", (row_id,)).fetchall()
                except (sqlite3.DatabaseError, UnicodeDecodeError):
                    return f" row id {row_id}"
        except (sqlite3.DatabaseError, UnicodeDecodeError):
            pass
        return ""

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._gen_fd >= 0:
                os.close(self._gen_fd)
                self._gen_fd = -1

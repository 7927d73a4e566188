"""The cluster catalogue: containers, vDisks, map layers and snapshots in SQLite.

Kept as one file (about 530 lines) because the row codec, the checksums, the generation
file and the table registry all serve one connection under one lock.

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

The layers above keep their rows in the same database, but each declares its own tables
(`register_table`, called when the layer's rows module is imported: replication/rows.py,
protection/rows.py, nearsync/rows.py; the engine's LWS in lws.py), so the engine names none
of them. Every registered table is created at open, or at first use when its layer was
imported after the catalogue opened; scrub verifies every registered table.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields, is_dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import xxhash

from ..constants import CATALOG_GENERATION_FILE, CATALOG_GENERATION_VERSION, CLUSTER_FORMAT_VERSION
from ..errors import (
    AlreadyExists,
    Corruption,
    FormatError,
    GenerationUnverifiable,
    InvalidArgument,
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


# --- settings: durable, per-cluster configuration (e.g. nxstore.nearsync.state) --------------


@dataclass
class SettingRow:
    """A named group of settings: `value` JSON (an object of the group's settings)."""

    id: int
    name: str
    value: str


# --- the row registry: each layer declares its own tables --------------------------------------


class CatalogRow(Protocol):
    """A catalogue row: a dataclass whose first field is `id: int` (see register_table)."""

    id: int


Row = TypeVar("Row", bound=CatalogRow)


@dataclass(frozen=True)
class _Table:
    name: str
    ddl: str


_TABLES: dict[type, _Table] = {}

# The catalogue's own bookkeeping, not rows: created with every catalogue.
_BASE_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS generation (id INTEGER PRIMARY KEY, value INTEGER NOT NULL,
    ck INTEGER NOT NULL);
"""


def register_table(row_type: type, table: str, ddl: str) -> None:
    """Declare that rows of `row_type` live in `table`, made by `ddl`: one statement
    `CREATE TABLE IF NOT EXISTS <table> (...)` whose columns are the dataclass's fields in
    order, then `ck INTEGER NOT NULL`. Each layer calls this when its rows module is imported.
    A catalogue opened afterwards creates the table at open; one already open creates it at
    the first use of `row_type`. Registering the same again changes nothing; a type or table
    already registered otherwise raises InvalidArgument (a DDL change is a format change)."""
    entry = _Table(table, ddl.strip())
    known = _TABLES.get(row_type)
    if known == entry:
        return
    if known is not None:
        raise InvalidArgument(f"{row_type.__name__} is already registered differently: "
                              f"table {known.name!r}, DDL {known.ddl!r}")
    owner = next((t for t, e in _TABLES.items() if e.name == table), None)
    if owner is not None:
        raise InvalidArgument(f"catalogue table {table!r} already holds {owner.__name__}")
    if not is_dataclass(row_type) or [f.name for f in fields(row_type)][:1] != ["id"]:
        raise InvalidArgument(f"{row_type.__name__}: a catalogue row is a dataclass whose "
                              "first field is id")
    if not entry.ddl.startswith(f"CREATE TABLE IF NOT EXISTS {table} ("):
        raise InvalidArgument(f"{row_type.__name__}: the DDL must be one "
                              f"'CREATE TABLE IF NOT EXISTS {table} (...)' statement")
    _TABLES[row_type] = entry


def registered_row_types() -> list[type]:
    """Every row type registered so far, in registration order (scrub verifies them all)."""
    return list(_TABLES)


register_table(ContainerRow, "containers", """
CREATE TABLE IF NOT EXISTS containers (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    dedup INTEGER, compression INTEGER, verify_dedup INTEGER, ck INTEGER NOT NULL)""")
register_table(VDiskRow, "vdisks", """
CREATE TABLE IF NOT EXISTS vdisks (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    container_id INTEGER, size INTEGER, head_layer INTEGER, created_at REAL,
    read_only INTEGER, ck INTEGER NOT NULL)""")
register_table(LayerRow, "layers", """
CREATE TABLE IF NOT EXISTS layers (id INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER,
    frozen INTEGER, shortcut INTEGER, created_seq INTEGER, ck INTEGER NOT NULL)""")
register_table(SnapshotRow, "snapshots", """
CREATE TABLE IF NOT EXISTS snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, vdisk_id INTEGER, name TEXT,
    layer_id INTEGER, created_at REAL, size INTEGER, ck INTEGER NOT NULL,
    UNIQUE (vdisk_id, name))""")
register_table(SettingRow, "settings", """
CREATE TABLE IF NOT EXISTS settings (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL,
    value TEXT, ck INTEGER NOT NULL)""")


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
        self._created: set[str] | None = None  # tables that exist; None: not a catalogue
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if create or self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'meta'"
            ).fetchone():
                # IF NOT EXISTS: adds tables new in this version (or of a layer new here)
                tables = list(_TABLES.values())
                self._db.executescript(_BASE_SCHEMA + "".join(f"{t.ddl};\n" for t in tables))
                self._created = {t.name for t in tables}
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

    def _table(self, row_type: type) -> str:
        """The table of `row_type`, created first if it was registered after this catalogue
        opened (the caller holds the lock). Raises InvalidArgument for an unregistered type."""
        entry = _TABLES.get(row_type)
        if entry is None:
            raise InvalidArgument(f"{row_type.__name__} is not a registered catalogue row type")
        if self._created is not None and entry.name not in self._created:
            try:
                self._db.execute(entry.ddl)
            except sqlite3.DatabaseError as exc:
                if _disk_full(exc):
                    raise NoSpace(errno.ENOSPC, f"catalogue {self.path}: {exc}") from exc
                raise Corruption(f"catalogue {self.path}: creating {entry.name}: {exc}") from exc
            if self._db.in_transaction:  # the table exists once the transaction commits
                self._after_commit.append(partial(self._created.add, entry.name))
            else:
                self._created.add(entry.name)
        return entry.name

    def insert(self, row: Row) -> Row:
        """Insert `row`; an id of 0 is replaced by a fresh one. Raises AlreadyExists."""
        names = [f.name for f in fields(row)]
        with self._lock:
            table = self._table(type(row))
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
        names = [f.name for f in fields(row)][1:]
        values = astuple(row)
        sets = ", ".join(f"{n} = ?" for n in names)
        with self._lock:
            table = self._table(type(row))
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
            self._db.execute(f"DELETE FROM {self._table(row_type)} WHERE id = ?", (row_id,))

    def rows(self, row_type: type[Row], where: str = "", args: tuple = ()) -> list[Row]:
        """Rows of a table, each verified against its checksum (Corruption otherwise)."""
        names = [f.name for f in fields(row_type)]
        with self._lock:
            table = self._table(row_type)
            sql = f"SELECT {', '.join(names)}, ck FROM {table}"
            if where:
                sql += f" WHERE {where}"
            try:
                raw = self._db.execute(sql + " ORDER BY id", args).fetchall()
            except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
                raise Corruption(
                    f"catalogue {self.path}: {table}{self._unreadable_row(table)}: {exc}"
                ) from exc
            except UnicodeEncodeError as exc:  # a name with a lone surrogate: matches nothing
                raise not_utf8(exc) from None
        out = []
        # f.type: the class bool, or the string "bool" under `from __future__ import annotations`
        bools = [i for i, f in enumerate(fields(row_type)) if f.type in ("bool", bool)]
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

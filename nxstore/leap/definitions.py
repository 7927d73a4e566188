"""Policy and plan definitions, kept alike at every zone they name.

A definition is a JSON spec under a kind ("policy" or "plan") and a name, at a version that
every change increments. The cluster where it changes stores it and then delivers it to
every other cluster of every zone the spec names (LEAP "put" / "drop"); a cluster keeps the
highest version it has seen. A cluster that cannot be reached is owed the version: the Leap
tick (`deliver_owed`, run with the schedules) retries until it arrives; a cluster that
joins a zone later is owed the definitions naming that zone (`owe_zone`). A spec names its
zones in "primary" (a str) and "recovery" (a str or a list of str), and a policy's spec
the cluster of each in "clusters" ({zone: cluster}); a spec without it (written before
zones grouped clusters) names in each zone the cluster called like the zone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from ..errors import AlreadyExists, NotFound, NxError
from ..protection.manager import ProtectionManager
from .rows import DefinitionRow
from .zones import zone_sites

log = logging.getLogger(__name__)

KINDS = ("policy", "plan")
_WORDS = {"policy": "protection policy", "plan": "recovery plan"}


@dataclass(frozen=True)
class Definition:
    kind: str
    name: str
    spec: dict[str, Any]
    version: int
    owed: tuple[str, ...]

    @property
    def zones(self) -> tuple[str, ...]:
        """Every zone the spec names, primary first."""
        recovery = self.spec.get("recovery", [])
        found = [self.spec.get("primary", "")]
        found += [recovery] if isinstance(recovery, str) else list(recovery)
        return tuple(dict.fromkeys(z for z in found if z))

    def cluster(self, zone: str) -> str:
        """The cluster the spec names in `zone` (module docstring)."""
        return str(self.spec.get("clusters", {}).get(zone, zone))


def _targets(mgr: ProtectionManager, *ds: Definition) -> list[str]:
    """The clusters definitions `ds` go to: every member of each zone they name as known
    here (of a zone not known here: the cluster the spec names), but this site."""
    found = [site for d in ds for z in d.zones for site in (zone_sites(mgr, z) or (d.cluster(z),))]
    return [s for s in dict.fromkeys(found) if s != mgr.cluster.site_name]


def _definition(row: DefinitionRow) -> Definition:
    return Definition(row.kind, row.name, json.loads(row.spec), row.version,
                      tuple(json.loads(row.owed)))


def _rows(mgr: ProtectionManager, kind: str, name: str) -> list[DefinitionRow]:
    return mgr.catalog.rows(DefinitionRow, "kind = ? AND name = ?", (kind, name))


def get_definition(mgr: ProtectionManager, kind: str, name: str) -> Definition:
    rows = _rows(mgr, kind, name)
    if not rows:
        raise NotFound(f"no {_WORDS[kind]} {name!r} at site {mgr.cluster.site_name!r}")
    return _definition(rows[0])


def list_definitions(mgr: ProtectionManager, kind: str) -> list[Definition]:
    rows = mgr.catalog.rows(DefinitionRow, "kind = ?", (kind,))
    return sorted((_definition(r) for r in rows), key=lambda d: d.name)


def all_definitions(mgr: ProtectionManager) -> list[Definition]:
    return [d for kind in KINDS for d in list_definitions(mgr, kind)]


def store(mgr: ProtectionManager, kind: str, name: str, spec: dict[str, Any], *,
          new: bool) -> Definition:
    """Store `spec` as the next version of definition (kind, name) and deliver it to the
    other clusters of the zones it names (and of those the previous version named).
    `new`: AlreadyExists if it exists; else NotFound if it does not. Durable here on
    return; a cluster that cannot be reached is owed it (module docstring)."""
    with mgr.lock, mgr.catalog.transaction():
        rows = _rows(mgr, kind, name)
        if new and rows:
            raise AlreadyExists(f"{_WORDS[kind]} {name!r} exists")
        if not new and not rows:
            raise NotFound(f"no {_WORDS[kind]} {name!r} at site {mgr.cluster.site_name!r}")
        before = [_definition(rows[0])] if rows else []
        draft = Definition(kind, name, spec, rows[0].version + 1 if rows else 1, ())
        owed = _targets(mgr, draft, *before)
        text = json.dumps(spec, sort_keys=True)
        if rows:
            row = rows[0]
            row.spec, row.version, row.owed, row.updated_at = (text, draft.version,
                                                               json.dumps(owed), mgr.now())
            mgr.catalog.update(row)
        else:
            mgr.catalog.insert(DefinitionRow(0, kind, name, text, draft.version,
                                             json.dumps(owed), mgr.now()))
    deliver_owed(mgr, kind, name)
    return get_definition(mgr, kind, name)


def delete(mgr: ProtectionManager, kind: str, name: str) -> None:
    """Delete definition (kind, name) here and at the clusters of the zones it names (best
    effort: one that cannot be reached keeps its copy until deleted there). Raises
    NotFound."""
    d = get_definition(mgr, kind, name)
    with mgr.lock, mgr.catalog.transaction():
        for row in _rows(mgr, kind, name):
            mgr.catalog.delete(DefinitionRow, row.id)
    from .remote import call

    for site in _targets(mgr, d):
        try:
            call(mgr.cluster, site, "drop", {"kind": kind, "name": name, "version": d.version})
        except NxError as exc:
            log.warning("%s %s deleted here but not at cluster %s: %s", _WORDS[kind], name,
                        site, exc)


def deliver_owed(mgr: ProtectionManager, kind: str | None = None,
                 name: str | None = None) -> list[str]:
    """Deliver owed definitions (all, or just (kind, name)); the clusters still owed one,
    as "cluster: reason"."""
    from .remote import call

    failed = []
    for row in mgr.catalog.rows(DefinitionRow):
        if (kind, name) != (None, None) and (row.kind, row.name) != (kind, name):
            continue
        d = _definition(row)
        for site in d.owed:
            try:
                call(mgr.cluster, site, "put", {"kind": d.kind, "name": d.name,
                                                "spec": d.spec, "version": d.version})
            except NxError as exc:
                failed.append(f"{site}: {exc}")
                log.warning("%s %s v%d not delivered to cluster %s yet: %s", _WORDS[d.kind],
                            d.name, d.version, site, exc)
                continue
            with mgr.lock, mgr.catalog.transaction():
                for fresh in _rows(mgr, d.kind, d.name):
                    if fresh.version == d.version:
                        fresh.owed = json.dumps([z for z in json.loads(fresh.owed) if z != site])
                        mgr.catalog.update(fresh)
    return failed


def owe_zone(mgr: ProtectionManager, zone: str, site: str) -> list[str]:
    """Cluster `site` joined zone `zone`: owe it every definition naming the zone and
    deliver those now (the clusters still owed one, as `deliver_owed` says)."""
    changed = []
    with mgr.lock, mgr.catalog.transaction():
        for row in mgr.catalog.rows(DefinitionRow):
            owed = json.loads(row.owed)
            if zone in _definition(row).zones and site not in owed:
                row.owed = json.dumps([*owed, site])
                mgr.catalog.update(row)
                changed.append((row.kind, row.name))
    return [f for kind, name in changed for f in deliver_owed(mgr, kind, name)]


def receive(mgr: ProtectionManager, kind: str, name: str, spec: dict[str, Any],
            version: int) -> int:
    """A zone delivered version `version` of (kind, name): keep it if it is newer than
    the one held. Returns the version held afterwards."""
    with mgr.lock, mgr.catalog.transaction():
        rows = _rows(mgr, kind, name)
        if rows and rows[0].version >= version:
            return rows[0].version
        text = json.dumps(spec, sort_keys=True)
        if rows:
            rows[0].spec, rows[0].version, rows[0].owed = text, version, "[]"
            rows[0].updated_at = mgr.now()
            mgr.catalog.update(rows[0])
        else:
            mgr.catalog.insert(DefinitionRow(0, kind, name, text, version, "[]", mgr.now()))
    return version


def receive_drop(mgr: ProtectionManager, kind: str, name: str, version: int) -> int:
    """A zone deleted (kind, name) at `version`: delete it here unless newer. Returns the
    version held afterwards (0: none)."""
    with mgr.lock, mgr.catalog.transaction():
        for row in _rows(mgr, kind, name):
            if row.version > version:
                return row.version
            mgr.catalog.delete(DefinitionRow, row.id)
    return 0


def category_user(mgr: ProtectionManager, key: str) -> str | None:
    """The policies and plans here that name category `key` ("protection policy 'x'",
    ...), or None: what ProtectionManager.category_users asks before deleting one."""
    found = []
    for d in all_definitions(mgr):
        names = [k for k, _ in d.spec.get("categories", [])]
        names += [k for stage in d.spec.get("stages", []) for k, _ in stage["categories"]]
        if key in names:
            found.append(f"{_WORDS[d.kind]} {d.name!r}")
    return ", ".join(found) or None

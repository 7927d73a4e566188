"""The Metro state machine of one protection domain at one site (`MetroPair`).

Active site (owns the PD, acknowledges writes):

    resyncing --(standby caught up, stream open)--> synchronous
    synchronous --(a flush or heartbeat gets no answer)--> stalled
    stalled --(link back: resync)--> resyncing --> synchronous
    stalled --(break_timeout, automatic; or `break`: witness CAS won)--> broken
    stalled --(neither peer nor witness answers)--> suspended (IO blocked)
    broken --(peer back: delta resync)--> resyncing --> synchronous (automatic) or on `resume`
    any --(the witness or the peer shows another site active in a newer epoch)--> fenced
    fenced --(peer reachable)--> demoted: standby of the new active

Standby site (holds the read-only replicas): `standby` while the active streams to it,
catching up or gone; with `break_mode="automatic"` and a witness, an active that stays
silent for twice the break timeout is replaced: the standby wins the witness CAS for the
next epoch and is promoted (its replicas become the PD's vDisks, VMs registered and powered
on as in activate). Without the witness nothing changes roles unless an operator runs
`promote --force`.

Every role change goes through the witness's compare-and-set, so at most one site holds an
epoch; a site acknowledges writes only in an epoch it holds alone (`broken`) or while the
standby of the same epoch holds them too (`synchronous`: the standby refuses a stream of any
other epoch). Epoch, role and the checkpoint (the newest snapshot both sites hold: the base
of the next delta resync) are in the catalogue (MetroRow) before they take effect, so a
restart never forgets a fence.

The dirty map after a break is the block-map difference between the checkpoint snapshot and
the live vDisks: the engine keeps it crash-safe, and a resync replicates a fresh snapshot
incrementally on the checkpoint (only what the standby lacks crosses the wire, deduplicated),
then catches up in rounds and switches to synchronous with writes held for the last round.

Kept as one file (about 540 lines) because a pair's transitions must be read together: a
break at one site is a refused promotion at the other, a promotion there a fence here, and
the resync of one is the setup of the other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import (
    AuthenticationError,
    InvalidArgument,
    LinkDown,
    MetroFenced,
    NotFound,
    NxError,
    ProtocolError,
    WitnessUnreachable,
)
from ..protection.domain import ACTIVE
from ..protection.modes import MetroState, WitnessView
from ..protection.ownership import adopt, demote, usable_snapshots
from ..protection.rows import PDSnapshotRow
from ..replication import source
from ..replication.replica import find_replica
from ..replication.sites import get_site
from ..store.snapshot import Snapshot, take_snapshots
from . import control
from .gate import ALONE, FENCED, SYNC, TRACK, WriteGate
from .mirror import MirrorLink
from .rows import MetroRow
from .witness_client import WitnessClient

if TYPE_CHECKING:
    from ..protection.manager import ProtectionManager
    from ..store.engine import Engine
    from ..store.vdisk import VDisk

log = logging.getLogger(__name__)

ROLE_ACTIVE, ROLE_STANDBY = "active", "standby"
RESYNCING, SYNCHRONOUS, STALLED, BROKEN, SUSPENDED, FENCED_STATE, STANDBY = (
    "resyncing", "synchronous", "stalled", "broken", "suspended", "fenced", "standby")
STATES = (RESYNCING, SYNCHRONOUS, STALLED, BROKEN, SUSPENDED, FENCED_STATE, STANDBY)
AUTOMATIC, MANUAL = "automatic", "manual"
CATCH_UP_ROUNDS = 8  # resync rounds before the last one holds writes regardless
CATCH_UP_BLOCKS = 1024  # blocks changed during a round small enough to hold writes for


class MetroPair:
    """One Metro pair at this site (module docstring). Thread-safe; `step()` advances it
    once (the service's thread calls it every tick)."""

    def __init__(self, engine: Engine, manager: Callable[[], ProtectionManager],
                 row: MetroRow) -> None:
        self.engine = engine
        self._manager = manager  # () -> ProtectionManager
        self.row = row
        self.lock = threading.RLock()  # one transition at a time
        self.gate: WriteGate | None = None
        self.link: MirrorLink | None = None
        self.peer_seen = time.monotonic()  # standby: the last time the active answered
        self.stalled_since: float | None = None
        self.resync_progress = (0, 0)
        self.stream_epoch = 0  # standby: epoch of the stream open now (0: none)
        self.peer_witness = ""  # the witness as the peer reaches it (sent at setup)
        self.controlled = False  # a Metro thread ticks this pair (`nxstore serve`)

    # -- persistence -----------------------------------------------------------------------
    def save(self, **changes: Any) -> None:
        """Change the row durably (one catalogue transaction) before acting on it."""
        cat = self.engine.ctx.catalog
        new = replace(self.row, changed_at=time.time(), **changes)
        with cat.transaction():
            cat.update(new)
        self.row = new

    @property
    def mgr(self) -> ProtectionManager:
        return self._manager()

    @property
    def is_active(self) -> bool:
        return self.row.role == ROLE_ACTIVE

    def witness(self, timeout: float | None = None) -> WitnessClient:
        return WitnessClient(self.row.witness, self.row.witness_secret, self.engine.site_name,
                             self.engine.id, timeout=timeout or max(1.0, self.row.break_timeout))

    def witness_view(self) -> WitnessView:
        try:
            rec = self.witness().get(self.row.pair_id)
        except (WitnessUnreachable, AuthenticationError, ProtocolError) as exc:
            return WitnessView(False, 0, "", str(exc))
        return WitnessView(True, rec.epoch, rec.active_site) if rec else WitnessView(
            True, 0, "", "the witness has no record of this pair")

    # -- the active site's vDisks ------------------------------------------------------------
    def vdisks(self) -> list[VDisk]:
        pd = self.mgr.pd_row(self.row.pd_name)
        from ..protection.domain import ProtectionDomain

        return [self.engine.vdisk(n) for n in ProtectionDomain(self.mgr, pd.name).vdisk_names()]

    def install_gate(self, mode: str) -> WriteGate:
        """Make every vDisk of the PD write through this pair's gate (active site)."""
        gate = self.gate or WriteGate(self.row.pd_name, self.row.break_timeout)
        gate.controlled = self.controlled
        gate.set_mode(mode)
        self.gate = gate
        for vd in self.vdisks():
            self.engine.set_mirror(vd.name, gate)
        return gate

    def remove_gate(self) -> None:
        if self.gate is not None:
            self.gate.set_mode(TRACK)
        for vd in self.engine.vdisks():
            if getattr(vd, "_mirror", None) is self.gate:
                self.engine.set_mirror(vd.name, None)
        self.gate = None
        self.close_link()

    def close_link(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            if self.gate is not None:
                self.gate.link_failed(link)
            try:
                link.close()
            except NxError as exc:
                log.debug("closing the mirror link: %s", exc)

    # -- talking to the peer ------------------------------------------------------------------
    def ask_peer(self, op: str, body: dict[str, Any] | None = None,
                 timeout: float | None = None) -> dict[str, Any]:
        """One Metro request to the peer; NxError when it cannot be reached in time."""
        full = {"pd": self.row.pd_name, "pair": self.row.pair_id, **(body or {})}
        return control.call(self.engine, self.row.peer_site, op, full,
                            timeout or max(2.0, self.row.break_timeout))

    def peer_status(self) -> dict[str, Any] | None:
        try:
            return self.ask_peer("status")
        except NxError as exc:
            log.debug("PD %s: Metro peer %s: %s", self.row.pd_name, self.row.peer_site, exc)
            return None

    # -- one tick --------------------------------------------------------------------------
    def step(self) -> None:
        with self.lock:
            if self.is_active:
                self._step_active()
            else:
                self._step_standby()

    def _step_active(self) -> None:
        state, gate = self.row.state, self.gate
        if gate is None:
            return
        if state == SYNCHRONOUS:
            if self._heartbeat():
                return
            self.stalled_since = time.monotonic()
            self.save(state=STALLED)
            state = STALLED
        if state == FENCED_STATE:
            self._try_demote()
            return
        peer = self.peer_status()
        if peer is not None and self._fenced_by(peer):
            return
        catch_up = state in (STALLED, SUSPENDED, RESYNCING) or (
            state == BROKEN and self.row.break_mode == AUTOMATIC)
        if catch_up and peer is not None and peer.get("exists", True):
            self.resync()
            return
        if state in (STALLED, SUSPENDED):
            waited = time.monotonic() - (self.stalled_since or time.monotonic())
            if self.row.break_mode == AUTOMATIC and waited >= self.row.break_timeout:
                self.break_link(operator=False)

    def _heartbeat(self) -> bool:
        """Synchronous: does the standby still answer (a flush barrier: nothing to write
        costs one round trip)? False when the link failed or the gate left SYNC."""
        link, gate = self.link, self.gate
        if link is None or gate is None or gate.mode != SYNC:
            return False
        waiting = gate.waiting_since()
        if waiting is not None and time.monotonic() - waiting > self.row.break_timeout:
            self.close_link()
            return False
        try:
            link.flush(timeout=self.row.break_timeout)
        except LinkDown:
            self.close_link()
            return False
        gate.last_sync_flush = time.time()
        return True

    def _fenced_by(self, peer: dict[str, Any]) -> bool:
        """The peer is active in a newer epoch: stop acknowledging, demote when possible."""
        if peer.get("role") == ROLE_ACTIVE and int(peer.get("epoch", 0)) > self.row.epoch:
            self.fence(f"site {self.row.peer_site!r} is active in epoch {peer['epoch']}")
            self._demote(peer)
            return True
        return False

    def fence(self, reason: str) -> None:
        if self.gate is not None:
            self.gate.set_mode(FENCED, reason)
        self.close_link()
        if self.row.state != FENCED_STATE:
            log.warning("PD %s: Metro fenced at site %s: %s", self.row.pd_name,
                        self.engine.site_name, reason)
            self.save(state=FENCED_STATE, note=reason)

    # -- break ---------------------------------------------------------------------------------
    def break_link(self, *, operator: bool) -> MetroState | None:
        """The active site continues alone in the next epoch, if the witness agrees.
        Raises MetroFenced (another site holds it), WitnessUnreachable (then IO stays
        suspended, automatic only)."""
        e = self.row.epoch
        self.close_link()
        try:
            ok, rec = self.witness().cas(self.row.pair_id, e, e + 1, self.engine.site_name)
        except WitnessUnreachable as exc:
            if self.row.state != SUSPENDED:
                log.error("PD %s: Metro: neither the peer nor the witness answers: IO "
                          "suspended (%s)", self.row.pd_name, exc)
                self.save(state=SUSPENDED, note=f"witness unreachable: {exc}")
            if operator:
                raise
            return None
        if not ok:
            reason = (f"the witness gave epoch {rec.epoch} to site {rec.active_site!r}"
                      if rec else "the witness refused the break")
            self.fence(reason)
            if operator:
                raise MetroFenced(f"protection domain {self.row.pd_name!r}: {reason}")
            return None
        self.save(epoch=e + 1, acked_epoch=e + 1, state=BROKEN,
                  note=f"broken at epoch {e + 1}: site {self.engine.site_name!r} continues "
                       "alone")
        log.warning("PD %s: Metro broken: site %s continues alone in epoch %d",
                    self.row.pd_name, self.engine.site_name, e + 1)
        if self.gate is not None:
            self.gate.set_mode(ALONE)
        self.stalled_since = None
        return None

    # -- resync ----------------------------------------------------------------------------------
    def resync(self) -> None:
        """Bring the standby up to this site's vDisks and switch to synchronous (see module
        docstring). Failures leave the state as it was (a later tick retries)."""
        gate = self.gate
        assert gate is not None
        prev = self.row.state
        try:
            peer = self.ask_peer("setup", self._setup_body())
            if self._fenced_by(peer):
                return
            self.save(state=RESYNCING if prev != SUSPENDED else prev)
            replicas = peer["replicas"]
            self._catch_up(replicas)
        except (NxError, OSError, asyncio.TimeoutError) as exc:
            log.warning("PD %s: Metro resync to %s failed: %s", self.row.pd_name,
                        self.row.peer_site, exc)
            self.close_link()
            if prev == BROKEN:
                gate.set_mode(ALONE)
                self.save(state=BROKEN)
            elif self.row.state == RESYNCING and prev in (STALLED, SUSPENDED):
                self.save(state=prev)
            return

    def _setup_body(self) -> dict[str, Any]:
        r = self.row
        return {"epoch": r.epoch, "peer_site": self.engine.site_name, "witness": r.witness,
                "standby_witness": self.peer_witness or r.witness,
                "pd_epoch": self.mgr.pd_row(r.pd_name).epoch,
                "witness_secret": r.witness_secret, "break_mode": r.break_mode,
                "break_timeout": r.break_timeout, "rtt_limit": r.rtt_limit,
                "checkpoint": r.checkpoint}

    def _catch_up(self, replicas: dict[str, str]) -> None:
        gate = self.gate
        assert gate is not None
        vds = self.vdisks()
        missing = [vd.name for vd in vds if vd.name not in replicas]
        if missing:
            raise NotFound(f"site {self.row.peer_site!r} holds no replica of {missing}")
        base = self.row.checkpoint
        for rnd in range(CATCH_UP_ROUNDS):
            name = f"{self.row.pd_name}.metro-e{self.row.epoch}-{int(time.time() * 1000)}-{rnd}"
            if rnd == CATCH_UP_ROUNDS - 1 or (base and self._changed(vds, base)
                                               <= CATCH_UP_BLOCKS):
                break
            snaps = take_snapshots(self.engine.ctx, vds, name)
            self._ship(snaps)
            self._drop_snapshot(vds, base, keep=name)
            base = name
            self.save(checkpoint=base)
        # The last round: hold writes from the snapshot on, ship it, open the stream.
        name = f"{self.row.pd_name}.metro-e{self.row.epoch}-{int(time.time() * 1000)}"
        from ..store.vdisk import lock_group

        with lock_group(vds, "a vDisk is named twice in the protection domain"):
            gate.hold()
            snaps = take_snapshots(self.engine.ctx, vds, name)
        try:
            self._ship(snaps)
            link = MirrorLink(self.engine, get_site(self.engine.ctx.catalog, self.row.peer_site),
                              self.row.pair_id, self.row.epoch,
                              {vd.name: replicas[vd.name] for vd in vds})
            link.open()
        except BaseException:
            gate.set_mode(ALONE if self.row.acked_epoch == self.row.epoch and
                          self.row.state == BROKEN else TRACK)
            raise
        self.link = link
        gate.start(link)
        self._drop_snapshot(vds, base, keep=name)
        # acked_epoch 0: whatever this site acknowledged alone is at the standby now
        self.save(state=SYNCHRONOUS, checkpoint=name, acked_epoch=0, note="")
        self.stalled_since = None
        gate.last_sync_flush = time.time()
        log.info("PD %s: Metro synchronous with %s (epoch %d, checkpoint %s)",
                 self.row.pd_name, self.row.peer_site, self.row.epoch, name)

    def _ship(self, snaps: list[Snapshot]) -> None:
        remote = get_site(self.engine.ctx.catalog, self.row.peer_site)

        def progress(phase: str, done: int, total: int, _wire: int) -> None:
            if phase == "blocks":
                self.resync_progress = (done, total)

        coro = source.replicate(self.engine, snaps, remote, progress, None)
        source.run(asyncio.wait_for(coro, max(60.0, 20 * self.row.break_timeout)))

    def _changed(self, vds: list[VDisk], base: str) -> int:
        total = 0
        for vd in vds:
            snap = next((s for s in vd.snapshots() if s.name == base), None)
            if snap is None:
                return 1 << 62  # no common base here: ship everything
            bs = self.engine.block_size
            total += sum(-(-length // bs) for _, length in vd.changed_blocks(snap))
        return total

    def dirty_blocks(self) -> int:
        if not self.is_active or not self.row.checkpoint:
            return 0
        try:
            changed = self._changed(self.vdisks(), self.row.checkpoint)
        except NxError:
            return 0
        return 0 if changed >= 1 << 62 else changed

    @staticmethod
    def _drop_snapshot(vds: list[VDisk], name: str, keep: str) -> None:
        if not name or name == keep:
            return
        for vd in vds:
            for s in vd.snapshots():
                if s.name == name:
                    s.delete()

    # -- demotion (this site was active; another one holds a newer epoch) ---------------------
    def _try_demote(self) -> None:
        peer = self.peer_status()
        if peer is not None and peer.get("role") == ROLE_ACTIVE:
            self._demote(peer)

    def _demote(self, peer: dict[str, Any]) -> None:
        mgr = self.mgr
        row = self.row
        alone = row.acked_epoch == row.epoch > 0  # it acknowledged alone in its epoch
        dirty = self.dirty_blocks()
        self.remove_gate()
        pd_row = mgr.pd_row(row.pd_name)
        if pd_row.state == ACTIVE:
            demote(mgr, row.pd_name, int(peer["pd_epoch"]), self.row.peer_site,
                   str(peer["cluster"]), f"Metro: {self.row.peer_site} is active in epoch "
                   f"{peer['epoch']}", keep_diverged=alone)
        if alone:
            note = (f"writes acknowledged alone in epoch {row.acked_epoch} are kept on "
                    f"snapshot {row.pd_name}.diverged-e{peer['pd_epoch']}")
        else:
            note = (f"demoted: writes made here after the last synchronous flush were never "
                    f"acknowledged and are discarded (up to {dirty} blocks changed since "
                    f"checkpoint {row.checkpoint})")
        log.warning("PD %s: Metro: %s", row.pd_name, note)
        self.save(role=ROLE_STANDBY, epoch=int(peer["epoch"]), state=STANDBY, note=note)
        self.peer_seen = time.monotonic()

    # -- the standby ------------------------------------------------------------------------------
    def _step_standby(self) -> None:
        peer = self.peer_status()
        now = time.monotonic()
        if peer is not None:
            self.peer_seen = now
            epoch = int(peer.get("epoch", 0))
            if peer.get("role") == ROLE_ACTIVE and epoch > self.row.epoch:
                self.save(epoch=epoch, state=STANDBY,
                          note=f"site {self.row.peer_site!r} continues alone in epoch {epoch}")
            return
        # Promote only a standby that was in step with the active when it went silent
        # (an outdated one, behind a break or a resync, would lose acknowledged writes),
        # and only after twice the break timeout: an active that is alive breaks first.
        silent = now - self.peer_seen
        if (self.row.break_mode == AUTOMATIC and self.row.witness
                and self.row.state == SYNCHRONOUS and silent >= 2 * self.row.break_timeout):
            try:
                self.promote(force=False, operator=False)
            except (WitnessUnreachable, MetroFenced) as exc:
                log.info("PD %s: Metro standby stays: %s", self.row.pd_name, exc)

    def promote(self, *, force: bool, operator: bool = True, power_on: bool = True) -> None:
        """Make this standby the active site in the next epoch: it must be in step (it
        streamed in its epoch and saw no later one) and the witness must agree; `force`
        skips both (the operator accepts what the standby lacks). Raises MetroFenced
        (another site holds the epoch), WitnessUnreachable (without force), InvalidArgument
        (not a standby, or not in step without force). `power_on` False: the VMs stay off
        (a recovery plan starts them by stage)."""
        if self.is_active:
            raise InvalidArgument(f"protection domain {self.row.pd_name!r} is active here "
                                  "already")
        e = self.row.epoch
        if self.row.state != SYNCHRONOUS and not force:
            # In step = a stream of epoch e was accepted here and no later epoch was seen
            # since: only then are the active's acknowledged writes all in the replicas.
            raise InvalidArgument(
                f"protection domain {self.row.pd_name!r}: this standby is not known to hold "
                f"every write acknowledged in Metro epoch {e} (it is {self.row.state}: behind "
                "a resync or a break); `promote --force` accepts losing them")
        try:
            ok, rec = self.witness().cas(self.row.pair_id, e, e + 1, self.engine.site_name)
        except WitnessUnreachable:
            if not force:
                raise
            ok, rec = True, None
            log.warning("PD %s: Metro promote forced without the witness (epoch %d)",
                        self.row.pd_name, e + 1)
        if not ok:
            assert rec is not None
            if rec.epoch > self.row.epoch:  # out of step with that epoch's writes: never
                self.save(epoch=rec.epoch, state=STANDBY,  # promote from here on its own
                          note=f"site {rec.active_site!r} holds epoch {rec.epoch}")
            raise MetroFenced(f"protection domain {self.row.pd_name!r}: the witness gave epoch "
                              f"{rec.epoch} to site {rec.active_site!r}")
        self.stream_epoch = 0
        self.save(role=ROLE_ACTIVE, epoch=e + 1, acked_epoch=e + 1, state=BROKEN,
                  note=f"promoted in epoch {e + 1}: {self.row.peer_site!r} "
                       f"{'did not answer' if not operator else 'was replaced by an operator'}")
        self._adopt(e + 1, power_on)
        self.install_gate(ALONE)
        log.warning("PD %s: Metro: site %s promoted (epoch %d)", self.row.pd_name,
                    self.engine.site_name, e + 1)

    def _adopt(self, epoch: int, power_on: bool = True) -> None:
        """The PD becomes active here from the replicas' heads (everything the old active
        acknowledged), with VMs registered and powered on as in activate."""
        mgr, cat = self.mgr, self.engine.ctx.catalog
        pd_row = mgr.pd_row(self.row.pd_name)
        if pd_row.state == ACTIVE:
            return
        usable = usable_snapshots(mgr, pd_row.name)
        if not usable:
            raise NotFound(f"protection domain {pd_row.name!r}: no complete PD snapshot here "
                           "to take the VM configuration from")
        manifest = json.loads(usable[-1].manifest)
        names = [m["vdisk"] for e in manifest for m in e["members"]]
        replicas = []
        for n in names:
            rep = find_replica(self.engine, pd_row.owner_cluster, n)
            if rep is None:
                raise NotFound(f"protection domain {pd_row.name!r}: no replica of {n!r} here")
            replicas.append(self.engine.vdisk(rep.name))
        name = f"{pd_row.name}.metro-promoted-e{epoch}"
        if not all(any(s.name == name for s in vd.snapshots()) for vd in replicas):
            take_snapshots(self.engine.ctx, replicas, name, replicas=True)
        with cat.transaction():
            if not cat.rows(PDSnapshotRow, "pd_id = ? AND name = ?", (pd_row.id, name)):
                cat.insert(PDSnapshotRow(0, pd_row.id, name, self.engine.ctx.clock(), 0,
                                         "crash", True, usable[-1].manifest, "[]"))
        adopt(mgr, pd_row.name, snapshot=name, epoch=pd_row.epoch + 1,
              power_on=None if power_on else [], peer_site=self.row.peer_site,
              keep_remote_rename={self.engine.site_name: self.row.peer_site})

    # -- reporting -------------------------------------------------------------------------------
    def state(self) -> MetroState:
        r = self.row
        since = None
        if self.gate is not None and self.gate.last_sync_flush:
            since = max(0.0, time.time() - self.gate.last_sync_flush)
        state = r.state
        if not self.is_active:  # synchronous while a stream of its epoch is open
            state = SYNCHRONOUS if self.stream_epoch == r.epoch and self.stream_epoch else (
                STANDBY if r.state == SYNCHRONOUS else r.state)
        done, total = self.resync_progress if r.state == RESYNCING else (0, 0)
        return MetroState(r.pd_name, r.role, state, r.epoch, r.peer_site, r.witness,
                          self.witness_view(), since,
                          self.dirty_blocks() if r.state in (BROKEN, RESYNCING, STALLED,
                                                             SUSPENDED) else 0,
                          done, total, r.break_mode, r.break_timeout, r.checkpoint, r.note)


"""Metro on one open cluster: its pairs, what the peer asks, and the thread that ticks them.

`MetroService` is what the facade registers on the ProtectionManager
(`protection.modes.SynchronousReplication`): `ProtectionDomain.enable_metro` and the other
metro methods arrive here. At open it loads every MetroRow, puts the active pairs' vDisks
behind their write gates (flushes wait until the standby is caught up again: what the
standby holds of the last unacknowledged writes is unknown after a restart), and answers
the peer's Metro requests and mirror streams on the replication target.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import (
    AlreadyExists,
    InvalidArgument,
    MetroFenced,
    NotFound,
    NxError,
)
from ..protection.domain import ACTIVE, ProtectionDomain
from ..protection.modes import MetroState
from ..protection.pdsnapshot import replicate_pd_snapshot, take_pd_snapshot
from ..protection.rows import PDScheduleRow
from ..replication import source
from ..replication.messages import Ping, Pong
from ..replication.protocols import target_protocols
from ..replication.rows import ReplicaRow
from ..replication.sites import check_secret, get_site, parse_address
from . import control, mirror
from .applier import Grant
from .controller import (
    AUTOMATIC,
    BROKEN,
    FENCED_STATE,
    MANUAL,
    RESYNCING,
    ROLE_ACTIVE,
    ROLE_STANDBY,
    STALLED,
    SYNCHRONOUS,
    MetroPair,
)
from .gate import ALONE, FENCED, TRACK
from .rows import MetroRow
from .witness_client import WitnessClient

if TYPE_CHECKING:
    from ..protection.manager import ProtectionManager
    from ..replication.messages.metro import MetroOpen
    from ..store.engine import Engine

log = logging.getLogger(__name__)

DEFAULT_BREAK_TIMEOUT = 15.0  # seconds a flush may stall before an automatic break
DEFAULT_RTT_LIMIT = 0.005  # seconds: Metro refuses a peer further away than this


class MetroService:
    """Metro on one open cluster (module docstring)."""

    def __init__(self, engine: Engine, manager: Callable[[], ProtectionManager]) -> None:
        self.engine = engine
        self._manager = manager
        self.pairs: dict[str, MetroPair] = {}  # by PD name
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def attach(self) -> None:
        """Serve the peer's requests and streams; put the active pairs' vDisks behind their
        gates. Called by the facade at open, before the drain thread starts."""
        protocols = target_protocols(self.engine)
        control.register(protocols, self._handle)
        mirror.register(protocols, self.engine, self._accept)
        for row in self.engine.ctx.catalog.rows(MetroRow):
            pair = MetroPair(self.engine, self._manager, row)
            self.pairs[row.pd_name] = pair
            if row.role != ROLE_ACTIVE:
                continue
            if row.state == BROKEN:
                pair.install_gate(ALONE)
            elif row.state == FENCED_STATE:
                pair.install_gate(FENCED)
            else:  # the stream is gone: catch the standby up before acknowledging again
                pair.install_gate(ALONE if row.acked_epoch == row.epoch and not row.checkpoint
                                  else TRACK)
                pair.stalled_since = time.monotonic()
                if row.state == SYNCHRONOUS:
                    pair.save(state=STALLED)

    def start(self) -> None:
        """Tick every pair from a background thread (the facade calls it with the drain)."""
        for pair in self.pairs.values():
            pair.controlled = True
            if pair.gate is not None:
                pair.gate.controlled = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nxstore-metro",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for pair in self.pairs.values():
            pair.close_link()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pairs = list(self.pairs.values())
            for pair in pairs:
                if self._stop.is_set():
                    return
                try:
                    pair.step()
                except NxError as exc:
                    log.warning("PD %s: Metro: %s", pair.row.pd_name, exc)
                except Exception:  # a bug must not stop Metro for every other pair
                    log.exception("PD %s: Metro step failed", pair.row.pd_name)
            tick = min([p.row.break_timeout / 4 for p in pairs] + [1.0])
            self._stop.wait(max(0.05, tick))

    @staticmethod
    def _require_active(pair: MetroPair, action: str, hint: str = "") -> None:
        """InvalidArgument unless this site is the pair's active site (operator actions)."""
        if not pair.is_active:
            raise InvalidArgument(f"protection domain {pair.row.pd_name!r}: {action} at the "
                                  f"active site ({pair.row.peer_site!r}){hint}")

    def _pair(self, pd: ProtectionDomain) -> MetroPair:
        pair = self.pairs.get(pd.name)
        if pair is None:
            raise NotFound(f"protection domain {pd.name!r} has no Metro peer")
        return pair

    # -- SynchronousReplication -------------------------------------------------------------------
    def enable(self, pd: ProtectionDomain, site: str, *, witness: str, witness_secret: str,
               peer_witness: str | None = None, break_mode: str = AUTOMATIC,
               break_timeout: float = DEFAULT_BREAK_TIMEOUT,
               rtt_limit: float = DEFAULT_RTT_LIMIT) -> MetroState:
        """Protect `pd` synchronously with remote `site`; see ProtectionDomain.enable_metro."""
        mgr = self._manager()
        pd.require_active("enable Metro")
        if break_mode not in (AUTOMATIC, MANUAL):
            raise InvalidArgument(f"break_mode must be {AUTOMATIC!r} or {MANUAL!r}, not "
                                  f"{break_mode!r}")
        for what, value in (("break_timeout", break_timeout), ("rtt_limit", rtt_limit)):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value <= 0):
                raise InvalidArgument(f"{what} must be a positive number of seconds, not "
                                      f"{value!r}")
        for address in (witness, peer_witness or witness):
            if not isinstance(address, str):
                raise InvalidArgument(f"witness must be HOST:PORT, not {address!r}")
            parse_address(address)
        witness_secret = check_secret(witness_secret)
        with self._lock:
            if pd.name in self.pairs:
                raise AlreadyExists(f"protection domain {pd.name!r} has Metro with site "
                                    f"{self.pairs[pd.name].row.peer_site!r} already")
            get_site(mgr.catalog, site)  # NotFound
            for row in mgr.catalog.rows(PDScheduleRow, "pd_id = ?", (pd.id,)):
                if any(m.takes_schedule(pd, row) for m in mgr.modes):
                    raise InvalidArgument(f"protection domain {pd.name!r} has a NearSync "
                                          "schedule: remove it before enabling Metro")
            me = self.engine.site_name
            client = WitnessClient(witness, witness_secret, me, self.engine.id,
                                   timeout=break_timeout)
            client.ping()  # WitnessUnreachable, AuthenticationError
            rtt = self.measure_rtt(site)
            if rtt > rtt_limit:
                raise InvalidArgument(f"the round trip to site {site!r} is {rtt * 1e3:.1f} ms, "
                                      f"above the Metro limit of {rtt_limit * 1e3:.1f} ms")
            pair_id = uuid.uuid4().hex
            ok, rec = client.cas(pair_id, 0, 1, me)
            if not ok:
                raise NxError(f"the witness refused the new pair {pair_id}: {rec}")
            cat = mgr.catalog
            with cat.transaction():
                row = cat.insert(MetroRow(
                    0, pd.id, pd.name, pair_id, site, ROLE_ACTIVE, RESYNCING, 1, 1, witness,
                    witness_secret, break_mode, float(break_timeout), float(rtt_limit), "",
                    time.time(), "seeding"))
            pair = MetroPair(self.engine, self._manager, row)
            pair.peer_witness = peer_witness or witness
            pair.controlled = self._thread is not None
            self.pairs[pd.name] = pair
        try:
            with pair.lock:
                pair.install_gate(ALONE)  # acknowledged alone in epoch 1 until synchronous
                seed = take_pd_snapshot(pd, name=f"{pd.name}.metro-seed-{pair_id[:8]}",
                                        schedule_id=0, app_consistent=False)
                replicate_pd_snapshot(mgr, seed, site)
                pair.resync()
                if pair.row.state != SYNCHRONOUS:
                    raise NxError(f"protection domain {pd.name!r}: the standby at {site!r} did "
                                  "not reach synchronous mode (see the log)")
        except BaseException:
            self._forget(pair)
            raise
        log.info("PD %s: Metro enabled with %s (witness %s, %s break)", pd.name, site,
                 witness, break_mode)
        return pair.state()

    def measure_rtt(self, site: str) -> float:
        """Median of 5 PING round trips to `site` on one session, in seconds."""
        remote = get_site(self.engine.ctx.catalog, site)

        async def go() -> float:
            s = await source.open_session(self.engine, remote)
            try:
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    await s.request(lambda r: Ping(time.monotonic_ns(), req_id=r), Pong)
                    times.append(time.perf_counter() - t0)
                return statistics.median(times)
            finally:
                await s.close()

        out = source.run(asyncio.wait_for(go(), 10.0))
        assert isinstance(out, float)
        return out

    def _forget(self, pair: MetroPair) -> None:
        pair.remove_gate()
        with self._lock, self.engine.ctx.catalog.transaction():
            self.engine.ctx.catalog.delete(MetroRow, pair.row.id)
            self.pairs.pop(pair.row.pd_name, None)

    def disable(self, pd: ProtectionDomain) -> None:
        """Stop Metro for `pd` (at the active site): the witness record moves to the next
        epoch first (so the standby can no longer be promoted for the pair without
        force), then the standby is told and forgets its side; its replicas stay, as after
        async replication."""
        pair = self._pair(pd)
        with pair.lock:
            self._require_active(pair, "disable Metro")
            e = pair.row.epoch
            # The record moves on (to this site): a standby that was not told is refused
            # by the witness, and out of step from then on, so never promoted without force.
            ok, rec = pair.witness().cas(pair.row.pair_id, e, e + 1, self.engine.site_name)
            if not ok:
                pair.fence(f"the witness gave epoch {rec.epoch} to {rec.active_site!r}")
                raise MetroFenced(f"protection domain {pd.name!r}: this site no longer holds "
                                  "the Metro epoch; it cannot disable Metro")
            try:
                pair.ask_peer("teardown")
            except NxError as exc:
                log.warning("PD %s: the Metro peer %s was not told (it will be refused by the "
                            "witness if it tries to take over): %s", pd.name,
                            pair.row.peer_site, exc)
            self._forget(pair)
        log.info("PD %s: Metro disabled", pd.name)

    def state(self, pd: ProtectionDomain) -> MetroState:
        return self._pair(pd).state()

    def break_link(self, pd: ProtectionDomain) -> MetroState:
        pair = self._pair(pd)
        with pair.lock:
            self._require_active(pair, "break", "; a standby is promoted")
            if pair.row.state == BROKEN:
                return pair.state()
            pair.break_link(operator=True)
        return pair.state()

    def resume(self, pd: ProtectionDomain) -> MetroState:
        pair = self._pair(pd)
        with pair.lock:
            self._require_active(pair, "resume")
            if pair.row.state != SYNCHRONOUS:
                pair.resync()
            if pair.row.state != SYNCHRONOUS:
                raise NxError(f"protection domain {pd.name!r}: could not resync with "
                              f"{pair.row.peer_site!r} (see the log)")
        return pair.state()

    def promote(self, pd: ProtectionDomain, force: bool = False,
                power_on: bool = True) -> MetroState:
        pair = self._pair(pd)
        with pair.lock:
            pair.promote(force=force, power_on=power_on)
        return pair.state()

    # -- what the peer asks ------------------------------------------------------------------------
    def _handle(self, peer_cluster: str, peer_site: str, op: str,
                body: dict[str, Any]) -> dict[str, Any]:
        pd_name, pair_id = body.get("pd"), body.get("pair")
        if not isinstance(pd_name, str) or not isinstance(pair_id, str):
            raise InvalidArgument("a Metro request names its pd and pair")
        pair = self.pairs.get(pd_name)
        if pair is not None and pair.row.pair_id != pair_id:
            raise InvalidArgument(f"protection domain {pd_name!r} has another Metro pair here")
        if op == "status":
            return self._status(pair, peer_cluster)
        if op == "teardown":
            if pair is not None:
                with pair.lock:
                    self._forget(pair)
            return {"exists": False}
        return self._setup(pair, peer_cluster, peer_site, body)

    def _status(self, pair: MetroPair | None, peer_cluster: str) -> dict[str, Any]:
        if pair is None:
            return {"exists": False}
        r = pair.row
        try:
            pd_epoch = self._manager().pd_row(r.pd_name).epoch
        except NotFound:
            pd_epoch = 0
        replicas = {}
        cat = self.engine.ctx.catalog
        for rep in cat.rows(ReplicaRow, "source_cluster = ?", (peer_cluster,)):
            found = [vd.name for vd in self.engine.vdisks() if vd.id == rep.vdisk_id]
            if found:
                replicas[rep.source_vdisk] = found[0]
        return {"exists": True, "role": r.role, "state": r.state, "epoch": r.epoch,
                "checkpoint": r.checkpoint, "pd_epoch": pd_epoch, "cluster": self.engine.id,
                "site": self.engine.site_name, "replicas": replicas}

    def _setup(self, pair: MetroPair | None, peer_cluster: str, peer_site: str,
               body: dict[str, Any]) -> dict[str, Any]:
        epoch = body.get("epoch")
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise InvalidArgument(f"a Metro setup names a positive epoch, not {epoch!r}")
        mgr = self._manager()
        pd_row = mgr.pd_row(body["pd"])  # NotFound: seed it first
        if pair is not None:
            with pair.lock:
                if pair.is_active:
                    if pair.row.epoch >= epoch:
                        raise MetroFenced(f"site {self.engine.site_name!r} is active for "
                                          f"{body['pd']!r} in epoch {pair.row.epoch}")
                    pair.fence(f"site {peer_site!r} is active in epoch {epoch}")
                    pair._demote({"pd_epoch": body.get("pd_epoch", pd_row.epoch + 1),
                                  "cluster": peer_cluster, "epoch": epoch})
                elif pair.row.epoch > epoch:
                    raise MetroFenced(f"site {self.engine.site_name!r} knows Metro epoch "
                                      f"{pair.row.epoch} of {body['pd']!r}, newer than {epoch}")
                pair.save(epoch=epoch, state=RESYNCING, checkpoint=str(body.get(
                    "checkpoint", "")))
                pair.peer_seen = time.monotonic()
                return self._status(pair, peer_cluster)
        if pd_row.state == ACTIVE:
            raise MetroFenced(f"protection domain {body['pd']!r} is active at site "
                              f"{self.engine.site_name!r}")
        witness = body.get("standby_witness") or body.get("witness")
        secret = body.get("witness_secret")
        if not isinstance(witness, str) or not isinstance(secret, str):
            raise InvalidArgument("a Metro setup names the witness and its secret")
        cat = mgr.catalog
        with self._lock:
            with cat.transaction():
                row = cat.insert(MetroRow(
                    0, pd_row.id, pd_row.name, body["pair"], peer_site, ROLE_STANDBY, RESYNCING,
                    epoch, 0, witness, check_secret(secret), str(body.get("break_mode", MANUAL)),
                    float(body.get("break_timeout", DEFAULT_BREAK_TIMEOUT)),
                    float(body.get("rtt_limit", DEFAULT_RTT_LIMIT)),
                    str(body.get("checkpoint", "")), time.time(), ""))
            pair = MetroPair(self.engine, self._manager, row)
            pair.controlled = self._thread is not None
            self.pairs[row.pd_name] = pair
        log.info("PD %s: Metro standby of site %s (epoch %d)", row.pd_name, peer_site, epoch)
        return self._status(pair, peer_cluster)

    def _accept(self, peer_cluster: str, peer_site: str, msg: MetroOpen) -> Grant:
        """The standby's check of a mirror stream: this pair, this epoch, these replicas.
        The grant re-checks the epoch before every batch and barrier (fencing), and each one
        is the active site talking: it keeps the standby from promoting itself."""
        pair = next((p for p in self.pairs.values() if p.row.pair_id == msg.pair_id), None)
        if pair is None:
            raise NotFound(f"no Metro pair {msg.pair_id} at site {self.engine.site_name!r}")
        with pair.lock:
            r = pair.row
            if pair.is_active or r.peer_site != peer_site:
                raise MetroFenced(f"site {self.engine.site_name!r} is {r.role} for "
                                  f"{r.pd_name!r} in epoch {r.epoch}")
            if msg.epoch != r.epoch:
                raise MetroFenced(f"site {self.engine.site_name!r} is in Metro epoch {r.epoch} "
                                  f"of {r.pd_name!r}, not {msg.epoch}")
            vdisks = {i: self.engine.vdisk(v.replica) for i, v in enumerate(msg.vdisks)}
            pair.stream_epoch = r.epoch
            pair.peer_seen = time.monotonic()
            if r.state != SYNCHRONOUS:
                pair.save(state=SYNCHRONOUS)
        epoch = msg.epoch

        def check() -> None:
            row = pair.row
            if pair.is_active or row.epoch != epoch or pair.stream_epoch != epoch:
                raise MetroFenced(f"site {self.engine.site_name!r} is {row.role} of "
                                  f"{row.pd_name!r} in Metro epoch {row.epoch}: the stream of "
                                  f"epoch {epoch} may not go on")
            pair.peer_seen = time.monotonic()

        def ended() -> None:
            if pair.stream_epoch == epoch:
                pair.stream_epoch = 0

        return Grant(vdisks, check, ended)

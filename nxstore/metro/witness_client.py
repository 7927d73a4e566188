"""Asking a Metro witness from a site: `WitnessClient` (get, compare-and-set, ping).

Synchronous and thread-safe: every call opens one short authenticated connection (the
replication handshake with the witness's secret, this site's identity), sends one request,
reads the answer and closes, all within `timeout` seconds. Call it from a thread, not
from a coroutine (`asyncio.to_thread` there).

Errors, and nothing else: WitnessUnreachable (connection refused, timed out, closed
mid-call, or the witness could not store the change), AuthenticationError (the secrets
differ), ProtocolError (the peer is not a witness, or answered garbage or something that
does not answer the request), InvalidArgument (bad arguments, checked before anything is
sent; or the witness refused the request, e.g. it holds the most pairs it takes: nothing
changed).
"""

from __future__ import annotations

import asyncio
import os
import time

from ..constants import WITNESS_MAX_EPOCH, WITNESS_SITE, WITNESS_TIMEOUT_S
from ..errors import (
    AuthenticationError,
    ConnectionClosed,
    InvalidArgument,
    NxError,
    ProtocolError,
    WitnessUnreachable,
)
from ..names import check_name
from ..replication.auth import SiteIdentity
from ..replication.messages import Error, Message, Ping, Pong, WitnessCas, WitnessGet, WitnessState
from ..replication.sites import check_secret, parse_address
from ..replication.transport import connect
from .witness import WitnessRecord, check_cas

_REQ_ID = 1  # one request per connection


class WitnessClient:
    """A site's handle on the witness at `address` (HOST:PORT). `site_name` and
    `cluster_id` are this site's identity in the handshake (the witness records the site
    name as `changed_by`). Raises InvalidArgument for a bad address, a weak secret (under
    16 bytes), an empty identity or a timeout that is not a positive number.

    `witness_id` is the witness's id seen in the last handshake (None before the first
    call): a witness whose state file was lost and made anew has another id."""

    def __init__(self, address: str, secret: str, site_name: str, cluster_id: str,
                 timeout: float = WITNESS_TIMEOUT_S) -> None:
        self.address = address
        self._host, self._port = parse_address(address)
        self._secret = check_secret(secret)
        self._identity = SiteIdentity(cluster_id, site_name)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or \
                not 0 < timeout < float("inf"):
            raise InvalidArgument(f"timeout must be seconds > 0, not {timeout!r}")
        self.timeout = float(timeout)
        self.witness_id: str | None = None

    def get(self, pair: str) -> WitnessRecord | None:
        """The witness's record of `pair`, None if it has none."""
        check_name("Metro pair", pair)
        state, _ = self._call(WitnessGet(pair, req_id=_REQ_ID))
        if state.ok:
            raise self._wrong(f"WITNESS_STATE of a WITNESS_GET of {pair} says ok")
        return self._record(state)

    def cas(self, pair: str, expect_epoch: int, new_epoch: int,
            active_site: str) -> tuple[bool, WitnessRecord]:
        """Make `active_site` active in `new_epoch` if the witness's epoch of `pair` is
        `expect_epoch` (0: no record yet; `new_epoch` must be greater). Returns (applied,
        the witness's record after the request): not applied, the record says who won
        (epoch 0 and empty names: the pair has no record). Durable at the witness when it
        returns. After WitnessUnreachable the outcome is unknown: `get` tells."""
        check_cas(pair, expect_epoch, new_epoch, active_site)
        state, _ = self._call(WitnessCas(pair, expect_epoch, new_epoch, active_site,
                                         req_id=_REQ_ID))
        record = self._record(state) or WitnessRecord(pair, 0, "", "", 0.0)
        if state.ok and (record.epoch, record.active_site) != (new_epoch, active_site):
            raise self._wrong(f"applied compare-and-set of {pair} to epoch {new_epoch} "
                              f"({active_site}) answered with epoch {record.epoch} "
                              f"({record.active_site})")
        if not state.ok and record.epoch == expect_epoch:
            raise self._wrong(f"compare-and-set of {pair} from epoch {expect_epoch} refused "
                              "although that is the stored epoch")
        return state.ok, record

    def ping(self) -> float:
        """Seconds of one request round trip to the witness (connecting not included)."""
        _, seconds = self._call(Ping(time.monotonic_ns(), req_id=_REQ_ID))
        return seconds

    # -- one call ------------------------------------------------------------------
    def _call(self, request: Message) -> tuple[Message, float]:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise InvalidArgument("WitnessClient is synchronous: call it from a thread "
                                  "(asyncio.to_thread), not from a coroutine")
        where = f"the witness at {self.address}"
        try:
            return asyncio.run(asyncio.wait_for(self._exchange(request), self.timeout))
        except asyncio.TimeoutError:
            raise WitnessUnreachable(
                f"{where} did not answer within {self.timeout:g} s") from None
        except ConnectionClosed as exc:
            raise WitnessUnreachable(f"{where} closed the connection: {exc}") from None
        except AuthenticationError as exc:
            raise AuthenticationError(f"authentication with {where} failed: the shared "
                                      "secrets differ") from exc
        except (WitnessUnreachable, ProtocolError, InvalidArgument):
            raise
        except OSError as exc:  # asyncio's own text ("Connect call failed ...") hides why
            why = os.strerror(exc.errno) if isinstance(exc.errno, int) and exc.errno > 0 \
                else str(exc)
            raise WitnessUnreachable(f"cannot reach {where}: {why}") from None
        except NxError as exc:
            raise ProtocolError(f"{where}: {exc}") from exc

    async def _exchange(self, request: Message) -> tuple[Message, float]:
        # The handshake's own timeout is longer: the caller's `timeout` bounds the call.
        t = await connect(self._host, self._port, identity=self._identity,
                          secret=self._secret, timeout=2 * self.timeout + 1)
        try:
            assert t.peer is not None
            if t.peer.site != WITNESS_SITE:
                raise ProtocolError(f"{self.address} is site {t.peer.site!r}, not a witness")
            self.witness_id = t.peer.cluster_id
            started = time.perf_counter()
            await t.send(request)
            reply = await t.recv()
            seconds = time.perf_counter() - started
        finally:
            await t.close()
        if isinstance(reply, Error):
            raise self._refusal(reply)
        expected = Pong if isinstance(request, Ping) else WitnessState
        if not isinstance(reply, expected) or reply.req_id != request.req_id:
            raise self._wrong(f"{type(reply).__name__} (req {reply.req_id}) answers "
                              f"{type(request).__name__} (req {request.req_id})")
        if isinstance(reply, WitnessState) and reply.pair != getattr(request, "pair", None):
            raise self._wrong(f"the record of {reply.pair!r} answers a request about "
                              f"{getattr(request, 'pair', None)!r}")
        return reply, seconds

    def _refusal(self, error: Error) -> NxError:
        """The exception for an ERROR the witness answered with (module docstring)."""
        exc = error.to_exception()
        where = f"the witness at {self.address}"
        if isinstance(exc, (InvalidArgument, AuthenticationError)):
            return type(exc)(f"{where} refused the request: {error.message}")
        if type(exc) is NxError:  # INTERNAL: it could not store the change
            return WitnessUnreachable(f"{where} could not decide: {error.message}")
        return ProtocolError(f"{where} answered ERROR {error.code}: {error.message}")

    def _wrong(self, what: str) -> ProtocolError:
        return ProtocolError(f"the witness at {self.address} answered wrongly: {what}")

    def _record(self, state: Message) -> WitnessRecord | None:
        """The record in a WITNESS_STATE (None: no record); ProtocolError if inconsistent."""
        assert isinstance(state, WitnessState)
        if not 0 <= state.epoch <= WITNESS_MAX_EPOCH or \
                (state.epoch == 0) != (not state.active_site) or \
                (state.epoch == 0) != (not state.changed_by):
            raise self._wrong(f"inconsistent record of {state.pair}: epoch {state.epoch}, "
                              f"active site {state.active_site!r}, changed by "
                              f"{state.changed_by!r}")
        if state.epoch == 0:
            return None
        return WitnessRecord(state.pair, state.epoch, state.active_site, state.changed_by,
                             state.changed_at)

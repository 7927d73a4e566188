"""Metro witness messages: reading (WITNESS_GET) and compare-and-set (WITNESS_CAS) of the
witness's per-pair record, answered by WITNESS_STATE; nxstore.metro.witness. Liveness and
round trips use the session's PING/PONG."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import ProtocolError
from ..codec import PayloadReader, PayloadWriter
from ..frames import Buffer
from .base import Message, MessageType, register

# Metro witness (nxstore.metro.witness) -------------------------------------------------

_CAS_EPOCHS = struct.Struct("<QQ")  # expect_epoch, new_epoch
_STATE_RECORD = struct.Struct("<QdB")  # epoch, changed_at, ok


@register
@dataclass(frozen=True, slots=True, eq=False)
class WitnessGet(Message):
    """Site -> witness: the record of Metro pair `pair`. Reply: WITNESS_STATE (ok = False)."""

    TYPE = MessageType.WITNESS_GET
    pair: str

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.pair)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> WitnessGet:
        return cls(p.string(), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class WitnessCas(Message):
    """Site -> witness: make `active_site` the active site of `pair` in `new_epoch`, if the
    stored epoch is `expect_epoch` (0: no record yet) and `new_epoch > expect_epoch`.
    Reply: WITNESS_STATE (ok = whether it was applied), or ERROR INVALID for a request
    that can never apply (bad names or epochs, the witness is full)."""

    TYPE = MessageType.WITNESS_CAS
    pair: str
    expect_epoch: int
    new_epoch: int
    active_site: str

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.pair)
        o.pack(_CAS_EPOCHS, self.expect_epoch, self.new_epoch)
        o.string(self.active_site)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> WitnessCas:
        pair = p.string()
        expect, new = p.unpack(_CAS_EPOCHS)
        return cls(pair, expect, new, p.string(), req_id=req_id)


@register
@dataclass(frozen=True, slots=True, eq=False)
class WitnessState(Message):
    """Witness -> site: the record of `pair` after the request: `epoch` 0 = no record
    (`active_site` and `changed_by` empty, `changed_at` 0); `changed_by` is the site that
    made the last change and `changed_at` the witness's clock then (epoch seconds). `ok`:
    the WITNESS_CAS it answers was applied (always False for WITNESS_GET)."""

    TYPE = MessageType.WITNESS_STATE
    pair: str
    ok: bool
    epoch: int
    active_site: str
    changed_by: str
    changed_at: float

    @property
    def found(self) -> bool:
        return self.epoch != 0

    def encode_payload(self) -> list[Buffer]:
        o = PayloadWriter()
        o.string(self.pair)
        o.pack(_STATE_RECORD, self.epoch, self.changed_at, int(self.ok))
        o.string(self.active_site)
        o.string(self.changed_by)
        return o.done()

    @classmethod
    def decode_payload(cls, p: PayloadReader, req_id: int) -> WitnessState:
        pair = p.string()
        epoch, changed_at, ok = p.unpack(_STATE_RECORD)
        if ok > 1:
            raise ProtocolError(f"WITNESS_STATE: ok flag {ok} is not 0 or 1")
        active, by = p.string(), p.string()
        return cls(pair, bool(ok), epoch, active, by, changed_at, req_id=req_id)


"""Leap control messages: LEAP_REQUEST / LEAP_REPLY carry the JSON requests one availability
zone sends another (nxstore.leap.remote: pairing, policy and plan definitions, failover)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import MessageType, register
from .ownership import JsonReply, JsonRequest


@register
@dataclass(frozen=True, slots=True, eq=False)
class LeapRequest(JsonRequest):
    """Either way between two availability zones: request `op` with a UTF-8 JSON object
    `body`. Reply: LEAP_REPLY (or ERROR)."""

    TYPE = MessageType.LEAP_REQUEST


@register
@dataclass(frozen=True, slots=True, eq=False)
class LeapReply(JsonReply):
    """Reply to LEAP_REQUEST: a UTF-8 JSON object `body`."""

    TYPE = MessageType.LEAP_REPLY

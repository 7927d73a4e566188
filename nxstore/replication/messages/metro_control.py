"""Metro control messages: METRO_REQUEST / METRO_REPLY carry the JSON requests one Metro
site sends the other (nxstore.metro.control: setup, status, teardown)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import MessageType, register
from .ownership import JsonReply, JsonRequest


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroRequest(JsonRequest):
    """Either way between the two sites of a Metro pair: request `op` with a UTF-8 JSON
    object `body`. Reply: METRO_REPLY (or ERROR)."""

    TYPE = MessageType.METRO_REQUEST


@register
@dataclass(frozen=True, slots=True, eq=False)
class MetroReply(JsonReply):
    """Reply to METRO_REQUEST: a UTF-8 JSON object `body`."""

    TYPE = MessageType.METRO_REPLY

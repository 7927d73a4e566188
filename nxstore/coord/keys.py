"""The etcd keys of one site's coordination state (docs/format.md, "Site coordination in
etcd"); every value is a JSON object with a "version" field (KEY_FORMAT_VERSION)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument

KEY_FORMAT_VERSION = 1
# A schedule's transfer record (nxstore.coord.schedules): version 2, so that a build that
# knows only version 1 refuses it rather than run it as a vDisk transfer.
SCHEDULE_RECORD_VERSION = 2
DEFAULT_PREFIX = "nxstore/"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(what: str, name: str) -> str:
    """`name` if it is 1-64 of [A-Za-z0-9._-] (not starting with . _ -); else InvalidArgument."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(f"bad {what} name {name!r}: use 1-64 letters, digits, '.', '_' "
                              "or '-', starting with a letter or digit")
    return name


def encode(fields: dict[str, Any], version: int = KEY_FORMAT_VERSION) -> bytes:
    return json.dumps({"version": version, **fields}, sort_keys=True).encode()


@dataclass(frozen=True)
class SiteKeys:
    """The keys under one prefix (one site per prefix)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not isinstance(self.prefix, str) or not self.prefix.endswith("/") or \
                not self.prefix.strip("/"):
            raise InvalidArgument(f"bad etcd prefix {self.prefix!r}: it must end with '/'")

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def workers(self) -> str:
        return self.prefix + "workers/"

    def worker(self, name: str) -> str:
        return self.workers + check_name("worker", name)

    @property
    def transfers(self) -> str:
        return self.prefix + "transfers/"

    def transfer(self, transfer_id: str) -> str:
        return self.transfers + check_name("transfer", transfer_id)

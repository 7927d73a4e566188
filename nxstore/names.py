"""The one rule for names of clusters' objects (vDisks, containers, sites, VMs, PDs...)."""

from __future__ import annotations

from .errors import InvalidArgument


def check_name(kind: str, name: object) -> str:
    """`name` if it is valid, else InvalidArgument: non-empty, no '@' (it separates
    VDISK@SNAP on the command line), no '/' or NUL, no surrounding spaces."""
    if (not isinstance(name, str) or not name or any(c in name for c in "@/\0")
            or name != name.strip()):
        raise InvalidArgument(
            f"bad {kind} name {name!r}: non-empty, no '@', '/' or surrounding spaces")
    return name

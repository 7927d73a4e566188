"""The one rule for the names of a cluster's objects: vDisks, snapshots, containers, sites,
VMs and their categories, protection domains, consistency groups, LWSs.

A name someone chooses is 1 to MAX_NAME_CHARS printable characters (`str.isprintable`: no
control characters such as NUL or newline, no lone surrogates, so it is valid UTF-8) without
leading or trailing spaces and without the reserved characters: '@' separates VDISK@SNAPSHOT
on the command line, '/' would read as a path, ':' is kept for replica vDisks, which are
named SITE:VDISK (a local vDisk called `site:db` would block the replica of `db` from
`site`). nxstore composes some names itself from checked ones (replicas' SITE:VDISK, PD
snapshots' PD.SITE-eN.ID, PD.diverged-eN): `composed=True` checks those, allowing ':' and
up to MAX_COMPOSED_CHARS.

Only new names are checked: a name stored by an older version that breaks this rule still
reads, looks up and deletes.
"""

from __future__ import annotations

from .errors import InvalidArgument

MAX_NAME_CHARS = 128
MAX_COMPOSED_CHARS = 4 * MAX_NAME_CHARS + 64
RESERVED = "@/:"


def check_name(kind: str, name: object, *, composed: bool = False) -> str:
    """`name` if it is a valid new name of a `kind` (module docstring), else InvalidArgument."""
    limit, reserved = (MAX_COMPOSED_CHARS, "@/") if composed else (MAX_NAME_CHARS, RESERVED)
    if not isinstance(name, str):
        raise InvalidArgument(f"{kind} name must be a string, not {type(name).__name__}")
    problem = (
        "is empty" if not name
        else f"is longer than {limit} characters" if len(name) > limit
        else "has a control or non-printable character" if not name.isprintable()
        else "has leading or trailing spaces" if name != name.strip()
        else f"contains {next(c for c in name if c in reserved)!r}"
        if any(c in reserved for c in name) else ""
    )
    if problem:
        shown = repr(name if len(name) <= 40 else name[:40] + "...")
        raise InvalidArgument(
            f"bad {kind} name {shown}: it {problem} (a name is 1-{limit} printable characters, "
            f"without surrounding spaces or any of {' '.join(reserved)})")
    return name


def not_utf8(exc: UnicodeEncodeError) -> InvalidArgument:
    """The InvalidArgument for text that cannot be stored: it has a lone surrogate (for
    example from undecodable bytes on a command line)."""
    text = exc.object if len(exc.object) <= 40 else exc.object[:40] + "..."
    return InvalidArgument(f"{text!r} is not valid UTF-8 text")

"""Helpers shared by the command modules: size parsing and printing, opening a
cluster, the VDISK@SNAP syntax, and the error type commands raise."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ..constants import LOCK_FILE
from ..errors import Locked, NotFound
from . import admin

if TYPE_CHECKING:
    from ..cluster import Cluster
    from ..store.engine import Engine

_E = TypeVar("_E", bound="Engine")

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


# Keyword arguments the library's messages name, and the options that set them on the
# command line (an error that says how to go on must say it in the words of the CLI).
API_OPTIONS = {"with_snapshots=True": "--with-snapshots", "force=True": "--force",
               "cleanup_test()": "'nxstore plan cleanup'"}
_API_RE = re.compile(r"\b(" + "|".join(map(re.escape, API_OPTIONS)) + r")(?![\w=])")


def cli_words(message: str) -> str:
    """`message` with the library's keyword arguments named as CLI options."""
    return _API_RE.sub(lambda m: API_OPTIONS[m.group(1)], message)


class CliError(Exception):
    """An operational error detected by the CLI itself (exit status 1)."""


class ClusterBusy(CliError):
    """The cluster at `path` is open in another process (main() then tries its daemon)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path


def parse_size(text: str) -> int:
    """Bytes from '4096', '512K', '10G', '1.5GiB', '2TB' (binary units: K = 1024).

    Raises ValueError for anything else, zero and fractional byte counts included.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"bad size {text!r}: use bytes or a number with K, M, G, T or P (e.g. 10G)")
    number, unit = m.group(1), m.group(2).upper()
    scale = _UNITS[unit]
    if "." in number:
        whole, frac = number.split(".")
        num, den = int(whole + frac), 10 ** len(frac)
        if (num * scale) % den:
            raise ValueError(f"bad size {text!r}: not a whole number of bytes")
        value = num * scale // den
    else:
        value = int(number) * scale
    if value <= 0:
        raise ValueError(f"bad size {text!r}: must be positive")
    return value


def size_arg(text: str) -> int:
    """argparse `type=` wrapper around parse_size (turns errors into usage errors)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_arg(text: str) -> int:
    """argparse `type=`: a count of at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"bad count {text!r}: a whole number, at least 1")
    return n


def human(n: float) -> str:
    """1536 -> '1.5 KiB'; exact bytes below 1 KiB."""
    n = float(n)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def plural(n: int, one: str, many: str) -> str:
    """'1 entity', '3 entities'."""
    return f"{n} {one if n == 1 else many}"


def report_blocks(source: str, findings: Sequence[Any], *, clean: str, error: str,
                  json_doc: dict[str, Any] | None = None) -> int:
    """The verdict of a block check on the CLI: `json_doc` as JSON if given, else one line
    per finding (`.offset`, `.problem`) and `clean` when there is none; then, if there are
    findings, `nxstore: error: <error>` on stderr. Returns the exit status (0 clean, else 1)."""
    if json_doc is not None:
        print(json.dumps(json_doc, indent=2))
    else:
        for d in findings:
            print(f"{source}: block at offset {d.offset}: {d.problem}")
        if not findings:
            print(clean)
    if not findings:
        return 0
    sys.stderr.write(f"nxstore: error: {error}\n")
    return 1


def split_ref(ref: str, *, need_snap: bool) -> tuple[str, str | None]:
    """'db@snap' -> ('db', 'snap'); 'db' -> ('db', None) unless `need_snap`."""
    vdisk, sep, snap = ref.partition("@")
    if not vdisk or (sep and not snap):
        raise CliError(f"bad reference {ref!r}: expected VDISK or VDISK@SNAPSHOT")
    if need_snap and not sep:
        raise CliError(f"bad reference {ref!r}: expected VDISK@SNAPSHOT")
    return vdisk, (snap or None)


@contextmanager
def open_cluster(path: str, *, background: bool = False) -> Iterator[Cluster]:
    """Open the cluster at `path` for one command; closed (and unlocked) on exit.

    `background` runs the engine's drain thread (for commands that write a lot).
    """
    served = admin.served_cluster(path)
    if served is not None:  # a command forwarded to the daemon that holds it open
        yield served
        return
    _check_not_served(path)
    from ..cluster import Cluster  # here, not at the top: `nxstore --help` stays fast

    with _opened(Cluster, path, background) as cluster:
        yield cluster


@contextmanager
def open_engine(path: str) -> Iterator[Engine]:
    """`open_cluster` for a command that uses only the storage engine (snapshot create,
    clone, info): none of the layers above is imported or attached (nxstore/cluster.py
    says what they attach at open), so it starts in a fraction of the time.

    Only for commands that reach nothing those layers guard: vDisk deletion (replica
    rows; VMs and PDs holding a vDisk), the OpLog release and gc (NearSync's unshipped
    episodes), vDisk data writes and restores (Metro's gates) and serving peers. This
    Engine runs no drain thread, so nothing is released or collected behind NearSync's
    back, and what Metro does at open (a pair whose stream is gone is marked stalled
    before the next write) the next full open still does, before any write. Every other
    command keeps `open_cluster`. A forwarded command gets the daemon's Cluster."""
    served = admin.served_cluster(path)
    if served is not None:
        yield served
        return
    _check_not_served(path)
    from ..store.engine import Engine

    with _opened(Engine, path, False) as engine:
        yield engine


def _check_not_served(path: str) -> None:
    """ClusterBusy (main() then forwards the command) when a `nxstore serve` holds the
    cluster at `path`: its admin socket is there and the cluster lock is taken. Checked
    before importing the engine, so a forwarded command costs the client no engine start.
    A socket left by a daemon that died is stale: the lock is free, the command runs here."""
    if not os.path.exists(admin.socket_path(path)):
        return
    try:
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # the engine's open says what is wrong
    try:  # held for two system calls only, and only while a socket is there
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released by the close below
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        raise ClusterBusy(path, f"cluster {os.path.abspath(path)} is open in another "
                                f"process (pid {holder or '?'})") from None
    finally:
        os.close(fd)


@contextmanager
def _opened(kind: type[_E], path: str, background: bool) -> Iterator[_E]:
    try:
        engine = kind.open(path, background=background)
    except NotFound as exc:
        raise CliError(f"{exc} (create one with 'nxstore create {path}')") from None
    except Locked as exc:
        raise ClusterBusy(path, str(exc)) from None
    with engine:
        yield engine


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    """Left-aligned text columns."""
    allrows = [header, *rows]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in allrows
    )

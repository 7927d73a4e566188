"""The `nxstore` command line.

    nxstore [-v] COMMAND ...      (`nxstore --help`, `nxstore COMMAND --help`)

Exit status: 0 success, 1 operational error (one `nxstore: error: ...` line on
stderr), 2 usage error, 130 interrupted. Log messages go to stderr through the
logging module: warnings by default, `-v` for INFO, `-vv` for DEBUG (which also
prints the traceback of an unexpected error).

One module per command group: cluster_cmds (create, info, container, drain,
gc, defrag, scrub), vdisk_cmds, snapshot_cmds (snapshot, clone, restore), image_cmds
(import, export), replication_cmds (serve, site, replicate, replicas, prune-remote),
vm_cmds (vm ...), category_cmds (category ...), pd_cmds (pd ...: protection domains and failover), nearsync_cmds (lws,
and pd nearsync|restore-points|restore-point), witness_cmds (witness: the Metro witness),
nbd_cmds (nbd: NBD exports), zone_cmds, policy_cmds and plan_cmds (Leap: availability
zones, protection policies, recovery plans; their SPEC syntax in specs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

log = logging.getLogger("nxstore.cli")


class _Parser(argparse.ArgumentParser):
    """Every (sub)parser accepts -v and reports usage errors in one line."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                          help="more log output on stderr (-v INFO, -vv DEBUG)")

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"nxstore: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


class _Unbuilt:
    """Stands for the parser of a command this run does not use: it takes every call a
    `register` makes on it and builds nothing (the ~150 parsers of every command cost
    tens of milliseconds to build; `nxstore --help` lists the commands without them)."""

    def __init__(self, **_kwargs: object) -> None:
        pass

    def __getattr__(self, _name: str) -> Callable[..., _Unbuilt]:
        return self._ignore

    def _ignore(self, *_args: object, **_kwargs: object) -> _Unbuilt:
        return self


class _NotBuilt(Exception):
    """The command line runs a command whose parser was not built (see `_command_word`)."""


class _Commands(argparse._SubParsersAction):
    """The COMMAND subparsers: builds the parser of command `only` alone (every one when
    None); the others are listed in --help and accepted as choices all the same."""

    only: str | None = None

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self.only is None or self.only == name or self.only in kwargs.get("aliases", ()):
            return super().add_parser(name, **kwargs)
        parser_class, self._parser_class = self._parser_class, _Unbuilt
        try:
            return super().add_parser(name, **kwargs)
        finally:
            self._parser_class = parser_class

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if isinstance(self._name_parser_map.get(values[0]), _Unbuilt):
            raise _NotBuilt(values[0])
        super().__call__(parser, namespace, values, option_string)


def _command_word(argv: list[str]) -> str:
    """The COMMAND of a command line: the first word that is not an option (no option of
    `nxstore` itself takes a value). A wrong guess only costs building every parser."""
    for i, word in enumerate(argv):
        if word == "--":
            return argv[i + 1] if i + 1 < len(argv) else ""
        if not word.startswith("-"):
            return word
    return ""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `nxstore` parser; with `command`, the parsers of the other commands are not
    built (they are listed in --help all the same)."""
    from .. import __version__
    from . import (
        category_cmds,
        cluster_cmds,
        image_cmds,
        nbd_cmds,
        nearsync_cmds,
        pd_cmds,
        plan_cmds,
        policy_cmds,
        replication_cmds,
        snapshot_cmds,
        vdisk_cmds,
        vm_cmds,
        witness_cmds,
        zone_cmds,
    )

    parser = _Parser(
        prog="nxstore",
        description="nxstore: thin vDisks on a deduplicating, compressing extent store "
        "with zero-copy snapshots and clones.",
        epilog="SIZE accepts bytes or K/M/G/T suffixes (binary: 1K = 1024), e.g. 10G, 512M, 4096.",
    )
    parser.add_argument("--version", action="version", version=f"nxstore {__version__}")
    parser.register("action", "commands", _Commands)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                action="commands")
    sub.only = command
    for module in (cluster_cmds, vdisk_cmds, snapshot_cmds, image_cmds, replication_cmds,
                   vm_cmds, category_cmds, pd_cmds, nearsync_cmds, witness_cmds, nbd_cmds,
                   zone_cmds, policy_cmds, plan_cmds):
        module.register(sub)
    return parser


def _error_text(exc: BaseException) -> str:
    from .common import cli_words

    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return cli_words(str(exc)) or type(exc).__name__


def console_main() -> int:
    """The `nxstore` console script (and `python -m nxstore.cli`): `main` in a process of
    its own. nxstore uses no BLAS, and numpy's OpenBLAS starts a thread per core when it
    is imported, which costs an engine command's start-up 15-20% on a busy 2-core host:
    one thread unless the user chose otherwise."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    return main()


def main(argv: list[str] | None = None, *, cwd: str | None = None) -> int:
    """Run one command; returns the exit status (never raises, except SystemExit
    from --help/--version handling inside argparse, which main converts too).

    A command whose cluster is held open by a running `nxstore serve` is run by that
    daemon (nxstore.cli.admin). `cwd`: set by the daemon for a forwarded command, the
    client's working directory (relative file arguments are resolved against it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            args = build_parser(_command_word(argv)).parse_args(argv)
        except _NotBuilt:
            args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    except KeyboardInterrupt:
        return 130
    verbose = getattr(args, "verbose", 0)
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING,
        format="nxstore: %(levelname)s: %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from ..errors import Corruption, NxError
    from . import admin
    from .common import CliError, ClusterBusy

    if cwd is not None:  # forwarded: the parsed command decides, whatever options precede it
        if args.command in admin.NOT_FORWARDED:
            sys.stderr.write(f"nxstore: error: '{args.command}' cannot run inside the daemon\n")
            return 1
        admin.resolve_paths(args, cwd)
    try:
        return int(args.func(args) or 0)
    except ClusterBusy as exc:
        reply = None
        if cwd is None and args.command not in admin.NOT_FORWARDED and \
                os.path.realpath(exc.path) == os.path.realpath(getattr(args, "path", "")):
            reply = admin.forward(exc.path, argv)
        if reply is None:
            sys.stderr.write(f"nxstore: error: {exc}\n")
            return 1
        sys.stdout.write(str(reply.get("stdout", "")))
        sys.stderr.write(str(reply.get("stderr", "")))
        return int(reply.get("rc", 1))
    except KeyboardInterrupt:
        sys.stderr.write("nxstore: interrupted\n")
        return 130
    except BrokenPipeError:  # e.g. `nxstore vdisk list PATH | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (CliError, NxError, OSError) as exc:
        log.debug("%s failed", args.command, exc_info=True)
        hint = ""
        if isinstance(exc, Corruption) and args.command != "fsck" and hasattr(args, "path"):
            hint = f" (run 'nxstore fsck {args.path}' for a full report, --repair to salvage)"
        sys.stderr.write(f"nxstore: error: {_error_text(exc)}{hint}\n")
        return 1
    except Exception as exc:  # a bug: still one line, the traceback with -vv
        log.debug("unexpected error", exc_info=True)
        sys.stderr.write(f"nxstore: error: internal error: {type(exc).__name__}: {exc}"
                         f"{'' if verbose >= 2 else ' (run with -vv for the traceback)'}\n")
        return 1

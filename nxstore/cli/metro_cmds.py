"""Metro commands, in the `pd` group: `pd metro enable|disable|status|break|resume|promote`.
Run them against the site's `nxstore serve` (forwarded through its admin socket): Metro's
stream and its watch over the peer and the witness live in that process."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from .common import open_cluster
from .nearsync_cmds import seconds_arg
from .replication_cmds import read_secret

if TYPE_CHECKING:
    from ..protection.domain import ProtectionDomain
    from ..protection.modes import MetroState


def register_pd(psub: argparse._SubParsersAction) -> None:
    """Add `pd metro ...` to the `pd` group (called by pd_cmds.register)."""
    p = psub.add_parser("metro", help="Metro: synchronous replication with a witness (RPO 0)")
    msub = p.add_subparsers(dest="metro_cmd", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, func) -> argparse.ArgumentParser:  # noqa: ANN001
        q = msub.add_parser(name, help=help)
        q.add_argument("path", metavar="PATH")
        q.add_argument("name", metavar="PD")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        q.set_defaults(func=func)
        return q

    q = cmd("enable", "seed SITE, then replicate every flush synchronously", cmd_enable)
    q.add_argument("site", metavar="SITE")
    q.add_argument("--witness", required=True, metavar="HOST:PORT",
                   help="the witness (`nxstore witness`) in a third failure domain")
    q.add_argument("--witness-secret-file", required=True, metavar="FILE",
                   help="the witness's shared secret (mode 0600, at least 16 bytes)")
    q.add_argument("--peer-witness", metavar="HOST:PORT",
                   help="the witness as SITE reaches it (default: --witness)")
    q.add_argument("--break-mode", choices=("automatic", "manual"), default="automatic",
                   help="automatic: after --break-timeout the active site continues alone if "
                        "the witness agrees; manual: IO stalls until `pd metro break`")
    q.add_argument("--break-timeout", type=seconds_arg, default=15.0, metavar="S",
                   help="seconds a flush may stall before an automatic break (default 15)")
    q.add_argument("--rtt-limit", type=seconds_arg, default=0.005, metavar="S",
                   help="refuse a peer further than this round trip (default 0.005 s)")
    cmd("disable", "stop Metro (at the active site); the standby keeps its replicas",
        cmd_disable)
    cmd("status", "role, state, epoch, the witness's view, dirty blocks", cmd_status)
    cmd("break", "at the active site: continue alone in the next epoch (witness permitting)",
        cmd_break)
    cmd("resume", "at the active site: resync the standby and go synchronous again",
        cmd_resume)
    q = cmd("promote", "at the standby: become the active site (witness permitting)",
            cmd_promote)
    q.add_argument("--force", action="store_true",
                   help="promote although the witness cannot be reached or this standby "
                        "is not in step (writes it lacks are lost; the old active site must "
                        "be down: it is fenced when it comes back)")


def show(state: MetroState, as_json: bool) -> None:
    if as_json:
        print(json.dumps(state.to_json(), sort_keys=True))
        return
    w = state.witness_view
    seen = (f"epoch {w.epoch}, active {w.active_site or '-'}" if w.reachable
            else f"unreachable ({w.error})")
    since = "-" if state.since_sync_flush is None else f"{state.since_sync_flush:.1f} s ago"
    lines = [
        ("protection domain", state.pd),
        ("role", f"{state.role} (peer {state.peer})"),
        ("state", state.state + (f", {state.dirty_blocks} dirty blocks"
                                 if state.dirty_blocks else "")
         + (f", {state.resync_done}/{state.resync_total} blocks resynced"
            if state.resync_total else "")),
        ("epoch", str(state.epoch)),
        ("witness", f"{state.witness}: {seen}"),
        ("last synchronous flush", since),
        ("break", f"{state.break_mode} after {state.break_timeout:g} s"),
        ("checkpoint", state.checkpoint or "-"),
    ]
    if state.note:
        lines.append(("note", state.note))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key:<{width}}  {value}")


def cmd_enable(args: argparse.Namespace) -> int:
    secret = read_secret(args.witness_secret_file)
    with open_cluster(args.path) as c:
        state = c.protection_domain(args.name).enable_metro(
            args.site, args.witness, witness_secret=secret, peer_witness=args.peer_witness,
            break_mode=args.break_mode, break_timeout=args.break_timeout,
            rtt_limit=args.rtt_limit)
        show(state, args.json)
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    with open_cluster(args.path) as c:
        c.protection_domain(args.name).disable_metro()
    if not args.json:
        print(f"Metro disabled for {args.name}")
    return 0


def _show_state(act: Callable[[ProtectionDomain, argparse.Namespace], MetroState]
                ) -> Callable[[argparse.Namespace], int]:
    """A command that runs `act` on the PD and shows the Metro state it returns."""
    def run(args: argparse.Namespace) -> int:
        with open_cluster(args.path) as c:
            show(act(c.protection_domain(args.name), args), args.json)
        return 0
    return run


cmd_status = _show_state(lambda pd, _args: pd.metro_state())
cmd_break = _show_state(lambda pd, _args: pd.metro_break())
cmd_resume = _show_state(lambda pd, _args: pd.metro_resume())
cmd_promote = _show_state(lambda pd, args: pd.metro_promote(force=args.force))

"""`nxstore witness`: the Metro witness process, and `nxstore witness status`.

    nxstore witness --listen HOST:PORT --secret-file FILE [--data DIR]
    nxstore witness status [--data DIR] [--json]

The witness runs in the foreground until SIGTERM or SIGINT (exit 0), logs on stderr (INFO
by default: every change of a record) and, once it accepts connections, logs
"witness ID serving N Metro pair(s) from PATH on HOST:PORT" (port 0 picks a free one).
Its state is DIR/witness.state (default: the current directory); a damaged state file
keeps it from starting (nxstore.metro.witness). The secret file is checked as for `nxstore
serve`. `status` prints the state file's records (read-only; works while the witness runs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
from typing import TYPE_CHECKING

from .common import CliError, plural, table
from .replication_cmds import read_secret

if TYPE_CHECKING:
    from ..metro.witness import WitnessStore

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("witness", help="run a Metro witness (until SIGTERM), or show its state",
                       usage="nxstore witness --listen HOST:PORT --secret-file FILE [--data DIR]"
                       "\n       nxstore witness status [--data DIR] [--json]")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="address to listen on (port 0 picks a free port, logged)")
    p.add_argument("--secret-file", metavar="FILE",
                   help="file holding the witness's secret, shared with the Metro sites")
    p.add_argument("--data", default=".", metavar="DIR",
                   help="directory of the witness's state file (default: the current one)")
    p.set_defaults(func=lambda args: cmd_witness(p, args))
    wsub = p.add_subparsers(dest="witness_cmd", metavar="COMMAND")
    q = wsub.add_parser("status", help="show the witness's records (read-only)")
    q.add_argument("--data", default=argparse.SUPPRESS, metavar="DIR",
                   help="the witness's data directory (default: the current one)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_witness_status)


def cmd_witness(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.listen or not args.secret_file:
        parser.error("the witness needs --listen and --secret-file")
    if not getattr(args, "verbose", 0):  # a daemon says what it does: INFO by default
        logging.getLogger("nxstore").setLevel(logging.INFO)
    import asyncio

    from ..metro.witness import WitnessStore
    from ..replication.sites import check_secret, parse_address

    secret = check_secret(read_secret(args.secret_file))
    listen = args.listen
    host, port = parse_address(listen) if not listen.endswith(":0") else (listen[:-2], 0)
    with WitnessStore.open(args.data) as store:
        asyncio.run(_serve(store, host, port, secret))
    return 0


async def _serve(store: WitnessStore, host: str, port: int, secret: str) -> None:
    import asyncio

    from ..metro.witness import WitnessServer, serve_until

    # Signal handlers first: once the port is logged a supervisor may send SIGTERM at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await WitnessServer.start(store, host, port, secret)
    except OSError as exc:  # asyncio's text repeats the address; the errno's says why
        why = os.strerror(exc.errno) if (exc.errno or 0) > 0 else exc.strerror or str(exc)
        raise CliError(f"cannot listen on {host}:{port}: {why}") from None
    log.info("witness %s serving %s from %s on %s:%d", store.witness_id,
             plural(len(store.records()), "Metro pair", "Metro pairs"), store.path, host,
             server.port)
    await serve_until(server, stop)
    log.info("witness stopped")


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def cmd_witness_status(args: argparse.Namespace) -> int:
    from ..metro.witness import read_state, state_path

    witness_id, records = read_state(args.data)
    if args.json:
        print(json.dumps({"witness_id": witness_id, "state_file": state_path(args.data),
                          "pairs": [{"pair": r.pair, "epoch": r.epoch,
                                     "active_site": r.active_site, "changed_by": r.changed_by,
                                     "changed_at": r.changed_at} for r in records]}, indent=2))
        return 0
    print(f"witness {witness_id}: {plural(len(records), 'Metro pair', 'Metro pairs')} in "
          f"{state_path(args.data)}")
    if records:
        print(table([(r.pair, str(r.epoch), r.active_site, r.changed_by, _when(r.changed_at))
                     for r in records], ("PAIR", "EPOCH", "ACTIVE SITE", "CHANGED BY", "CHANGED")))
    return 0

"""`nxstore serve`: a cluster as a replication endpoint and scheduler until SIGTERM/SIGINT.

Besides answering its peers (replication, PD requests), the daemon runs the
cluster's protection-domain schedules: every `schedule_interval` seconds of real
time it calls `Cluster.run_schedules()` in a worker thread (so the peers are
served meanwhile) and logs each run. A failing run is logged; it never stops the
daemon. `schedule_interval` 0 turns the scheduler off.

The cluster clock is the system clock, or with `clock_file` the epoch seconds
written in that file, read again at every look at the clock: a demo or a test
moves simulated time by rewriting the file (write a temporary file, rename it
over), and the daemon's schedules fire on it. A clock file that cannot be read
or parsed later keeps the clock at its last good value (logged once per error).

While it runs, `nxstore ... PATH` commands are forwarded to it over the admin socket
PATH/admin.sock and run against its open cluster (nxstore.cli.admin).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ..errors import InvalidArgument
from .admin import admin_server
from .nbd_cmds import stop_exports

if TYPE_CHECKING:  # imported where used: the command line imports this module to parse
    import asyncio
    import ssl

    from ..cluster import Cluster

log = logging.getLogger(__name__)

SCHEDULE_INTERVAL_S = 1.0  # seconds between scheduler passes (NearSync schedules go down to 1 s)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from PEM files, or None when no certificate is given."""
    if not cert:
        return None
    import ssl

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


class FileClock:
    """A cluster clock read from a file holding epoch seconds (see module docstring).

    Raises InvalidArgument at construction if the file cannot be read or parsed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._last = self._read()
        self._error = ""

    def _read(self) -> float:
        try:
            with open(self.path, "rb") as f:
                text = f.read(64).decode("ascii", "replace").strip()
        except OSError as exc:
            raise InvalidArgument(f"cannot read clock file {self.path}: "
                                  f"{exc.strerror or exc}") from None
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InvalidArgument(f"clock file {self.path} does not hold epoch seconds: {text!r}")
        return value

    def __call__(self) -> float:
        try:
            self._last = self._read()
            self._error = ""
        except InvalidArgument as exc:
            if str(exc) != self._error:  # once per error, not at every look at the clock
                self._error = str(exc)
                log.warning("%s; the clock stays at %.3f", exc, self._last)
        return self._last


def run_due_schedules(cluster: Cluster) -> None:
    """One scheduler pass: run the due schedules and log each run. Never raises: a
    failure is logged and the next pass tries again."""
    try:
        runs = cluster.run_schedules()
    except Exception:  # a bug or an I/O error must not end the daemon
        log.exception("schedule pass failed")
        return
    for run in runs:
        level = logging.WARNING if not run.ok else logging.DEBUG if run.routine else logging.INFO
        log.log(level, "schedule run: %s", run.summary())


def check_serve_settings(listen: str, secret: str, schedule_interval: float,
                         clock_file: str | None) -> tuple[str, int, FileClock | None]:
    """(host, port, clock) of `serve_cluster`'s arguments; InvalidArgument if one is bad."""
    from ..replication.sites import check_secret, parse_address

    if not isinstance(schedule_interval, (int, float)) or not 0 <= schedule_interval < math.inf:
        raise InvalidArgument(f"schedule interval must be seconds >= 0, not {schedule_interval!r}")
    check_secret(secret)
    clock = FileClock(clock_file) if clock_file else None
    host, port = parse_address(listen) if not listen.endswith(":0") else (listen[:-2], 0)
    return host, port, clock


def serve_cluster(path: str, listen: str, secret: str, *, tls: ssl.SSLContext | None = None,
                  schedule_interval: float = SCHEDULE_INTERVAL_S,
                  clock_file: str | None = None) -> None:
    """Open the cluster at `path` (Locked if it is open elsewhere), serve replication
    on `listen` (HOST:PORT; port 0 picks one, logged) and run its schedules every
    `schedule_interval` seconds (0: never) until SIGTERM or SIGINT. `clock_file`: the
    cluster clock is read from that file (module docstring). Raises InvalidArgument
    (bad interval or clock file, a weak secret). In-flight transfers are abandoned safely (their
    staging is dropped; nothing half-applied becomes visible), a schedule run in
    progress finishes, then the cluster is closed cleanly."""
    import asyncio

    from ..cluster import Cluster

    host, port, clock = check_serve_settings(listen, secret, schedule_interval, clock_file)
    cluster = Cluster.open(path, clock=clock)

    async def main() -> None:
        # Signal handlers first: once the port is logged a supervisor may send SIGTERM at once.
        await serve_open_cluster(cluster, host, port, secret, tls, schedule_interval,
                                 stop_on_signals())

    try:
        asyncio.run(main())
    finally:
        close_served(cluster)


def close_served(cluster: Cluster) -> None:
    """Stop what the admin socket started on `cluster` and close it."""
    stop_exports()  # NBD exports started through the admin socket (nxstore nbd)
    cluster.close()
    log.info("cluster %s closed", cluster.path)


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set (call inside the running loop)."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


Job = Callable[["asyncio.Event"], Awaitable[None]]


async def serve_open_cluster(cluster: Cluster, host: str, port: int, secret: str,
                             tls: ssl.SSLContext | None, schedule_interval: float,
                             stop: asyncio.Event, *, fence: Callable[[], bool] | None = None,
                             jobs: Sequence[Job] = (),
                             schedule_pass: Callable[[Cluster], None] = run_due_schedules
                             ) -> None:
    """Serve `cluster` (replication, the admin socket, its schedules and `jobs`, each
    called with `stop`) until `stop` is set; then wait for the schedule run and the jobs in
    progress and close the connections. `fence`: no schedule pass starts unless it returns
    True (a site worker's leadership, nxstore.coord). `schedule_pass(cluster)`: one pass,
    never raising (a site worker's pass records its replications in etcd around it)."""
    import asyncio

    from ..replication.auth import SiteIdentity
    from ..replication.target import ReplicationTarget
    from ..replication.transport import serve

    target = ReplicationTarget(cluster)
    identity = SiteIdentity(cluster.id, cluster.site_name)
    # The admin socket first: once the port is logged, `nxstore ... PATH` commands work.
    async with admin_server(cluster):
        server = await serve(host, port, target.handle, identity=identity, secret=secret,
                             ssl=tls)
        log.info("serving site %s (cluster %s) on %s:%d", cluster.site_name, cluster.id, host,
                 server.port)
        cluster.set_endpoint(f"{host}:{server.port}", secret)  # zones pair back to it
        scheduler = None
        if schedule_interval:
            log.info("running schedules every %g s", schedule_interval)
            scheduler = asyncio.create_task(_schedule_loop(cluster, schedule_interval, stop,
                                                           fence, schedule_pass))
        running = [asyncio.create_task(job(stop)) for job in jobs]
        await stop.wait()
        log.info("stopping: closing connections")
        if scheduler is not None:
            await scheduler  # a run in progress finishes: the cluster closes after it
        await asyncio.gather(*running)
        await server.close()


async def _schedule_loop(cluster: Cluster, interval: float, stop: asyncio.Event,
                         fence: Callable[[], bool] | None,
                         schedule_pass: Callable[[Cluster], None]) -> None:
    import asyncio

    while not stop.is_set() and (fence is None or fence()):
        await asyncio.to_thread(schedule_pass, cluster)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)

"""`nxstore serve`: a cluster as a replication endpoint until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl

from ..cluster import Cluster
from .auth import SiteIdentity
from .sites import parse_address
from .target import ReplicationTarget
from .transport import serve

log = logging.getLogger(__name__)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from PEM files, or None when no certificate is given."""
    if not cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def serve_cluster(path: str, listen: str, secret: str, *, tls: ssl.SSLContext | None = None) -> None:
    """Open the cluster at `path` (Locked if it is open elsewhere), serve replication
    on `listen` (HOST:PORT; port 0 picks one, logged) until SIGTERM or SIGINT.
    In-flight transfers are abandoned safely (their staging is dropped; nothing
    half-applied becomes visible), then the cluster is closed cleanly."""
    host, port = parse_address(listen) if not listen.endswith(":0") else (listen[:-2], 0)
    cluster = Cluster.open(path)
    try:
        asyncio.run(_serve(cluster, host, port, secret, tls))
    finally:
        cluster.close()
        log.info("cluster %s closed", path)


async def _serve(cluster: Cluster, host: str, port: int, secret: str,
                 tls: ssl.SSLContext | None) -> None:
    target = ReplicationTarget(cluster)
    identity = SiteIdentity(cluster.id, cluster.site_name)
    # Signal handlers first: once the port is logged a supervisor may send SIGTERM at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await serve(host, port, target.handle, identity=identity, secret=secret, ssl=tls)
    log.info("serving site %s (cluster %s) on %s:%d", cluster.site_name, cluster.id, host,
             server.port)
    await stop.wait()
    log.info("stopping: closing connections")
    await server.close()

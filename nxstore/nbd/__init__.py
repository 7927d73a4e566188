"""NBD exports of vDisks and snapshots, for qemu, libnbd, fio and any other NBD client.

    import nxstore, nxstore.nbd
    with nxstore.Cluster.open("/srv/site-a") as c:
        with nxstore.nbd.serve(c, "db", listen="127.0.0.1:10809") as server:
            print(server.uri)          # nbd://127.0.0.1:10809/db
            server.wait()              # until server.close() from another thread

Modules: protocol (wire constants and layouts), handshake (option haggling), meta (meta
context queries), session (what a handshake settled), transmission (requests and replies),
replies (structured reply chunks), export (a vDisk or snapshot as an NBD export, errno
mapping), server (sockets and threads), images (qemu-img conversions through an export).
"""

from .export import Export
from .server import NbdServer, serve

__all__ = ["Export", "NbdServer", "serve"]

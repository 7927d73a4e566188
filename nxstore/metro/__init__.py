"""Metro Availability: synchronous replication of a protection domain to one peer site
(RPO 0), a witness that decides which site may acknowledge writes in each epoch, break
modes when the link fails, and a delta resync when it returns. See docs/architecture.md
("Metro") and docs/format.md for the witness state and the mirror stream.

Modules, one concept each:

    rows.py        the catalogue rows: one MetroRow per protected PD at each site
    witness.py     the witness process: durable per-pair {epoch, active site}, changed only by
                   an authenticated compare-and-set
    witness_client.py  asking a witness (get, compare-and-set) from a site
    mirror.py      the synchronous write stream, active side: the link to the standby
                   (pipelined writes, group-committed flushes) and the vDisks' WriteMirror
    applier.py     the same stream, standby side: applies the writes to the replicas, syncs
                   them once per barrier
    controller.py  the per-PD state machine: enable, seed, synchronous, stalled, broken,
                   resyncing, suspended; break, resume, promote, demote
    mode.py        Metro as a protection ReplicationMode
"""

from . import rows as rows  # registers the Metro tables

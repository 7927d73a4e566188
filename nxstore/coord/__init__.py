"""Site coordination through etcd: several `nxstore serve` workers serve one site.

One module per concept: `etcd` (the client and its error contract), `lease` (a worker's
lease, kept alive, and the deadline up to which it is proven), `election` (the leader key,
the fence every coordinating write carries, the watch a standby waits on), `registry` (the workers and their leases),
`transfers` (the replication transfers the leader hands out, their durable records and the
runner that executes them), `schedules` (the schedule passes' replications recorded as
transfers, resumed by the next leader), `status` (what `nxstore site status` shows). The keys and
values are in docs/format.md ("Site coordination in etcd").
"""

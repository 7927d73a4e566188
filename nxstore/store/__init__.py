"""The engine: vDisks, snapshots and clones over an OpLog, block maps and a deduplicating
extent store, with the catalogue that names them. It imports nothing of the layers above
(replication, protection, NearSync, the facade, the CLI); see docs/architecture.md."""

"""Online migrations of declared stores: every change of a store that holds data converges under the same id.

- `shapes`: what a generation of a store looks like (model + table layout), and what a change costs.
- `records`: the `store_migrations` rows (request, cancel, progress, swap bookkeeping).
- `builder`: builds the new generation beside the active one, replays writes made meanwhile, swaps atomically.
- `service`: the background part of the server: one migrator per store across replicas, status and metrics.
See docs/design.md ("Changing a store that holds data") and docs/operations.md.
"""

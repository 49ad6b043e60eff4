"""Target recall: each store with `search.target_recall` is searched with the cheapest settings measured to reach it.

- `plans`: what a calibration chose (a `Plan` per group: unfiltered, and filters by estimated selectivity),
  how it is persisted (`search_calibration`, migration 0700) and how a search picks its plan.
- `samples`: recent real query embeddings (and filters), in memory, bounded.
- `measure`: the calibration itself: exact top-k by sequential scan, the smallest setting that meets the target.
- `service`: when it runs (startup, growth or shrink, index change, schedule), one server at a time, where
  (the read replica when one is configured), and what it exports (/metrics, the status route).

docs/search.md ("Target recall") explains it for operators.
"""
